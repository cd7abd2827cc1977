"""Founding a swarm: the node's side of the ceremony, and the deployment the deployer makes.

The deployer (`apiary found`, :mod:`apiary.node.founder`) drives the ceremony over the
founders' admin APIs; every key stays on the node that made it:

1. the first founder creates the swarm's HE key (``POST /v1/he-key``): the secret stays on
   it, the answer is the public context and its digest;
2. the deployer reads each founder's ``GET /v1/identity``, deploys the contract with that
   digest and admits the founders as they describe themselves (:func:`found_swarm`);
3. each founder is told its swarm (``POST /v1/swarm``) and accepts it only if the chain
   lists it with its own address, endpoint, X25519 key and TLS certificate;
4. the first founder wraps the secret to every other member's X25519 key on chain
   (``POST /v1/he-key/wrapped``, HPKE bound to contract, recipient and epoch 0), and each
   founder stores its copy (``POST /v1/he-key/delivery``) only if it opens with its own key
   and matches epoch 0's digest on chain. The deployer carries the sealed copies; it cannot
   open them.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from web3 import Web3
from web3.exceptions import Web3Exception

from apiary.chain.binding import SwarmContract
from apiary.core.errors import ConfigError
from apiary.core.files import write_json
from apiary.core.he import HEContext
from apiary.core.keywrap import UnwrapError, WrappedSecret, unwrap, wrap, wrap_context
from apiary.core.tasks import ConfigMismatch, SwarmConfig
from apiary.core.tls import TlsFiles, fingerprint
from apiary.node.identity import EthAddress, Identity, PublicIdentity
from apiary.node.invites import Refused
from apiary.node.keys import KeyMismatch, KeyRing

log = logging.getLogger("apiary.node.founding")

PUBLIC_CONTEXT_FILE = "he-public.ctx"
SWARM_FILE = "swarm.json"


def write_swarm_file(state_dir: Path, contract: str, rpc_url: str,
                     training: SwarmConfig) -> Path:
    """Where the swarm lives (the contract address and the chain endpoint) and the
    swarm-wide training configuration it was founded with."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return write_json(state_dir / SWARM_FILE, {"contract": contract, "rpc_url": rpc_url,
                                               "training": training.as_json()})


