"""A node's own identity: its Ethereum account, X25519 key pair and TLS key and certificate.

Every node makes them itself, in its own state directory, the first time it starts (a
founding member and a joining node alike); no private key is ever made or held anywhere
else. What others may know of them is :class:`PublicIdentity` (``GET /v1/identity``), and
the chain registers exactly that at admission.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_utils import is_address, to_checksum_address
from pydantic import AfterValidator, BaseModel, Field

from apiary.chain.binding import MAX_DATASET_SIZE
from apiary.core.errors import ConfigError
from apiary.core.files import write_private_json
from apiary.core.tls import TlsFiles, create_self_signed, endpoint_host

IDENTITY_FILE = "identity.json"
TLS_DIR = "tls"


def checksum_address(value: str) -> str:
    """`value` in its EIP-55 form; ValueError if it is not an Ethereum address."""
    if not is_address(value):
        raise ValueError("not an Ethereum address")
    return str(to_checksum_address(value))


EthAddress = Annotated[str, AfterValidator(checksum_address)]
"""An Ethereum address, validated and checksummed wherever pydantic or FastAPI parses it."""


class IdentityMismatch(ConfigError, ValueError):
    """The state directory holds another identity than the settings name."""


@dataclass(frozen=True)
class Identity:
    """A node's Ethereum account and X25519 key pair (kept in its state directory)."""

    name: str
    private_key: str
    address: str
    x25519_private: str
    x25519_public: str

    @classmethod
    def create(cls, name: str, private_key: str | None = None) -> Identity:
        """A fresh X25519 pair, and a fresh Ethereum account unless `private_key` is given."""
        key = private_key or Account.create().key.to_0x_hex()
        x_key = X25519PrivateKey.generate()
        raw_private = x_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw_public = x_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(name, key, Account.from_key(key).address, raw_private.hex(),
                   raw_public.hex())

    @classmethod
    def load(cls, state_dir: Path) -> Identity | None:
        path = state_dir / IDENTITY_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, state_dir: Path) -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        return write_private_json(state_dir / IDENTITY_FILE, asdict(self))

    def public(self, endpoint: str, tls: TlsFiles, dataset_size: int) -> PublicIdentity:
        return PublicIdentity(name=self.name, address=self.address,
                              x25519_public_key=self.x25519_public, endpoint=endpoint,
                              tls_certificate=tls.cert.decode(), dataset_size=dataset_size)


class PublicIdentity(BaseModel):
    """What a node tells others about itself, and what the chain registers for it."""

    name: str
    address: str = Field(description="its Ethereum account")
    x25519_public_key: str = Field(description="hex, 32 bytes: key wraps and pairwise masks")
    endpoint: str = Field(description="its gRPC endpoint, host:port")
    tls_certificate: str = Field(description="PEM of the self-signed certificate it made")
    dataset_size: int = Field(ge=1, le=MAX_DATASET_SIZE,
                              description="its training samples: registered on chain as the "
                                          "most it may enrol a round with")

    @property
    def x25519_bytes(self) -> bytes:
        return bytes.fromhex(self.x25519_public_key)

    @property
    def certificate_bytes(self) -> bytes:
        return self.tls_certificate.encode()


def ensure_identity(state_dir: Path, name: str, endpoint: str,
                    private_key: str | None = None) -> tuple[Identity, TlsFiles]:
    """The node's identity and TLS files from its state directory, made there first if it
    has none: an Ethereum account (`private_key` if given), an X25519 pair, and a TLS key
    with a self-signed certificate for the host of `endpoint`."""
    identity = Identity.load(state_dir)
    if identity is None:
        identity = Identity.create(name, private_key)
        identity.save(state_dir)
    elif private_key and Account.from_key(private_key).address != identity.address:
        raise IdentityMismatch(
            f"{state_dir / IDENTITY_FILE} belongs to {identity.address}, but the private key "
            f"given is {Account.from_key(private_key).address}'s: drop the key setting, or "
            "start from an empty state directory")
    tls_dir = state_dir / TLS_DIR
    tls = TlsFiles.load(tls_dir)
    if tls is None:
        tls = create_self_signed(name, [endpoint_host(endpoint)])
        tls.save(tls_dir)
    return identity, tls
