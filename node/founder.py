"""`apiary found`: the deployer's side of the founding ceremony (the compose file's `founder`).

The deployer holds a funded Ethereum key, the founders' admin API URLs and their admin
token — and no key of any hospital. Every founder's node made its own keys when it started;
the ceremony, in order:

1. ``POST /v1/he-key`` on the first founder: it creates the swarm's HE key and answers the
   public context and its digest; the secret stays on it;
2. ``GET /v1/identity`` of every founder; the deployer deploys the contract with the digest
   and admits each founder with its address, gRPC endpoint, X25519 key and TLS certificate,
   then funds their accounts (a devnet's, or any chain's with a funded key);
3. ``POST /v1/swarm`` on every founder with the contract address and the RPC URL: each
   checks the chain lists it as it is;
4. ``POST /v1/he-key/wrapped`` on the first founder: the HE secret sealed to every other
   member's X25519 key on chain; each sealed copy goes to its founder's
   ``POST /v1/he-key/delivery``, which checks it against epoch 0's digest on chain;
5. optionally ``transferAdmin`` to ``--admin`` (and ``POST /v1/admin/accept`` on that
   founder's node when it is one).

The deployer is the contract's admin until then. Last it writes ``swarm.json`` (contract,
chain, members; public facts) and the public HE context to the swarm directory, for the
coordinator and operators: that file marks the swarm as founded, so a second run against a
chain that still holds the contract changes nothing.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_utils import is_address, to_checksum_address
from pydantic import ValidationError
from web3 import Web3

from apiary.chain import probe as chain_probe
from apiary.chain.binding import ContractRejected, SwarmContract, send_ether
from apiary.chain.devnet import dev_private_keys
from apiary.core.admin_token import require_admin_token
from apiary.core.data.heart import FEATURE_NAMES
from apiary.core.data.shards import Shard
from apiary.core.errors import ConfigError
from apiary.core.files import write_atomic, write_json
from apiary.core.flat import param_count
from apiary.core.he import HEContext
from apiary.core.models import build_model
from apiary.core.settings import FoundingSettings
from apiary.core.tasks import SwarmConfig
from apiary.core.tls import check_member_certificate
from apiary.node.client import (
    AdminApiError,
    AdminClient,
    AdminTokenRejected,
    AdminUnreachable,
    Answer,
)
from apiary.node.founding import (
    PUBLIC_CONTEXT_FILE,
    SWARM_FILE,
    KeyDelivery,
    PublicContext,
    SwarmAssignment,
    found_swarm,
)
from apiary.node.identity import PublicIdentity

HTTP_TIMEOUT_S = 120.0
POLL_S = 0.5


class FoundingError(ConfigError, RuntimeError):
    """The swarm cannot be founded as configured; the message says what to fix."""


@dataclass(frozen=True)
class Founded:
    contract: str
    param_count: int
    members: dict[str, str]
    """Name → address of each founding member."""
    admin: str = ""
    already: bool = False


def param_count_for(model: str, dataset: str) -> int:
    """Parameters of `model` on `dataset`: the bundled heart data, or any shard file."""
    if dataset == "heart":
        shape, classes = (len(FEATURE_NAMES),), 2
    else:
        shard = Shard.load(Path(dataset))
        shape, classes = shard.input_shape, shard.num_classes
    return param_count(build_model(model, shape, classes, seed=0))


def wait_for_chain(rpc_url: str, timeout_s: float,
                   say: Callable[[str], None] | None = None) -> Web3:
    """The chain's client once it answers (short probes, FoundingError after `timeout_s`)."""
    chain_probe.wait_for_chain(rpc_url, timeout_s, say=say, error=FoundingError)
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 120}))


