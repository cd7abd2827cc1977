"""A node's own TLS identity for mutual-TLS gRPC between members.

Every node makes its own EC P-256 key and a self-signed certificate for the host names it
is reached by; the key never leaves its state directory. There is no swarm CA: the
certificate is registered with the node's membership on chain, and a member trusts exactly
the certificates of the members that are active on chain (`apiary.chain.trust`). A member's
certificate may not sign certificates (its key usage is ``digitalSignature`` only, and
``CA:FALSE``): TLS does not enforce ``CA:FALSE`` on a trust anchor, but it does refuse an
issuer without ``keyCertSign``, so no member can mint a certificate another member's
handshake would accept.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apiary.core.files import write_atomic, write_private

VALIDITY = datetime.timedelta(days=3650)
NODE_CERT, NODE_KEY = "node.pem", "node.key"
MAX_CERTIFICATE_BYTES = 4096
"""The contract's bound on a registered certificate (a P-256 one is ~800 bytes of PEM)."""
COORDINATOR_CERT = "coordinator.pem"
"""The federated coordinator's certificate, as it publishes it next to swarm.json."""
COORDINATOR_TLS_NAME = "apiary-coordinator"
"""The host name in the coordinator's certificate that nodes check it under, whatever
address they dial: the certificate itself is pinned, so the name adds no trust, and a
fixed one keeps the coordinator's address free to change."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM material of one node: its private key and its self-signed certificate."""

    key: bytes
    cert: bytes

    @classmethod
    def load(cls, directory: Path) -> TlsFiles | None:
        key, cert = directory / NODE_KEY, directory / NODE_CERT
        if not (key.exists() and cert.exists()):
            return None
        return cls(key.read_bytes(), cert.read_bytes())

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private(directory / NODE_KEY, self.key)
        write_atomic(directory / NODE_CERT, self.cert)

    def server_configuration(self, roots: bytes) -> grpc.ServerCertificateConfiguration:
        """This node's key and certificate, trusting the client certificates in `roots`."""
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)],
                                                         root_certificates=roots)

    def channel_credentials(self, roots: bytes) -> grpc.ChannelCredentials:
        """Client credentials: present this certificate, accept servers in `roots`."""
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=self.key,
                                            certificate_chain=self.cert)


def create_self_signed(name: str, hosts: list[str]) -> TlsFiles:
    """A new P-256 key and a certificate it signs itself, valid for `hosts` (the host of
    the node's gRPC endpoint) and for loopback.

    The subject carries a random serial so that two nodes of the same name never share a
    subject, which TLS uses to look a trust anchor up.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8))])
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(key_id, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(key_id),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_san(sorted({*hosts, "localhost", "127.0.0.1"})), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return TlsFiles(pem_key, cert.public_bytes(serialization.Encoding.PEM))


def check_member_certificate(pem: bytes) -> x509.Certificate:
    """`pem` parsed, if it can identify a member: one self-signed P-256 certificate that can
    sign no other (not a CA, no ``keyCertSign``), within the contract's size bound.
    ValueError says what is wrong otherwise."""
    if not pem:
        raise ValueError("no certificate")
    if len(pem) > MAX_CERTIFICATE_BYTES:
        raise ValueError(f"the certificate is {len(pem)} bytes; at most "
                         f"{MAX_CERTIFICATE_BYTES} are accepted")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from exc
    public = cert.public_key()
    if not (isinstance(public, ec.EllipticCurvePublicKey)
            and isinstance(public.curve, ec.SECP256R1)):
        raise ValueError("the certificate's key is not an EC P-256 key")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError("the certificate is not self-signed by its own key") from exc
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate needs BasicConstraints and KeyUsage extensions "
                         "saying it signs no certificates") from None
    if constraints.ca or usage.key_cert_sign:
        raise ValueError("the certificate may sign certificates (CA or keyCertSign)")
    return cert


def certificate_name(pem: bytes) -> str | None:
    """The common name of a PEM certificate: a member's hospital name, as its node put it
    in the certificate it registered on chain (None if there is none or it does not parse)."""
    try:
        names = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)
    except ValueError:
        return None
    return str(names[0].value) if names else None


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, hex: the same certificate in any PEM form
    has one fingerprint. ValueError if `pem` is not a certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def endpoint_host(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0]
