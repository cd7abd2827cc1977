"""Who may talk to the coordinator: the swarm's active members, as the chain lists them.

The same trust as a member's peer server (`apiary.chain.trust`): the TLS handshake accepts
only the client certificates registered for active members, every call maps the caller's
certificate to its member record on chain, and a pushed update must name that member as
its sender, carry its Ethereum signature and a sample count its registered dataset allows.
"""

from __future__ import annotations

import grpc
from web3.exceptions import Web3Exception

from apiary.chain.binding import MemberInfo
from apiary.chain.trust import MemberTrust
from apiary.core.transport import TransportError, verify_update_signature
from apiary.wire import apiary_pb2

_DENIED = grpc.StatusCode.PERMISSION_DENIED
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def sample_count_bound(member: MemberInfo) -> int:
    """The most samples `member` may weigh a round with: the dataset size registered for
    it at admission. The one place that bound is decided."""
    return member.dataset_size


class Membership:
    """The members' certificates and records on chain, and the names swarm.json gives them."""

    def __init__(self, trust: MemberTrust, names: dict[str, str] | None = None) -> None:
        self.trust = trust
        self.contract_address = trust.contract.address
        self._names = {address.lower(): name for address, name in (names or {}).items()}

    def name(self, address: str) -> str:
        """The member's name from swarm.json, else its address (a member that joined later)."""
        return self._names.get(address.lower(), address)

    def active(self) -> list[str]:
        """The active members' addresses (from a cache at most `trust.ttl_s` old)."""
        return self.trust.active_members()

    def caller(self, context: grpc.ServicerContext) -> MemberInfo:
        """The active member whose registered certificate the caller presented; raises
        `TransportError` (PERMISSION_DENIED) for anyone else."""
        presented = context.auth_context().get("x509_pem_cert") or []
        if not presented:
            raise TransportError(_DENIED, "no TLS client certificate: present the certificate "
                                          "registered on chain for your membership")
        try:
            member = self.trust.record_for(presented[0])
        except (OSError, Web3Exception) as exc:
            raise TransportError(grpc.StatusCode.UNAVAILABLE,
                                 f"the coordinator cannot read the chain now: {exc}") from None
        if member is None:
            raise TransportError(_DENIED, "the caller's TLS certificate is not registered for "
                                          "an active member of the swarm")
        return member

    def check_update(self, header: apiary_pb2.UpdateHeader, member: MemberInfo) -> None:
        """Refuse an update header `member` may not push: another sender, a signature that
        is not its own, a sample count beyond its registered dataset."""
        if header.sender != member.address:
            raise TransportError(
                _DENIED, f"the update names {header.sender!r} as its sender, but the caller's "
                         f"certificate is member {member.address}'s ({self.name(member.address)})")
        if not verify_update_signature(header, self.contract_address):
            raise TransportError(
                _DENIED, f"the update header is not signed by {member.address}'s Ethereum key "
                         f"for swarm {self.contract_address}")
        bound = sample_count_bound(member)
        if not 1 <= header.sample_count <= bound:
            raise TransportError(
                _INVALID, f"sample_count is {header.sample_count}; {self.name(member.address)} "
                          f"may weigh a round with 1 to {bound} samples (its registered "
                          "dataset size)")
