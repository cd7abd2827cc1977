"""The sponsor's side of membership: admitting a newcomer, approving, removing a member,
and handing the admin role on.

Any active member can sponsor: it registers the newcomer on chain with the newcomer's own
X25519 key and self-signed TLS certificate (the admin's node alone under the admin rule; a
proposal every member can make under the majority rule), then hands it everything else in
one answer — the swarm's secret HE contexts wrapped to its X25519 key and the current
global weights — but only after the chain lists it as a member. From then on every member's
gRPC trusts its certificate. Removal deactivates the member on chain, which drops its
certificate from every member's trust, and rotates the swarm to a fresh HE key that the
removed member never sees.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import numpy as np
from pydantic import BaseModel, Field, field_validator

from apiary.chain.binding import MAX_DATASET_SIZE, ContractRejected, SwarmContract
from apiary.core.errors import ConfigError
from apiary.core.he import HEContext
from apiary.core.keywrap import WrappedSecret, wrap, wrap_context
from apiary.core.tasks import SwarmConfig
from apiary.core.tls import MAX_CERTIFICATE_BYTES, check_member_certificate
from apiary.node.identity import EthAddress, checksum_address
from apiary.node.invites import Admission, InviteBook, Refused
from apiary.node.keys import KeyRing
from apiary.node.ports import SwarmLink
from apiary.node.resumption import HandoverRequest, signer_problem
from apiary.wire import apiary_pb2, apiary_pb2_grpc

log = logging.getLogger("apiary.node.onboarding")

ENDPOINT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")

__all__ = ["Approval", "EthAddress", "Handover", "JoinRequest", "Pending", "Removal",
           "Sponsor", "WrappedKey", "checksum_address"]


class JoinRequest(BaseModel):
    """What a joining node sends its sponsor (`POST /v1/members`)."""

    invite: str = Field(min_length=8, max_length=200)
    address: EthAddress = Field(description="the newcomer's Ethereum address")
    x25519_public_key: str = Field(description="hex, 32 bytes")
    endpoint: str = Field(description="the newcomer's gRPC endpoint, host:port")
    tls_certificate: str = Field(max_length=MAX_CERTIFICATE_BYTES,
                                 description="PEM of the self-signed EC P-256 certificate "
                                             "of its TLS key (registered on chain)")
    dataset_size: int = Field(ge=1, le=MAX_DATASET_SIZE,
                              description="the newcomer's training samples: registered on "
                                          "chain as the most it may enrol a round with")
    training: dict[str, Any] = Field(
        description="the newcomer's training configuration (its GET /v1/training config): "
                    "refused before anything is registered unless it is the swarm's")

    @field_validator("training")
    @classmethod
    def _training(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            SwarmConfig.from_json(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

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

    @field_validator("tls_certificate")
    @classmethod
    def _certificate(cls, value: str) -> str:
        check_member_certificate(value.encode())
        return value


class Pending(BaseModel):
    """Admission proposed on chain; a majority of members has yet to approve it."""

    status: Literal["pending"] = "pending"
    approvals: int
    needed: int


class WrappedKey(BaseModel):
    epoch: int
    wrapped: dict[str, str] = Field(description="the HE secret context, sealed to the "
                                                "newcomer's X25519 key (base64 fields)")


class Handover(BaseModel):
    """Everything an admitted newcomer needs; it checks each part against the chain."""

    status: Literal["member"] = "member"
    address: str
    contract: str
    rpc_url: str
    round: int
    weights: str = Field(description="the global weights, .npy base64-encoded")
    weights_digest: str | None
    keys: list[WrappedKey]
    training: dict[str, Any] = Field(description="the swarm-wide training configuration, "
                                                 "whose digest the contract records")


class Approval(BaseModel):
    address: str
    approvals: int
    member: bool


class Rotation(BaseModel):
    """A new key epoch: where it starts, and which members got its key."""

    key_epoch: int
    from_round: int
    delivered: list[str]
    failed: list[str]


class Removal(Rotation):
    removed: str


class AdminRole(BaseModel):
    """Who holds the contract's admin role, and to whom a hand-over was started."""

    admin: str
    pending_admin: str | None


