"""`apiary found`: the one-shot founder of a deployment (the compose file's `founder`).

It waits for the chain, creates the swarm's CKKS keys and TLS CA, gives each founding
member a fresh Ethereum account (funded from the funding key, so no member key is shared
with anyone), writes each member's state directory — identity, secret HE context, TLS files
and ``swarm.json`` with the contract address, which the node reads at start — and deploys
the contract sized for the model on the data. The first member listed deploys it, so its
node is the contract's admin and keeps the CA key: it is the sponsor newcomers join
through (``POST /v1/invites`` on its admin API). Last, it writes ``swarm.json`` and the
public HE context to the swarm directory (for the coordinator and operators): that file
marks the swarm as founded, so a second run against a chain that still holds the contract
changes nothing, and a run that would overwrite a member's keys refuses.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from web3 import Web3

from apiary.chain.binding import send_ether
from apiary.chain.devnet import dev_private_keys
from apiary.core.data.heart import FEATURE_NAMES
from apiary.core.data.shards import Shard
from apiary.core.errors import ConfigError
from apiary.core.files import write_atomic, write_json
from apiary.core.flat import param_count
from apiary.core.he import HEContext
from apiary.core.models import build_model
from apiary.core.settings import FoundingSettings
from apiary.core.tls import CA_CERT, create_ca
from apiary.node.founding import (
    IDENTITY_FILE,
    SWARM_FILE,
    FoundingMember,
    Identity,
    found_swarm,
    prepare_member_state,
    write_context,
    write_swarm_file,
)


class FoundingError(ConfigError, RuntimeError):
    """The swarm cannot be founded as configured; nothing on disk was overwritten."""


@dataclass(frozen=True)
class Founded:
    contract: str
    param_count: int
    members: dict[str, str]
    already: bool = False


def param_count_for(model: str, dataset: str) -> int:
    """Parameters of `model` on `dataset`: the bundled heart data, or any shard file."""
    if dataset == "heart":
        shape, classes = (len(FEATURE_NAMES),), 2
    else:
        shard = Shard.load(Path(dataset))
        shape, classes = shard.input_shape, shard.num_classes
    return param_count(build_model(model, shape, classes, seed=0))


def wait_for_chain(rpc_url: str, timeout_s: float) -> Web3:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 120}))
    deadline = time.monotonic() + timeout_s
    while not w3.is_connected():
        if time.monotonic() > deadline:
            raise FoundingError(f"the chain at {rpc_url} did not answer within {timeout_s:g} s")
        time.sleep(0.5)
    return w3


def found(settings: FoundingSettings, emit: Callable[[str], None]) -> Founded:
    try:
        endpoints = settings.member_endpoints
    except ValueError as exc:
        raise FoundingError(str(exc)) from exc
    if len(endpoints) < settings.min_peers:
        raise FoundingError(f"{len(endpoints)} founding member(s) for min_peers "
                            f"{settings.min_peers}: set APIARY_FOUNDING_MEMBERS=name=host:port,…")
    w3 = wait_for_chain(settings.rpc_url, settings.chain_wait_s)
    marker = settings.swarm_dir / SWARM_FILE
    if marker.exists():
        return _already_founded(w3, marker, emit)
    state_dir = _state_dirs(settings.state_root, list(endpoints))

    params = param_count_for(settings.model, settings.dataset)
    funding_key = settings.funding_key or dev_private_keys(1)[0]
    he = HEContext.create()
    ca = create_ca(settings.swarm_name)
    members = []
    for index, (name, endpoint) in enumerate(endpoints.items()):
        identity = Identity.create(name, Account.create().key.to_0x_hex())
        prepare_member_state(state_dir(name), identity, he, ca, endpoint,
                             holds_ca_key=index == 0)
        members.append(FoundingMember(identity, endpoint))
        transfer(w3, funding_key, identity.address, int(settings.member_funding_eth * 10**18))
    sponsor = members[0].identity
    emit(f"{sponsor.name} deploys SwarmLearning for {params} parameters ({settings.model} on "
         f"{settings.dataset}) on {settings.rpc_url}")
    contract = found_swarm(w3, sponsor.private_key, he, params, members, settings.min_peers,
                           settings.membership, enrol_window_s=settings.enrol_window_s,
                           commit_window_s=settings.commit_window_s)
    for member in members:
        write_swarm_file(state_dir(member.identity.name), contract.address, settings.rpc_url)
        hand_over(state_dir(member.identity.name), settings.state_root)
        emit(f"member {member.identity.name}: {member.identity.address} at {member.endpoint}")
    _write_public(settings, he, ca[1], contract.address, params, w3.eth.chain_id, members)
    emit(f"founded: contract {contract.address}; swarm file {marker}")
    return Founded(contract.address, params, endpoints)


def transfer(w3: Web3, private_key: str, to: str, wei: int) -> None:
    """Send `wei` of ETH: a fresh account needs gas before its first transaction."""
    if wei <= 0:
        return
    receipt = send_ether(w3, Account.from_key(private_key), to, wei)
    if receipt["status"] != 1:
        raise FoundingError(f"funding {to} failed in transaction {receipt['transactionHash']}")


def hand_over(member_dir: Path, state_root: Path) -> None:
    """Run as root (a container's founder writing into each member's volume), give the
    member's files to the owner of the state root, the user its node runs as."""
    if os.geteuid() != 0:
        return
    owner = state_root.stat()
    os.chown(member_dir, owner.st_uid, owner.st_gid)
    for path in member_dir.rglob("*"):
        os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _state_dirs(root: Path, names: list[str]) -> Callable[[str], Path]:
    taken = [root / n for n in names
             if (root / n / SWARM_FILE).exists() or (root / n / IDENTITY_FILE).exists()]
    if taken:
        raise FoundingError(f"{', '.join(map(str, taken))} already hold a member's keys; "
                            "found a new swarm only into empty state directories")
    return lambda name: root / name


def _already_founded(w3: Web3, marker: Path, emit: Callable[[str], None]) -> Founded:
    record = json.loads(marker.read_text())
    address = record["contract"]
    if not w3.eth.get_code(Web3.to_checksum_address(address)):
        raise FoundingError(
            f"{marker} names contract {address}, which this chain does not hold (a devnet "
            "restarted without its state?): remove the swarm and state volumes to found anew"
        )
    emit(f"already founded: contract {address} ({marker}); nothing to do")
    members = {m["name"]: m["endpoint"] for m in record.get("members", [])}
    return Founded(address, int(record["param_count"]), members, already=True)


def _write_public(settings: FoundingSettings, he: HEContext, ca_cert: bytes, address: str,
                  params: int, chain_id: int, members: list[FoundingMember]) -> None:
    """What anyone may read: the public HE context, the CA certificate, swarm.json."""
    swarm_dir = settings.swarm_dir
    write_context(he, swarm_dir, secret=False)
    write_atomic(swarm_dir / CA_CERT, ca_cert)
    record = {
        "contract": address, "rpc_url": settings.rpc_url, "chain_id": chain_id,
        "param_count": params, "model": settings.model, "dataset": settings.dataset,
        "min_peers": settings.min_peers, "membership": settings.membership,
        "members": [{"name": m.identity.name, "address": m.identity.address,
                     "endpoint": m.endpoint} for m in members],
    }
    write_json(swarm_dir / SWARM_FILE, record)