class Founders:
    """The founders' admin APIs, by name, each through an AdminClient; every failure
    becomes a FoundingError that names the founder."""

    def __init__(self, urls: dict[str, str], token: str) -> None:
        self.urls = urls
        self.clients = {name: AdminClient(url, token, timeout_s=HTTP_TIMEOUT_S)
                        for name, url in urls.items()}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def call(self, name: str, step: Callable[[AdminClient], Answer]) -> Answer:
        """``step`` on founder ``name``'s client, its failure told as the founder's."""
        try:
            return step(self.clients[name])
        except AdminTokenRejected as exc:
            raise FoundingError(f"founding member {name} refused the admin token "
                                f"({self.urls[name]}): set APIARY_ADMIN_TOKEN to its nodes' "
                                "token") from exc
        except AdminApiError as exc:
            raise FoundingError(f"founding member {name}: {exc}") from exc

    def wait_until_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for name, client in self.clients.items():
            try:
                client.wait_healthy(max(0.0, deadline - time.monotonic()), poll_s=POLL_S)
            except AdminUnreachable as exc:
                raise FoundingError(f"founding member {name}'s admin API at {client.url} did "
                                    f"not answer within {timeout_s:g} s") from exc

    def identity(self, name: str) -> PublicIdentity:
        identity = self.call(name, AdminClient.identity)
        try:
            check_member_certificate(identity.certificate_bytes)
            if len(identity.x25519_bytes) != 32 or not is_address(identity.address):
                raise ValueError("not a 32-byte X25519 key and an Ethereum address")
        except (ValidationError, ValueError) as exc:
            raise FoundingError(f"founding member {name}'s identity is unusable: {exc}") from exc
        return identity.model_copy(update={"address": to_checksum_address(identity.address)})

    def training(self, names: list[str]) -> SwarmConfig:
        """The founders' one training configuration (the first founder's); FoundingError
        naming the founder and every setting where another one's differs."""
        configs = {}
        for name in names:
            info = self.call(name, AdminClient.training)
            try:
                configs[name] = SwarmConfig.from_json(info.config)
            except ConfigError as exc:
                raise FoundingError(f"founding member {name}'s training configuration is "
                                    f"unusable: {exc}") from exc
        first = names[0]
        swarm = configs[first]
        for name, config in configs.items():
            problem = config.mismatch(swarm, f"founder {first}'s", who=name)
            if problem is not None:
                raise FoundingError(f"{problem}: start every founder with the same task and "
                                    "training settings")
        return swarm

    def wait_members(self, timeout_s: float) -> None:
        """Every founder holds the swarm and its key and takes part (``GET /v1/swarm``)."""
        deadline = time.monotonic() + timeout_s
        for name in self.urls:
            while (state := self.call(name, AdminClient.founding_status).state) != "member":
                if time.monotonic() > deadline:
                    raise FoundingError(f"founding member {name} is {state!r} {timeout_s:g} s "
                                        "after the ceremony; see its log")
                time.sleep(POLL_S)


def found(settings: FoundingSettings, emit: Callable[[str], None]) -> Founded:
    token = require_admin_token(settings.admin_token, what="founding (the founders' admin APIs)")
    try:
        urls = settings.member_urls
    except ValueError as exc:
        raise FoundingError(str(exc)) from exc
    if len(urls) < settings.min_peers:
        raise FoundingError(f"{len(urls)} founding member(s) for min_peers {settings.min_peers}: "
                            "set APIARY_FOUNDING_MEMBERS=name=http://host:port,…")
    w3 = wait_for_chain(settings.rpc_url, settings.chain_wait_s, emit)
    marker = settings.swarm_dir / SWARM_FILE
    if marker.exists():
        return _already_founded(w3, marker, emit)
    deployer_key = settings.funding_key or dev_private_keys(1)[0]
    founders = Founders(urls, token)
    try:
        return _ceremony(settings, w3, founders, deployer_key, emit)
    finally:
        founders.close()


def _ceremony(settings: FoundingSettings, w3: Web3, founders: Founders, deployer_key: str,
              emit: Callable[[str], None]) -> Founded:
    founders.wait_until_up(settings.node_wait_s)
    names = list(founders.urls)
    first = names[0]
    training = founders.training(names)
    params = training.task.parameters
    emit(f"the founders train task {training.task.name!r} (version {training.task.version}, "
         f"{params} parameters) alike: training digest 0x{training.digest().hex()}")

    emit(f"{first} creates the swarm's HE key (POST /v1/he-key); its secret stays there")
    he, public = _public_context(founders.call(first, AdminClient.create_key), first)

    identities = {name: founders.identity(name) for name in names}
    for name, identity in identities.items():
        if identity.name != name:
            raise FoundingError(f"the admin API listed as {name} ({founders.urls[name]}) "
                                f"answers as {identity.name!r}: check APIARY_FOUNDING_MEMBERS")
    if len({i.address for i in identities.values()}) != len(identities):
        raise FoundingError("two founding members answer with the same address: each "
                            "hospital's node needs its own state directory")

    deployer = Account.from_key(deployer_key).address
    emit(f"deployer {deployer} deploys SwarmLearning for {params} parameters "
         f"on {settings.rpc_url} and admits {len(names)} founders")
    try:
        contract = found_swarm(w3, deployer_key, he, params, list(identities.values()),
                               settings.min_peers, settings.membership,
                               enrol_window_s=settings.enrol_window_s,
                               commit_window_s=settings.commit_window_s, training=training)
    except (ContractRejected, ValueError) as exc:
        raise FoundingError(f"deploying the contract failed: {exc}") from exc
    wei = int(settings.member_funding_eth * 10**18)
    for name, identity in identities.items():
        _transfer(w3, deployer_key, identity.address, wei)
        emit(f"member {name}: {identity.address} at {identity.endpoint}")

    assignment = SwarmAssignment(contract=contract.address, rpc_url=settings.rpc_url,
                                 training=training.as_json())
    for name in names:
        state = founders.call(name, lambda c: c.assign_swarm(assignment)).state
        emit(f"{name} accepts the swarm ({state})")
    wrapped = founders.call(first, AdminClient.wrap_keys)
    sealed = {w.address: w.wrapped for w in wrapped.keys}
    for name in names[1:]:
        address = identities[name].address
        if address not in sealed:
            raise FoundingError(f"{first} sealed no HE key to {name} ({address})")
        delivery = KeyDelivery(epoch=wrapped.epoch, wrapped=sealed[address])
        state = founders.call(name, lambda c, d=delivery: c.deliver_key(d)).state
        emit(f"{name} holds the swarm's HE key, sealed to it by {first} ({state})")
    founders.wait_members(settings.node_wait_s)

    admin = _hand_admin(settings.admin, contract, founders, identities, emit)
    _write_public(settings, public, contract, training, w3.eth.chain_id, identities)
    emit(f"founded: contract {contract.address}; swarm file {settings.swarm_dir / SWARM_FILE}")
    return Founded(contract.address, params, {n: i.address for n, i in identities.items()},
                   admin)


