"""Founding a swarm: HE keys, the contract, the first members, each node's identity.

Used by `apiary demo` (and the compose founder): the founder creates the CKKS keys,
deploys the contract for the model's parameter count and admits the founding members.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.core.files import write_atomic, write_json, write_private, write_private_json
from apiary.core.he import HEContext
from apiary.core.tls import CA_KEY, endpoint_host, node_files
from apiary.node.keys import SECRET_CONTEXT_FILE

PUBLIC_CONTEXT_FILE = "he-public.ctx"
IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class Identity:
    """A node's Ethereum account and X25519 key pair (kept in its state directory)."""

    name: str
    private_key: str
    address: str
    x25519_private: str
    x25519_public: str

    @classmethod
    def create(cls, name: str, private_key: str) -> Identity:
        x_key = X25519PrivateKey.generate()
        raw_private = x_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw_public = x_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(name, private_key, Account.from_key(private_key).address,
                   raw_private.hex(), raw_public.hex())

    def save(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        return write_private_json(state_dir / IDENTITY_FILE, asdict(self))


@dataclass(frozen=True)
class FoundingMember:
    identity: Identity
    endpoint: str


def write_context(he: HEContext, directory: Path, *, secret: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if secret:
        return write_private(directory / SECRET_CONTEXT_FILE, he.secret_bytes())
    return write_atomic(directory / PUBLIC_CONTEXT_FILE, he.public_bytes())


def found_swarm(
    w3: Web3,
    admin_key: str,
    he: HEContext,
    param_count: int,
    members: list[FoundingMember],
    min_peers: int,
    membership: str = "admin",
    enrol_window_s: int = 20,
    commit_window_s: int = 30,
) -> SwarmContract:
    """Deploy the contract and admit the founding members; returns it seen by the admin.

    The windows are the round's deadlines on chain: members have `enrol_window_s` after a
    round opens to enrol, participants `commit_window_s` to commit before they are dropped.
    """
    contract = SwarmContract.deploy(
        w3, admin_key, param_count=param_count, modulus=he.modulus, min_peers=min_peers,
        context_digest=he.public_digest(), membership=membership,
        enrol_window_s=enrol_window_s, commit_window_s=commit_window_s,
    )
    for m in members:
        contract.add_member(m.identity.address, m.endpoint,
                            bytes.fromhex(m.identity.x25519_public))
    return contract


SWARM_FILE = "swarm.json"


def write_swarm_file(state_dir: Path, contract: str, rpc_url: str) -> Path:
    """Where the swarm lives: the contract address and the chain endpoint."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return write_json(state_dir / SWARM_FILE, {"contract": contract, "rpc_url": rpc_url})


def read_swarm_file(state_dir: Path) -> dict[str, str] | None:
    path = state_dir / SWARM_FILE
    if not path.exists():
        return None
    data: dict[str, str] = json.loads(path.read_text())
    return data


def prepare_member_state(
    state_dir: Path,
    identity: Identity,
    he: HEContext,
    ca: tuple[bytes, bytes],
    endpoint: str,
    *,
    holds_ca_key: bool = False,
) -> None:
    """A founding member's state directory: identity, HE key, TLS files (and the CA key
    for the member that will sponsor newcomers)."""
    identity.save(state_dir)
    write_context(he, state_dir, secret=True)
    tls_dir = state_dir / "tls"
    node_files(ca[0], ca[1], identity.name, [endpoint_host(endpoint)]).save(tls_dir)
    if holds_ca_key:
        write_private(tls_dir / CA_KEY, ca[0])