def read_swarm_file(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / SWARM_FILE
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def stored_training(state_dir: Path) -> SwarmConfig | None:
    """The swarm-wide training configuration the swarm file holds, if it holds one."""
    stored = read_swarm_file(state_dir) or {}
    if "training" not in stored:
        return None
    return SwarmConfig.from_json(stored["training"])


def check_training(mine: SwarmConfig, on_chain: bytes, stored: SwarmConfig | None,
                   swarm_file: str = "the swarm file") -> None:
    """ConfigMismatch unless this node trains as the swarm was founded to: its configuration's
    digest is the chain's, and the swarm file (whose settings name what differs) agrees."""
    if stored is not None and stored.digest() != on_chain:
        raise ConfigMismatch(f"{swarm_file} holds another training configuration than the one "
                             f"on chain (0x{on_chain.hex()}): restore the file as the founding "
                             "ceremony or the join wrote it")
    if mine.digest() == on_chain:
        return
    if stored is None:
        raise ConfigMismatch(
            f"this node's training configuration (digest 0x{mine.digest().hex()}) differs "
            f"from the swarm's on chain (0x{on_chain.hex()}), and {swarm_file} holds none to "
            "name the setting: start the node with the swarm's task and settings")
    mine.check_matches(stored, "on chain and in " + swarm_file)


def found_swarm(
    w3: Web3,
    admin_key: str,
    he: HEContext,
    param_count: int,
    members: Sequence[PublicIdentity],
    min_peers: int,
    membership: str = "admin",
    enrol_window_s: int = 20,
    commit_window_s: int = 30,
    *,
    training: SwarmConfig,
) -> SwarmContract:
    """Deploy the contract for `he`'s public context and the swarm-wide `training`
    configuration, and admit the founding members as they describe themselves; returns it
    seen by the admin (`admin_key`'s account).

    The windows are the round's deadlines on chain: members have `enrol_window_s` after a
    round opens to enrol, participants `commit_window_s` to commit before they are dropped.
    """
    contract = SwarmContract.deploy(
        w3, admin_key, param_count=param_count, modulus=he.modulus, min_peers=min_peers,
        context_digest=he.public_digest(), membership=membership,
        enrol_window_s=enrol_window_s, commit_window_s=commit_window_s,
        training_digest=training.digest(),
    )
    for m in members:
        contract.add_member(m.address, m.endpoint, m.x25519_bytes, m.certificate_bytes,
                            m.dataset_size)
    return contract


# ---------------------------------------------------------------------- the API's models


class PublicContext(BaseModel):
    """The swarm's public HE context (epoch 0) as its creator answers it."""

    public_context: str = Field(description="the serialized public context, base64")
    digest: str = Field(description="keccak256 of the public context, 0x-hex: what the "
                                    "contract records for key epoch 0")


class SwarmAssignment(BaseModel):
    """The swarm a founder is told it belongs to (public facts only)."""

    contract: EthAddress
    rpc_url: str = Field(pattern=r"^https?://", max_length=2000,
                         description="the chain's JSON-RPC endpoint")
    training: dict[str, Any] = Field(
        description="the swarm-wide training configuration (GET /v1/training's config) "
                    "whose digest the contract records")


class TrainingInfo(BaseModel):
    """What this node trains with: the swarm-wide training configuration and its digest."""

    digest: str = Field(description="keccak256 of the canonical JSON of config, 0x-hex: "
                                    "what the contract records at founding")
    config: dict[str, Any] = Field(description="the task's identity (name, version, "
                                               "architecture, initial weights, parameters) "
                                               "and the training hyper-parameters")


FoundingState = Literal["no swarm", "awaiting key", "member"]


class FoundingStatus(BaseModel):
    state: FoundingState = Field(description="no swarm yet; in a swarm but without its HE "
                                             "key; or a member taking part in rounds")
    address: str
    contract: str | None


class WrappedFor(BaseModel):
    address: str
    wrapped: dict[str, str] = Field(description="the HE secret context sealed to the "
                                                "member's X25519 key (base64 fields)")


class WrappedKeys(BaseModel):
    epoch: int
    keys: list[WrappedFor]


class KeyDelivery(BaseModel):
    """A secret HE context for this node, sealed to its X25519 key."""

    epoch: int = Field(0, ge=0)
    wrapped: dict[str, str]


# ---------------------------------------------------------------------- the node's side


@dataclass
class FoundingCeremony:
    """One node's part in founding; each call refuses with :class:`Refused` and then has
    changed nothing."""

    name: str
    state_dir: Path
    endpoint: str
    identity: Identity
    tls: TlsFiles
    keys: KeyRing
    param_count: int
    dataset_size: int
    """The training samples this node holds, registered on chain at admission."""
    training: SwarmConfig
    """This node's training configuration: a swarm is accepted only if it is the swarm's."""
    connect: Callable[[str, str, str], SwarmContract]
    """(contract address, chain RPC URL, private key) -> the contract sending as this node."""
    enter: Callable[[], None]
    """Start taking part: the swarm is known and this node holds its HE key."""
    entered: Callable[[], bool]
    """Whether the node takes part in rounds already."""
    rpc_url: str | None = None
    """The chain endpoint this node is configured with; preferred over the deployer's."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _contract: SwarmContract | None = field(default=None, repr=False)

    def public_identity(self) -> PublicIdentity:
        return self.identity.public(self.endpoint, self.tls, self.dataset_size)

    def training_info(self) -> TrainingInfo:
        return TrainingInfo(digest="0x" + self.training.digest().hex(),
                            config=self.training.as_json())

    def status(self) -> FoundingStatus:
        stored = read_swarm_file(self.state_dir)
        if stored is None:
            state: FoundingState = "no swarm"
        else:
            state = "member" if self.entered() else "awaiting key"
        return FoundingStatus(state=state, address=self.identity.address,
                              contract=stored["contract"] if stored else None)

    # ------------------------------------------------------------------ step 1

    def create_key(self) -> PublicContext:
        """The swarm's HE key, made here; asked again before any swarm, the same one."""
        with self._lock:
            stored = read_swarm_file(self.state_dir)
            if stored is not None:
                raise Refused(409, f"this node is in the swarm of contract {stored['contract']} "
                                   "already; a new swarm's key is made on a fresh node")
            he = self.keys.get(0)
            if he is None:
                he = HEContext.create()
                self.keys.put(0, he.secret_bytes(), he.public_digest())
                log.info("node=%s created the swarm's HE key (digest 0x%s)", self.name,
                         he.public_digest().hex())
            public = he.public_bytes()
            return PublicContext(public_context=base64.b64encode(public).decode(),
                                 digest="0x" + he.public_digest().hex())

    # ------------------------------------------------------------------ step 3

    def join_swarm(self, assignment: SwarmAssignment) -> FoundingStatus:
        """Belong to the swarm of `assignment.contract`, if the chain lists this node there
        exactly as it describes itself."""
        with self._lock:
            stored = read_swarm_file(self.state_dir)
            if stored is not None and stored["contract"].lower() != assignment.contract.lower():
                raise Refused(409, f"this node is in the swarm of contract {stored['contract']} "
                                   "already; a node belongs to one swarm")
            rpc_url = self.rpc_url or assignment.rpc_url
            contract = self._check_listed(assignment.contract, rpc_url)
            swarm = self._check_training(assignment, contract)
            he = self.keys.get(0)
            if he is not None and he.public_digest() != contract.key_epoch(0)[1]:
                raise Refused(409, "this node holds an HE key that is not the swarm's (its "
                                   "digest differs from key epoch 0 on chain), made for a "
                                   f"founding that did not finish: remove {self.keys.path(0)} "
                                   "to take the swarm's key")
            write_swarm_file(self.state_dir, contract.address, assignment.rpc_url, swarm)
            self._contract = contract
            log.info("node=%s is a founding member of swarm %s", self.name, contract.address)
            self._enter_if_keyed()
        return self.status()

    def _check_training(self, assignment: SwarmAssignment,
                        contract: SwarmContract) -> SwarmConfig:
        """The swarm's training configuration, if the chain records its digest and this
        node trains with it; Refused naming the differing settings otherwise."""
        try:
            swarm = SwarmConfig.from_json(assignment.training)
            on_chain = contract.training_digest()
        except ConfigError as exc:
            raise Refused(422, str(exc)) from exc
        except (OSError, ValueError, Web3Exception) as exc:
            raise Refused(502, f"cannot read the swarm contract {contract.address}: "
                               f"{exc}") from exc
        if swarm.digest() != on_chain:
            raise Refused(409, f"the training configuration given is not the one the "
                               f"contract {contract.address} records (0x{on_chain.hex()})")
        problem = self.training.mismatch(swarm, "the swarm being founded")
        if problem is not None:
            raise Refused(409, f"{problem}: start this node with the swarm's settings")
        return swarm

    def _check_listed(self, address: str, rpc_url: str) -> SwarmContract:
        me = self.public_identity()
        try:
            contract = self.connect(address, rpc_url, self.identity.private_key)
            record = contract.member(me.address)
            params = contract.he_parameters()
        except (OSError, ValueError, Web3Exception) as exc:
            raise Refused(502, f"cannot read the swarm contract {address} through {rpc_url}: "
                               f"{exc}") from exc
        problems = []
        if not record.active:
            problems.append(f"{me.address} is not an active member")
        else:
            if record.endpoint != me.endpoint:
                problems.append(f"endpoint {record.endpoint!r} instead of {me.endpoint!r}")
            if record.x25519_public_key != me.x25519_bytes:
                problems.append("another X25519 key")
            if _fingerprint(record.tls_certificate) != fingerprint(self.tls.cert):
                problems.append("another TLS certificate")
            if record.dataset_size != me.dataset_size:
                problems.append(f"dataset size {record.dataset_size} instead of "
                                f"{me.dataset_size}")
        if params.param_count != self.param_count:
            problems.append(f"{params.param_count} model parameters, but this node's model "
                            f"has {self.param_count}")
        if problems:
            raise Refused(409, f"the contract {address} does not list this node as "
                               f"GET /v1/identity describes it: {'; '.join(problems)}")
        return contract

    def contract(self) -> SwarmContract:
        """The swarm's contract sending as this node; Refused while it is in no swarm."""
        if self._contract is None:
            stored = read_swarm_file(self.state_dir)
            if stored is None:
                raise Refused(409, "this node is in no swarm yet: POST /v1/swarm first")
            self._contract = self.connect(stored["contract"],
                                          self.rpc_url or stored["rpc_url"],
                                          self.identity.private_key)
        return self._contract

    def _enter_if_keyed(self) -> None:
        if self.keys.has(0) and not self.entered():
            self.enter()

    # ------------------------------------------------------------------ step 4

    def wrap_keys(self) -> WrappedKeys:
        """The swarm's founding key sealed to each other active member's X25519 key."""
        with self._lock:
            contract = self.contract()
            he = self.keys.get(0)
            if he is None:
                raise Refused(409, "this node holds no HE key of the swarm; ask the founder "
                                   "that created it (POST /v1/he-key)")
            if he.public_digest() != contract.key_epoch(0)[1]:
                raise Refused(409, "this node's HE key is not the swarm's key epoch 0")
            secret = he.secret_bytes()
            wrapped = [
                WrappedFor(address=m.address, wrapped=wrap(
                    secret, m.x25519_public_key,
                    wrap_context(contract.address, m.address, 0)).to_json())
                for m in contract.members() if m.address != self.identity.address
            ]
            log.info("node=%s sealed the swarm's HE key to %d members", self.name, len(wrapped))
            return WrappedKeys(epoch=0, keys=wrapped)

    def accept_key(self, delivery: KeyDelivery) -> FoundingStatus:
        """Store a secret context sealed to this node once it opens with this node's key
        and matches its epoch's digest on chain."""
        with self._lock:
            contract = self.contract()
            epoch = delivery.epoch
            count = contract.key_epoch_count()
            if epoch >= count:
                raise Refused(409, f"key epoch {epoch} is not on chain (epochs 0..{count - 1})")
            _, digest = contract.key_epoch(epoch)
            aad = wrap_context(contract.address, self.identity.address, epoch)
            try:
                secret = unwrap(WrappedSecret.from_json(delivery.wrapped),
                                bytes.fromhex(self.identity.x25519_private), aad)
                self.keys.put(epoch, secret, digest)
            except (UnwrapError, KeyMismatch, ValueError) as exc:
                raise Refused(422, f"key epoch {epoch}: {exc}") from exc
            log.info("node=%s stored HE key epoch %d of swarm %s", self.name, epoch,
                     contract.address)
            self._enter_if_keyed()
        return self.status()


def _fingerprint(pem: bytes) -> str | None:
    try:
        return fingerprint(pem)
    except ValueError:
        return None
