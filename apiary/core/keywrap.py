"""Hand a secret to one member: X25519 ECDH + HKDF-SHA256 + ChaCha20-Poly1305.

The sender uses a fresh ephemeral key for every wrap, so only the holder of the
recipient's X25519 private key can unwrap; `context` (the swarm contract, the
recipient's address, the key epoch) is bound as associated data, so a wrapped key
cannot be replayed for another member, swarm or epoch.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO = b"apiary/v1/key-wrap"


class UnwrapError(ValueError):
    """The wrapped secret is not for this key, or was altered."""


@dataclass(frozen=True)
class WrappedSecret:
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, str]:
        return {k: base64.b64encode(v).decode() for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WrappedSecret:
        try:
            return cls(**{k: base64.b64decode(data[k], validate=True)
                          for k in ("ephemeral_public", "nonce", "ciphertext")})
        except (KeyError, ValueError, TypeError) as exc:
            raise UnwrapError(f"malformed wrapped secret: {exc}") from exc


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def _key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + recipient_public,
        info=INFO + context,
    ).derive(shared)


def wrap(secret: bytes, recipient_public: bytes, context: bytes) -> WrappedSecret:
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    ephemeral_public = public_bytes(ephemeral)
    key = _key(shared, ephemeral_public, recipient_public, context)
    nonce = os.urandom(12)
    return WrappedSecret(ephemeral_public, nonce, ChaCha20Poly1305(key).encrypt(nonce, secret,
                                                                                context))


def unwrap(wrapped: WrappedSecret, recipient_private: bytes, context: bytes) -> bytes:
    private = X25519PrivateKey.from_private_bytes(recipient_private)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(wrapped.ephemeral_public))
        key = _key(shared, wrapped.ephemeral_public, public_bytes(private), context)
        return ChaCha20Poly1305(key).decrypt(wrapped.nonce, wrapped.ciphertext, context)
    except (InvalidTag, ValueError) as exc:
        raise UnwrapError("the wrapped secret does not open with this key and context") from exc


def wrap_context(swarm: str, member: str, epoch: int) -> bytes:
    """The associated data every hand-over binds: contract, recipient, key epoch."""
    return f"{swarm.lower()}|{member.lower()}|{epoch}".encode()