def _public_context(created: PublicContext, name: str) -> tuple[HEContext, bytes]:
    try:
        public = base64.b64decode(created.public_context, validate=True)
        he = HEContext.from_bytes(public)
    except (ValidationError, ValueError) as exc:
        raise FoundingError(f"{name} answered no usable public HE context: {exc}") from exc
    if he.has_secret_key:
        raise FoundingError(f"{name} answered a context holding its secret key; refusing it")
    if "0x" + he.public_digest().hex() != created.digest:
        raise FoundingError(f"{name}'s public HE context does not match the digest it gave")
    return he, public


def _hand_admin(target: str | None, contract: SwarmContract, founders: Founders,
                identities: dict[str, PublicIdentity], emit: Callable[[str], None]) -> str:
    """Start handing the admin role to `target` (an address or a founder's name); a
    founder's node accepts it at once. Returns who is admin now."""
    if not target:
        return contract.admin()
    by_address = {i.address: n for n, i in identities.items()}
    if target in identities:
        name: str | None = target
        address = identities[target].address
    elif is_address(target):
        address = to_checksum_address(target)
        name = by_address.get(address)
    else:
        raise FoundingError(f"--admin {target!r} is neither an address nor a founding member")
    contract.transfer_admin(address)
    if name is None:
        emit(f"admin role handed to {address}: it takes it with acceptAdmin "
             "(POST /v1/admin/accept on its node)")
        return contract.admin()
    founders.call(name, AdminClient.accept_admin)
    emit(f"{name} ({address}) holds the contract's admin role")
    return contract.admin()


def _transfer(w3: Web3, private_key: str, to: str, wei: int) -> None:
    """Send `wei` of ETH: a fresh account needs gas before its first transaction."""
    if wei <= 0:
        return
    receipt = send_ether(w3, Account.from_key(private_key), to, wei)
    if receipt["status"] != 1:
        raise FoundingError(f"funding {to} failed in transaction {receipt['transactionHash']}")


def _already_founded(w3: Web3, marker: Path, emit: Callable[[str], None]) -> Founded:
    record = json.loads(marker.read_text())
    address = record["contract"]
    if not w3.eth.get_code(Web3.to_checksum_address(address)):
        raise FoundingError(
            f"{marker} names contract {address}, which this chain does not hold (a devnet "
            "restarted without its state?): remove the swarm and state volumes to found anew"
        )
    emit(f"already founded: contract {address} ({marker}); nothing to do")
    members = {m["name"]: m["address"] for m in record.get("members", [])}
    return Founded(address, int(record["param_count"]), members, record.get("admin", ""),
                   already=True)


def _write_public(settings: FoundingSettings, public: bytes, contract: SwarmContract,
                  training: SwarmConfig, chain_id: int,
                  identities: dict[str, PublicIdentity]) -> None:
    """What anyone may read: the public HE context and swarm.json (with the swarm-wide
    training configuration whose digest the contract records)."""
    swarm_dir = settings.swarm_dir
    swarm_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(swarm_dir / PUBLIC_CONTEXT_FILE, public)
    record = {
        "contract": contract.address, "rpc_url": settings.rpc_url, "chain_id": chain_id,
        "param_count": training.task.parameters, "task": training.task.name,
        "training": training.as_json(), "training_digest": "0x" + training.digest().hex(),
        "min_peers": settings.min_peers, "membership": settings.membership,
        "admin": contract.admin(), "pending_admin": contract.pending_admin(),
        "members": [{"name": n, "address": i.address, "endpoint": i.endpoint}
                    for n, i in identities.items()],
    }
    write_json(swarm_dir / SWARM_FILE, record)