CurrentModel = Callable[[], tuple[int, np.ndarray | None, str | None]]
"""The round, the global weights it produced and their digest, read together."""


@dataclass(frozen=True)
class Sponsor:
    """Admits, approves and removes members; refusals raise :class:`Refused`."""

    node: str
    """This node's name, for logs."""
    funding_wei: int
    """What a newcomer is sent for its gas if it holds less than half of it."""
    invites: InviteBook
    keys: KeyRing
    current_model: CurrentModel
    link: Callable[[], SwarmLink | None]
    """The node's link to the swarm: None until it is a member."""
    training: SwarmConfig
    """The swarm-wide training configuration (this member's, checked against the chain's
    at start): a newcomer with another one is refused before anything is registered."""
    swarm_contract: Callable[[], SwarmContract] | None = None
    """The swarm's contract as this node even when it runs no rounds on chain (federated
    mode), for the admin role; raises Refused while the node is in no swarm."""

    def _link(self) -> SwarmLink:
        link = self.link()
        if link is None:
            raise Refused(409, "this node is not an active swarm member")
        return link

    # ------------------------------------------------------------------ admission

    def admit(self, request: JoinRequest) -> Handover | Pending:
        """The hand-over, or Pending while approvals are missing; Refused otherwise.

        The invite is reserved for the newcomer before any transaction and stays so while
        the chain lists it (proposed or admitted); it is spent with the hand-over, and
        released if nothing reached the chain.
        """
        link = self._link()
        problem = SwarmConfig.from_json(request.training).mismatch(
            self.training, f"sponsor {self.node}'s", who="the newcomer")
        if problem is not None:
            log.warning("node=%s refused to admit %s: %s", self.node, request.address, problem)
            raise Refused(409, f"{problem}: start the newcomer with the swarm's task and "
                               "settings")
        with self.invites.admission(request.invite, request.address) as held:
            return self._admit(link, request, held)

    def _admit(self, link: SwarmLink, request: JoinRequest,
               held: Admission) -> Handover | Pending:
        contract = link.contract
        record = contract.member(request.address)
        if record.active and not held.held_before:
            raise Refused(409, f"{request.address} is already a member")
        key = bytes.fromhex(request.x25519_public_key)
        certificate = request.tls_certificate.encode()
        rule = contract.membership_rule()
        try:
            if record.active:
                pass
            elif rule == "admin":
                if contract.admin() != contract.sender:
                    raise Refused(403, "under the admin rule only the node holding the "
                                       "contract's admin role admits members; ask that "
                                       "node's admin for an invite")
                contract.add_member(request.address, request.endpoint, key, certificate,
                                    request.dataset_size)
            elif contract.proposal_approvals(request.address) == 0:
                contract.propose_member(request.address, request.endpoint, key, certificate,
                                        request.dataset_size)
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        except Exception:
            _hold_if_registered(contract, request.address, held)
            raise
        record = contract.member(request.address)
        held.hold()
        if not record.active:
            approvals = contract.proposal_approvals(request.address)
            needed = contract.active_member_count() // 2 + 1
            log.info("node=%s proposed %s: %d of %d approvals", self.node, request.address,
                     approvals, needed)
            return Pending(approvals=approvals, needed=needed)
        # Held until the hand-over: should it fail, the newcomer (now a member on chain) can
        # ask again with the same invite; spent once it has its hand-over.
        if (record.x25519_public_key != key
                or record.tls_certificate.strip() != certificate.strip()):
            raise Refused(409, f"the chain registers {request.address} with another X25519 key "
                               "or TLS certificate than this request names; ask again with "
                               "the node's own (GET /v1/identity on it)")
        if (self.funding_wei
                and contract.w3.eth.get_balance(request.address) < self.funding_wei // 2):
            contract.fund(request.address, self.funding_wei)
        if link.trust is not None:
            link.trust.invalidate()
        handover = self._handover(link, request.address, record.x25519_public_key)
        held.use()
        log.info("node=%s admitted %s (%s, %d samples)", self.node, request.address,
                 request.endpoint, request.dataset_size)
        return handover

    def resume(self, address: str, request: HandoverRequest) -> Handover:
        """The hand-over again, for a member admitted with `request.invite` whose join failed
        after the admission (see :mod:`apiary.node.resumption`). Sealed to the X25519 key
        the chain registers for `address`; Refused unless the request is signed by
        `address`'s key and the invite admitted `address`."""
        link = self._link()
        address = _checksum(address)
        problem = signer_problem(address, request)
        if problem is not None or not self.invites.admitted_with(request.invite, address):
            log.warning("node=%s refused a hand-over request for %s: %s", self.node, address,
                        problem or "not the invite it was admitted with")
            raise Refused(403, problem or f"this sponsor admitted {address} with no such "
                                          "invite; ask the sponsor that admitted it")
        record = link.contract.member(address)
        if not record.active:
            raise Refused(409, f"{address} is not an active member: ask for admission "
                               "(POST /v1/members) first")
        if link.trust is not None:
            link.trust.invalidate()
        handover = self._handover(link, address, record.x25519_public_key)
        self.invites.spend(request.invite, address)
        log.info("node=%s handed over to %s again", self.node, address)
        return handover

    def _handover(self, link: SwarmLink, address: str, x25519_public: bytes) -> Handover:
        contract = link.contract
        round_number, weights, digest = self.current_model()
        if weights is None:
            raise Refused(503, "this node holds no global model yet; try again shortly")
        buffer = io.BytesIO()
        np.save(buffer, weights)
        first_epoch, _ = contract.key_epoch_for(max(round_number, 1))
        last_epoch, _ = contract.key_epoch_for(contract.current_round())
        wrapped = []
        for epoch in range(first_epoch, last_epoch + 1):
            he = self.keys.get(epoch)
            if he is None:
                continue
            sealed = wrap(he.secret_bytes(), x25519_public,
                          wrap_context(contract.address, address, epoch))
            wrapped.append(WrappedKey(epoch=epoch, wrapped=sealed.to_json()))
        return Handover(
            address=address,
            contract=contract.address,
            rpc_url=link.rpc_url,
            round=round_number,
            weights=base64.b64encode(buffer.getvalue()).decode(),
            weights_digest=digest,
            keys=wrapped,
            training=self.training.as_json(),
        )

    def approve(self, address: str) -> Approval:
        """Majority rule: this member approves the proposed newcomer `address`."""
        contract = self._link().contract
        address = _checksum(address)
        try:
            contract.approve_member(address)
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        return Approval(address=address, approvals=contract.proposal_approvals(address),
                        member=contract.member(address).active)

    # ------------------------------------------------------------------ removal

    def remove(self, address: str) -> Removal:
        """Deactivate `address` and start a fresh HE key epoch in one transaction, then hand
        the key to every remaining member."""
        link = self._link()
        contract = link.contract
        address = _checksum(address)
        if not contract.member(address).active:
            raise Refused(404, f"{address} is not an active member")
        if contract.admin() != contract.sender:
            raise Refused(403, "only the swarm admin's node removes members")
        fresh = HEContext.create()
        try:
            contract.remove_member(address, fresh.public_digest())
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        if link.trust is not None:
            link.trust.invalidate()
        rotation = self._hand_out(link, fresh)
        log.info("node=%s removed %s; key epoch %d from round %d delivered to %d members",
                 self.node, address, rotation.key_epoch, rotation.from_round,
                 len(rotation.delivered))
        return Removal(removed=address, **rotation.model_dump())

    def rotate(self) -> Rotation:
        """Start a fresh HE key epoch now and hand it to every member ("rotate now").

        Retryable: when a member missed the key (`failed`), calling again starts another
        epoch from the first round nobody has encrypted yet, which supersedes this one.
        """
        link = self._link()
        contract = link.contract
        if contract.admin() != contract.sender:
            raise Refused(403, "only the swarm admin's node rotates the key")
        fresh = HEContext.create()
        try:
            contract.rotate_key(fresh.public_digest())
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        rotation = self._hand_out(link, fresh)
        log.info("node=%s rotated to key epoch %d from round %d, delivered to %d members",
                 self.node, rotation.key_epoch, rotation.from_round, len(rotation.delivered))
        return rotation

    def _hand_out(self, link: SwarmLink, fresh: HEContext) -> Rotation:
        """Keep the newest epoch's key and deliver it, wrapped, to every other member."""
        contract = link.contract
        epoch = contract.key_epoch_count() - 1
        from_round, digest = contract.key_epoch(epoch)
        if digest != fresh.public_digest():
            raise Refused(409, f"key epoch {epoch} on chain is not the key just created; "
                               "another rotation landed at the same time: rotate again")
        self.keys.put(epoch, fresh.secret_bytes(), fresh.public_digest())
        delivered, failed = [], []
        for member in contract.members():
            if member.address == contract.sender:
                continue
            sealed = wrap(fresh.secret_bytes(), member.x25519_public_key,
                          wrap_context(contract.address, member.address, epoch))
            try:
                _deliver(link, member.endpoint, epoch, sealed)
                delivered.append(member.address)
            except grpc.RpcError as exc:
                log.error("node=%s could not deliver key epoch %d to %s: %s",
                          self.node, epoch, member.address, exc.details())
                failed.append(member.address)
        return Rotation(key_epoch=epoch, from_round=from_round, delivered=delivered,
                        failed=failed)

    # ------------------------------------------------------------------ the admin role

    def _contract(self) -> SwarmContract:
        link = self.link()
        if link is not None:
            return link.contract
        if self.swarm_contract is not None:
            return self.swarm_contract()
        raise Refused(409, "this node is not an active swarm member")

    def admin_role(self) -> AdminRole:
        contract = self._contract()
        return AdminRole(admin=contract.admin(), pending_admin=contract.pending_admin())

    def transfer_admin(self, address: str) -> AdminRole:
        """Start handing this node's admin role to `address`; it holds the role once it
        accepts (two steps, so a mistyped address cannot take it)."""
        contract = self._contract()
        address = _checksum(address)
        if contract.admin() != contract.sender:
            raise Refused(403, "this node does not hold the contract's admin role")
        try:
            contract.transfer_admin(address)
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        log.info("node=%s started handing the admin role to %s", self.node, address)
        return self.admin_role()

    def accept_admin(self) -> AdminRole:
        """Take the admin role that was handed to this node's account."""
        contract = self._contract()
        if contract.pending_admin() != contract.sender:
            raise Refused(409, f"the admin role is not being handed to {contract.sender}; "
                               "the current admin starts the hand-over (transferAdmin)")
        try:
            contract.accept_admin()
        except ContractRejected as exc:
            raise Refused(409, str(exc)) from exc
        log.info("node=%s holds the contract's admin role", self.node)
        return self.admin_role()


def _hold_if_registered(contract: SwarmContract, address: str, held: Admission) -> None:
    """After a transaction failed without a revert (a timeout, say): keep the invite for
    `address` if the chain lists it anyway, or if the chain cannot be asked."""
    try:
        if contract.member(address).active or contract.proposal_approvals(address):
            held.hold()
    except Exception:  # the chain does not answer: the safe side is to keep it held
        held.hold()


def _checksum(address: str) -> str:
    try:
        return checksum_address(address)
    except ValueError as exc:
        raise Refused(422, str(exc)) from exc


def _deliver(link: SwarmLink, endpoint: str, epoch: int, sealed: WrappedSecret) -> None:
    credentials = link.trust.channel_credentials() if link.trust else None
    channel = (grpc.secure_channel(endpoint, credentials) if credentials
               else grpc.insecure_channel(endpoint))
    with channel:
        apiary_pb2_grpc.PeerStub(channel).DeliverKey(
            apiary_pb2.KeyDelivery(epoch=epoch, ephemeral_public=sealed.ephemeral_public,
                                   nonce=sealed.nonce, ciphertext=sealed.ciphertext),
            timeout=30,
        )

