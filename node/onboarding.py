"""The sponsor's side of membership: invites, admitting a newcomer, removing a member.

Admission hands the newcomer everything it needs in one answer — the swarm's secret HE
contexts wrapped to its X25519 key, a TLS certificate from the swarm CA and the current
global weights — but only after the chain lists it as a member. Removal deactivates the
member on chain and rotates the swarm to a fresh HE key that the removed member never sees.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from eth_utils import is_address, to_checksum_address
from pydantic import BaseModel, Field, field_validator

from apiary.chain.binding import ContractRejected
from apiary.core.he import HEContext
from apiary.core.keywrap import wrap, wrap_context
from apiary.core.tls import CA_CERT, CA_KEY, endpoint_host, issue_certificate
from apiary.node.invites import InviteRefused
from apiary.wire import apiary_pb2, apiary_pb2_grpc

if TYPE_CHECKING:
    from apiary.node.runtime import NodeRuntime

log = logging.getLogger("apiary.node.onboarding")

ENDPOINT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")


class JoinRequest(BaseModel):
    """What a joining node sends its sponsor (`POST /v1/members`)."""

    invite: str = Field(min_length=8, max_length=200)
    address: str = Field(description="the newcomer's Ethereum address")
    x25519_public_key: str = Field(description="hex, 32 bytes")
    endpoint: str = Field(description="the newcomer's gRPC endpoint, host:port")
    csr: str = Field(description="PEM certificate request for its TLS key", max_length=8000)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not is_address(value):
            raise ValueError("not an Ethereum address")
        return to_checksum_address(value)

    @field_validator("x25519_public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        try:
            raw = bytes.fromhex(value.removeprefix("0x"))
        except ValueError as exc:
            raise ValueError("not hex") from exc
        if len(raw) != 32 or raw == bytes(32):
            raise ValueError("an X25519 public key is 32 non-zero bytes")
        return raw.hex()

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not ENDPOINT.match(value):
            raise ValueError("expected host:port")
        return value


class Refused(Exception):
    """A membership request refused with an HTTP status; nothing was changed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Sponsor:
    runtime: NodeRuntime

    def _contract(self) -> Any:
        contract = self.runtime.contract
        if contract is None:
            raise Refused(409, "this node is not an active swarm member")
        return contract

    # ------------------------------------------------------------------ admission

    def admit(self, request: JoinRequest) -> tuple[int, dict[str, Any]]:
        """200 with the hand-over, 202 while approvals are missing; Refused otherwise."""
        contract = self._contract()
        invites = self.runtime.invites
        try:
            invite = invites.check(request.invite, request.address)
        except InviteRefused as exc:
            raise Refused(exc.status, str(exc)) from exc
        approved_since = invite.reserved_for is not None
        ca = self._ca()
        try:
            cert = issue_certificate(ca[0], ca[1], request.csr.encode(),
                                     [endpoint_host(request.endpoint)])
        except ValueError as exc:
            raise Refused(422, f"csr: {exc}") from exc
        record = contract.member(request.address)
        if record.active and not approved_since:
            raise Refused(409, f"{request.address} is already a member")
        key = bytes.fromhex(request.x25519_public_key)
        rule = contract.membership_rule()
        try:
            if record.active:
                pass
            elif rule == "admin":
                if contract.admin() != contract.sender:
                    raise Refused(403, "only the swarm admin's node admits members; "
                                       "ask the admin for an invite")
                contract.add_member(request.address, request.endpoint, key)
            elif contract.proposal_approvals(request.address) == 0:
                contract.propose_member(request.address, request.endpoint, key)
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        if not contract.member(request.address).active:
            invites.reserve(request.invite, request.address)
            approvals = contract.proposal_approvals(request.address)
            needed = contract.active_member_count() // 2 + 1
            log.info("node=%s proposed %s: %d of %d approvals", self.runtime.settings.name,
                     request.address, approvals, needed)
            return 202, {"status": "pending", "approvals": approvals, "needed": needed}
        # Reserved first: should the hand-over fail, the newcomer (now a member on chain)
        # can ask again with the same invite; used once it has its hand-over.
        invites.reserve(request.invite, request.address)
        funding = int(self.runtime.settings.join_funding_eth * 10**18)
        if funding and contract.w3.eth.get_balance(request.address) < funding // 2:
            contract.fund(request.address, funding)
        handover = self._handover(request.address, key, cert, ca[1])
        invites.mark_used(request.invite, request.address)
        log.info("node=%s admitted %s (%s)", self.runtime.settings.name, request.address,
                 request.endpoint)
        return 200, handover

    def _ca(self) -> tuple[bytes, bytes]:
        tls_dir = self.runtime.settings.state_dir / "tls"
        if not (tls_dir / CA_KEY).exists():
            raise Refused(403, "this node holds no swarm CA key and cannot sponsor members")
        return (tls_dir / CA_KEY).read_bytes(), (tls_dir / CA_CERT).read_bytes()

    def _handover(self, address: str, x25519_public: bytes, cert: bytes,
                  ca_cert: bytes) -> dict[str, Any]:
        runtime = self.runtime
        contract = self._contract()
        round_number, weights, digest = runtime.state.current()
        if weights is None:
            raise Refused(503, "this node holds no global model yet; try again shortly")
        buffer = io.BytesIO()
        np.save(buffer, weights)
        first_epoch, _ = contract.key_epoch_for(max(round_number, 1))
        last_epoch, _ = contract.key_epoch_for(contract.current_round())
        wrapped = []
        for epoch in range(first_epoch, last_epoch + 1):
            he = runtime.keys.get(epoch)
            if he is None:
                continue
            secret = he.secret_bytes()
            sealed = wrap(secret, x25519_public, wrap_context(contract.address, address, epoch))
            wrapped.append({"epoch": epoch, "wrapped": sealed.to_json()})
        return {
            "status": "member",
            "address": address,
            "contract": contract.address,
            "rpc_url": runtime.rpc_url,
            "round": round_number,
            "weights": base64.b64encode(buffer.getvalue()).decode(),
            "weights_digest": digest,
            "keys": wrapped,
            "tls": {"ca_cert": ca_cert.decode(), "cert": cert.decode()},
        }

    def approve(self, address: str) -> dict[str, Any]:
        contract = self._contract()
        try:
            contract.approve_member(address)
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        return {"address": address, "approvals": contract.proposal_approvals(address),
                "member": contract.member(address).active}

    # ------------------------------------------------------------------ removal

    def remove(self, address: str) -> dict[str, Any]:
        """Deactivate `address`, then hand every remaining member a fresh HE key."""
        contract = self._contract()
        if not is_address(address):
            raise Refused(422, "not an Ethereum address")
        address = to_checksum_address(address)
        if not contract.member(address).active:
            raise Refused(404, f"{address} is not an active member")
        if contract.admin() != contract.sender:
            raise Refused(403, "only the swarm admin's node removes members")
        contract.remove_member(address)
        current = contract.current_round()
        from_round = current + (1 if contract.round_info(current).contributors else 0)
        fresh = HEContext.create()
        contract.rotate_key(from_round, fresh.public_digest())
        epoch = contract.key_epoch_count() - 1
        self.runtime.keys.put(epoch, fresh.secret_bytes(), fresh.public_digest())
        delivered, failed = [], []
        for member in contract.members():
            if member.address == contract.sender:
                continue
            sealed = wrap(fresh.secret_bytes(), member.x25519_public_key,
                          wrap_context(contract.address, member.address, epoch))
            try:
                self._deliver(member.endpoint, epoch, sealed)
                delivered.append(member.address)
            except grpc.RpcError as exc:
                log.error("node=%s could not deliver key epoch %d to %s: %s",
                          self.runtime.settings.name, epoch, member.address, exc.details())
                failed.append(member.address)
        log.info("node=%s removed %s; key epoch %d from round %d delivered to %d members",
                 self.runtime.settings.name, address, epoch, from_round, len(delivered))
        return {"removed": address, "key_epoch": epoch, "from_round": from_round,
                "delivered": delivered, "failed": failed}

    def _deliver(self, endpoint: str, epoch: int, sealed: Any) -> None:
        credentials = self.runtime.tls.channel_credentials() if self.runtime.tls else None
        channel = (grpc.secure_channel(endpoint, credentials) if credentials
                   else grpc.insecure_channel(endpoint))
        with channel:
            apiary_pb2_grpc.PeerStub(channel).DeliverKey(
                apiary_pb2.KeyDelivery(epoch=epoch, ephemeral_public=sealed.ephemeral_public,
                                       nonce=sealed.nonce, ciphertext=sealed.ciphertext),
                timeout=30,
            )
