"""Key hand-over: HPKE wrap of the HE secret context to one member's X25519 key."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from apiary.core.keywrap import (
    ENC_BYTES,
    SUITE,
    UnwrapError,
    WrappedSecret,
    public_bytes,
    unwrap,
    wrap,
    wrap_context,
)

CONTRACT = "0x" + "Ab" * 20
MEMBER = "0x" + "cD" * 20
OTHER = "0x" + "ef" * 20
SECRET = bytes(range(256)) * 64 + b"the swarm's HE secret context"
NO_OPEN = "does not open with this key and context"


@pytest.fixture(scope="module")
def recipient() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture(scope="module")
def wrapped(recipient: X25519PrivateKey) -> WrappedSecret:
    return wrap(SECRET, public_bytes(recipient), wrap_context(CONTRACT, MEMBER, 3))


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_round_trip(recipient: X25519PrivateKey, wrapped: WrappedSecret) -> None:
    opened = unwrap(wrapped, recipient.private_bytes_raw(), wrap_context(CONTRACT, MEMBER, 3))
    assert opened == SECRET


def test_round_trip_through_json(recipient: X25519PrivateKey, wrapped: WrappedSecret) -> None:
    again = WrappedSecret.from_json(wrapped.to_json())
    assert again == wrapped
    assert unwrap(again, recipient.private_bytes_raw(), wrap_context(CONTRACT, MEMBER, 3)) == SECRET


def test_wire_format_is_hpke_enc_and_ciphertext(
    recipient: X25519PrivateKey, wrapped: WrappedSecret
) -> None:
    assert len(wrapped.ephemeral_public) == ENC_BYTES == 32
    assert wrapped.enc == wrapped.ephemeral_public
    assert wrapped.nonce == b""
    assert len(wrapped.ciphertext) == len(SECRET) + 16
    info = b"apiary/v2/key-wrap/hpke|" + wrap_context(CONTRACT, MEMBER, 3)
    assert SUITE.decrypt(wrapped.enc + wrapped.ciphertext, recipient, info=info) == SECRET


def test_every_wrap_uses_a_fresh_encapsulation(recipient: X25519PrivateKey) -> None:
    context = wrap_context(CONTRACT, MEMBER, 3)
    first = wrap(SECRET, public_bytes(recipient), context)
    second = wrap(SECRET, public_bytes(recipient), context)
    assert first.enc != second.enc
    assert first.ciphertext != second.ciphertext


def test_the_secret_never_appears_in_the_wrapped_bytes(wrapped: WrappedSecret) -> None:
    on_wire = wrapped.ephemeral_public + wrapped.nonce + wrapped.ciphertext
    as_json = str(wrapped.to_json())
    for probe in (SECRET, SECRET[:16], SECRET[-16:], b"the swarm's HE secret"):
        assert probe not in on_wire
    assert base64.b64encode(SECRET[:48]).decode() not in as_json


def test_wrong_recipient_key_is_refused(wrapped: WrappedSecret) -> None:
    other = X25519PrivateKey.generate()
    with pytest.raises(UnwrapError, match=NO_OPEN):
        unwrap(wrapped, other.private_bytes_raw(), wrap_context(CONTRACT, MEMBER, 3))


@pytest.mark.parametrize(
    "context",
    [
        wrap_context(OTHER, MEMBER, 3),
        wrap_context(CONTRACT, OTHER, 3),
        wrap_context(CONTRACT, MEMBER, 4),
        wrap_context(CONTRACT, MEMBER, 2),
        b"",
    ],
    ids=["other-contract", "other-member", "next-epoch", "earlier-epoch", "no-binding"],
)
def test_another_binding_is_refused(
    recipient: X25519PrivateKey, wrapped: WrappedSecret, context: bytes
) -> None:
    with pytest.raises(UnwrapError, match="another contract, member or epoch"):
        unwrap(wrapped, recipient.private_bytes_raw(), context)


def test_binding_ignores_address_case(recipient: X25519PrivateKey, wrapped: WrappedSecret) -> None:
    context = wrap_context(CONTRACT.upper().replace("0X", "0x"), MEMBER.lower(), 3)
    assert unwrap(wrapped, recipient.private_bytes_raw(), context) == SECRET


@pytest.mark.parametrize(
    "tamper",
    [
        lambda w: dataclasses.replace(w, ciphertext=flip(w.ciphertext, 0)),
        lambda w: dataclasses.replace(w, ciphertext=flip(w.ciphertext, len(w.ciphertext) // 2)),
        lambda w: dataclasses.replace(w, ciphertext=flip(w.ciphertext, -1)),
        lambda w: dataclasses.replace(w, ciphertext=w.ciphertext[:-1]),
        lambda w: dataclasses.replace(w, ciphertext=w.ciphertext + b"\x00"),
        lambda w: dataclasses.replace(w, ephemeral_public=flip(w.ephemeral_public, 0)),
        lambda w: dataclasses.replace(w, ephemeral_public=flip(w.ephemeral_public, 31)),
        lambda w: dataclasses.replace(w, ephemeral_public=bytes(32)),
    ],
    ids=["ct-first", "ct-middle", "ct-tag", "ct-truncated", "ct-extended", "enc-first",
         "enc-last", "enc-zero"],
)
def test_tampering_is_refused(
    recipient: X25519PrivateKey,
    wrapped: WrappedSecret,
    tamper: Callable[[WrappedSecret], WrappedSecret],
) -> None:
    with pytest.raises(UnwrapError, match=NO_OPEN):
        unwrap(tamper(wrapped), recipient.private_bytes_raw(), wrap_context(CONTRACT, MEMBER, 3))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ephemeral_public": b"\x01" * 31}, "encapsulated key is 31 bytes; expected 32"),
        ({"ephemeral_public": b""}, "encapsulated key is 0 bytes"),
        ({"ciphertext": b"\x00" * 15}, "shorter than its 16-byte tag"),
        ({"nonce": b"\x00" * 12}, "retired pre-HPKE format"),
    ],
)
def test_malformed_fields_are_refused_with_what_is_wrong(
    recipient: X25519PrivateKey, wrapped: WrappedSecret, change: dict, message: str
) -> None:
    with pytest.raises(UnwrapError, match=message):
        unwrap(dataclasses.replace(wrapped, **change), recipient.private_bytes_raw(),
               wrap_context(CONTRACT, MEMBER, 3))


@pytest.mark.parametrize(
    "data",
    [
        {"ephemeral_public": "AAAA", "nonce": ""},
        {"ephemeral_public": "not base64!", "nonce": "", "ciphertext": "AAAA"},
        {"ephemeral_public": None, "nonce": "", "ciphertext": "AAAA"},
    ],
)
def test_malformed_json_is_an_unwrap_error(data: dict) -> None:
    with pytest.raises(UnwrapError, match="malformed wrapped secret"):
        WrappedSecret.from_json(data)


def test_wrap_rejects_a_malformed_public_key() -> None:
    with pytest.raises(ValueError):
        wrap(SECRET, b"\x01" * 31, wrap_context(CONTRACT, MEMBER, 3))
