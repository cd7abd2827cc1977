"""The swarm's certificate authority and mutual-TLS credentials for gRPC between members.

The founder creates the CA; every member holds a certificate it signed. A gRPC server
requires a client certificate from the same CA, so a peer without one is refused at
the TLS handshake, before any message is read.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apiary.core.files import write_atomic, write_private

VALIDITY = datetime.timedelta(days=825)
CA_CERT, CA_KEY, NODE_CERT, NODE_KEY = "ca.pem", "ca.key", "node.pem", "node.key"


@dataclass(frozen=True)
class TlsFiles:
    """PEM material of one node: the CA certificate, its own key and certificate."""

    ca_cert: bytes
    key: bytes
    cert: bytes

    @classmethod
    def load(cls, directory: Path) -> TlsFiles | None:
        paths = [directory / n for n in (CA_CERT, NODE_KEY, NODE_CERT)]
        if not all(p.exists() for p in paths):
            return None
        ca, key, cert = (p.read_bytes() for p in paths)
        return cls(ca, key, cert)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private(directory / NODE_KEY, self.key)
        write_atomic(directory / NODE_CERT, self.cert)
        write_atomic(directory / CA_CERT, self.ca_cert)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca_cert,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_cert,
                                            private_key=self.key, certificate_chain=self.cert)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(swarm: str) -> tuple[bytes, bytes]:
    """(CA key PEM, CA certificate PEM) for a new swarm."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Apiary swarm CA {swarm}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def create_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """A node's TLS key and a certificate request the sponsor's CA signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return _pem_key(key), csr.public_bytes(serialization.Encoding.PEM)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue_certificate(ca_key_pem: bytes, ca_cert_pem: bytes, csr_pem: bytes,
                      hosts: list[str]) -> bytes:
    """Sign a member's request for the host names it is reached by (its gRPC endpoint)."""
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate request: {exc}") from exc
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature is invalid")
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca_cert.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(sorted({*hosts, "localhost", "127.0.0.1"})), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def node_files(ca_key_pem: bytes, ca_cert_pem: bytes, name: str, hosts: list[str]) -> TlsFiles:
    """Key, certificate and CA certificate for a node the founder sets up itself."""
    key, csr = create_key_and_csr(name)
    return TlsFiles(ca_cert_pem, key, issue_certificate(ca_key_pem, ca_cert_pem, csr, hosts))


def endpoint_host(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0]
