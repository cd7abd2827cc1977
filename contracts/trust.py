"""Whom a gRPC server of the swarm trusts: the TLS certificates of the members active on
chain now. A member's peer server and the federated coordinator use it alike.

The peer server's credentials are dynamic: before every TLS handshake gRPC asks
:meth:`MemberTrust.server_configuration` for the client certificates to accept, and gets
the active members' certificates as the chain lists them, so a removed member's handshake
fails as soon as the bundle is rebuilt (at most `TTL_S` later; at once on the node that
removed it). Client calls use the same bundle to check the server, and the peer service
checks the caller's certificate on every call (:meth:`MemberTrust.member_for`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import grpc
from web3.exceptions import Web3Exception

from apiary.chain.binding import MemberInfo, SwarmContract
from apiary.core.tls import TlsFiles, check_member_certificate, fingerprint

log = logging.getLogger("apiary.chain.trust")

TTL_S = 2.0
"""How long a bundle read from the chain is used before it is read again."""


@dataclass(frozen=True)
class _Bundle:
    roots: bytes
    members: dict[str, str]
    """Certificate fingerprint → member address."""
    read_at: float


class MemberTrust:
    """The active members' certificates, read from the chain and cached for `ttl_s`."""

    def __init__(self, contract: SwarmContract, tls: TlsFiles, ttl_s: float = TTL_S) -> None:
        self.contract = contract
        """A connection of this server's own, used by gRPC's threads only through the lock."""
        self.tls = tls
        """The server's own key and certificate (a member's node, or the coordinator)."""
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._bundle = self._read()
        self._served: bytes | None = None

    def _read(self) -> _Bundle:
        members: dict[str, str] = {}
        pems: list[bytes] = []
        for member in self.contract.members():
            try:
                check_member_certificate(member.tls_certificate)
                members[fingerprint(member.tls_certificate)] = member.address
            except ValueError as exc:
                log.warning("member %s's TLS certificate on chain is not trusted (%s); it "
                            "cannot take part over gRPC", member.address, exc)
                continue
            pems.append(member.tls_certificate.rstrip(b"\n") + b"\n")
        if not pems:
            pems.append(self.tls.cert)
        return _Bundle(b"".join(pems), members, time.monotonic())

    def bundle(self, *, fresh: bool = False) -> _Bundle:
        """The cached bundle, read again when older than `ttl_s` (or `fresh`). While the
        chain does not answer, the last bundle stays in use."""
        with self._lock:
            if fresh or time.monotonic() - self._bundle.read_at >= self.ttl_s:
                try:
                    self._bundle = self._read()
                except (OSError, Web3Exception, ValueError) as exc:
                    log.warning("could not read the members' certificates from the chain; "
                                "keeping the last ones: %s", exc)
            return self._bundle

    def invalidate(self) -> None:
        """Read the chain again before the next handshake (after this node changed the
        membership itself)."""
        with self._lock:
            self._bundle = _Bundle(self._bundle.roots, self._bundle.members, float("-inf"))

    def roots(self) -> bytes:
        return self.bundle().roots

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials for one call: this node's certificate; servers must present
        an active member's."""
        return self.tls.channel_credentials(self.roots())

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require an active member's client certificate, the set
        re-read before each handshake."""
        roots = self.roots()
        self._served = roots
        return grpc.dynamic_ssl_server_credentials(
            self.tls.server_configuration(roots), self.server_configuration,
            require_client_authentication=True,
        )

    def server_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetch callback: a new configuration when the bundle changed, else None
        (keep the current one). It never raises: gRPC calls it on its own threads."""
        try:
            roots = self.roots()
            if roots == self._served:
                return None
            self._served = roots
            return self.tls.server_configuration(roots)
        except Exception:  # a failing callback would only be logged by gRPC's core
            log.exception("could not rebuild the gRPC trust bundle")
            return None

    def member_for(self, pem: bytes) -> str | None:
        """The active member whose registered certificate is `pem`, checked against the
        chain now; None if there is none."""
        record = self.record_for(pem)
        return record.address if record is not None else None

    def record_for(self, pem: bytes) -> MemberInfo | None:
        """The chain's record of the active member whose registered certificate is `pem`,
        read now (not from the cache); None if no active member holds it."""
        try:
            key = fingerprint(pem)
        except ValueError:
            return None
        address = self.bundle().members.get(key)
        if address is None:
            address = self.bundle(fresh=True).members.get(key)
        if address is None:
            return None
        with self._lock:
            record = self.contract.member(address)
        try:
            registered = fingerprint(record.tls_certificate)
        except ValueError:
            return None
        return record if record.active and registered == key else None

    def active_members(self) -> list[str]:
        """The addresses of the active members whose certificates are trusted (cached)."""
        return sorted(set(self.bundle().members.values()))
