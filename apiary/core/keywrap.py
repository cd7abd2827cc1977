"""Hand a secret to one member: HPKE (RFC 9180) in base mode.

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305. Every wrap
encapsulates to the recipient's X25519 public key with a fresh ephemeral key, so only
the holder of the matching private key can unwrap. `context` (the swarm contract, the
recipient's address, the key epoch) goes into HPKE's ``info``, which enters the key
schedule: a wrapped key opened for another member, swarm or epoch fails authentication,
so it cannot be replayed there.

Wire format (`WrappedSecret`, unchanged field names): ``ephemeral_public`` holds HPKE's
encapsulated key ``enc`` (for DHKEM(X25519) that is the sender's ephemeral X25519 public
key, 32 bytes), ``ciphertext`` the AEAD output (secret plus 16-byte tag), and ``nonce``
is empty, as HPKE derives the nonce from the key schedule.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

INFO = b"apiary/v2/key-wrap/hpke|"
"""Prefix of HPKE's ``info``; the wrap context follows it."""

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
ENC_BYTES = KEM.X25519.enc_length()
TAG_BYTES = 16


class UnwrapError(ValueError):
    """The wrapped secret is not for this key, or was altered."""


@dataclass(frozen=True)
class WrappedSecret:
    ephemeral_public: bytes
    """HPKE's encapsulated key ``enc``."""
    nonce: bytes
    """Empty: HPKE derives the nonce. A non-empty one marks the retired pre-HPKE format."""
    ciphertext: bytes

    @property
    def enc(self) -> bytes:
        return self.ephemeral_public

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


def wrap(secret: bytes, recipient_public: bytes, context: bytes) -> WrappedSecret:
    sealed = SUITE.encrypt(secret, X25519PublicKey.from_public_bytes(recipient_public),
                           info=INFO + context)
    return WrappedSecret(sealed[:ENC_BYTES], b"", sealed[ENC_BYTES:])


def unwrap(wrapped: WrappedSecret, recipient_private: bytes, context: bytes) -> bytes:
    private = X25519PrivateKey.from_private_bytes(recipient_private)
    if wrapped.nonce:
        raise UnwrapError("the wrapped secret carries a nonce: it is in the retired pre-HPKE "
                          "format, which this node no longer opens")
    if len(wrapped.ephemeral_public) != ENC_BYTES:
        raise UnwrapError(f"the encapsulated key is {len(wrapped.ephemeral_public)} bytes; "
                          f"expected {ENC_BYTES}")
    if len(wrapped.ciphertext) < TAG_BYTES:
        raise UnwrapError(f"the wrapped ciphertext is {len(wrapped.ciphertext)} bytes, shorter "
                          f"than its {TAG_BYTES}-byte tag")
    try:
        return SUITE.decrypt(wrapped.ephemeral_public + wrapped.ciphertext, private,
                             info=INFO + context)
    except (InvalidTag, ValueError) as exc:
        raise UnwrapError(
            "the wrapped secret does not open with this key and context: it was wrapped to "
            "another key, bound to another contract, member or epoch, or altered"
        ) from exc


def wrap_context(swarm: str, member: str, epoch: int) -> bytes:
    """The binding every hand-over carries in HPKE's info: contract, recipient, key epoch."""
    return f"{swarm.lower()}|{member.lower()}|{epoch}".encode()
