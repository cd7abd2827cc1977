"""CKKS encryption of flat weight vectors, as raw ciphertext coefficient blocks.

TenSEAL has no writable coefficient buffer, so this codec goes through its
serialisation: ``CKKSVector.serialize()`` is a ``CKKSVectorProto`` protobuf (TenSEAL's own
message, ``proto/tenseal.proto``) whose one ciphertext is SEAL's own format::

    SEALHeader (16 B)   magic 0xA15E, header size, version major/minor,
                        compression mode (0 none, 1 zlib, 2 zstd), reserved, total size
    then, compressed as a whole according to the header:
    parms_id (32 B), is_ntt_form (1 B), size, poly_modulus_degree, coeff_modulus_size
    (u64 each), scale (f64), correction_factor (u64),
    DynArray: its own SEALHeader (never compressed), u64 count, count × u64 coefficients

all little-endian. `to_coefficients` parses that; `from_coefficients` writes it back
uncompressed, which SEAL loads as is.

The container is read with the generated stub (`apiary.wire.tenseal_pb2`) but written by
hand (`_vector_bytes`: three fields, numbered from the stub's descriptor; a test checks the
bytes equal the stub's). `from_coefficients` runs once per block per round on every node,
and building the container with the stub made it measurably slower: +4 to +8 µs per block
on 61-67 µs (+5 to +13 %, slower in 52-59 of 61 interleaved pairs of 100 calls; separate
runs of 21 × 200 calls gave 75-77 against 60-63 µs; 2 shared cores, load 0.9-1.2). Reading
through the stub costs +2 to +3 µs on 196-209 µs per `to_coefficients` (+1 to +3 %), most
of it TenSEAL's own serialisation and zstd, and 0.1 % of encrypting a block (~3 ms).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
import zstandard
from eth_utils import keccak
from google.protobuf.message import DecodeError

from apiary.core.coefficients import (
    COEFFS_PER_BLOCK,
    SLOTS_PER_BLOCK,
    MalformedCiphertext,
    block_count,
    block_from_bytes,
    block_to_bytes,
)
from apiary.wire.tenseal_pb2 import CKKSVectorProto, TenSEALContextProto

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 60)
GLOBAL_SCALE = 2.0**40

MAX_ABS_VALUE = 256.0
"""Largest |x| `HEContext.encrypt` accepts. A weighted sum decrypts correctly only while
|Σ wᵢ·xᵢ|·scale stays below q/2 ≈ 2^59, i.e. |Σ wᵢ·xᵢ| < 2^19; with Σw at most about
1024 + one per member, inputs bounded by 256 keep well inside that."""

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_CT_META = struct.Struct("<32sBQQQdQ")
_COUNT = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
_WIRE_I64, _WIRE_LEN = 1, 2
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2
_COEFF_OFFSET = _CT_META.size + _SEAL_HEADER.size + _COUNT.size
_BODY_SIZE = _COEFF_OFFSET + COEFFS_PER_BLOCK * 8


class SecretKeyRequired(RuntimeError):
    """Raised when decrypting with a context that holds only the public key."""


class _SealCiphertext(NamedTuple):
    """The fields of a serialised SEAL ciphertext that the codec checks or reuses."""

    version: tuple[int, int]
    parms_id: bytes
    is_ntt_form: int
    size: int
    poly_modulus_degree: int
    coeff_modulus_size: int
    scale: float
    coeffs: np.ndarray


class HEContext:
    """The swarm's CKKS context: N = 8192, one 60-bit data prime, scale 2^40.

    Build it with `create` or `from_bytes`. A context without the secret key (what the
    coordinator and the chain side hold) can encrypt but not decrypt.
    """

    def __init__(self, context: ts.Context) -> None:
        _check_parameters(context)
        if not context.has_public_key():
            raise ValueError("the TenSEAL context has no public key, so it cannot encrypt")
        context.global_scale = GLOBAL_SCALE
        self._context = context
        self._encrypting = _symmetric_twin(context) if context.has_secret_key() else context
        seal = context.seal_context().data
        self._modulus = int(seal.first_context_data().parms().coeff_modulus()[0].value())
        self._parms_id = struct.pack("<4Q", *seal.first_parms_id())
        probe = _parse_vector(ts.ckks_vector(context, [0.0]).serialize())
        if probe.parms_id != self._parms_id:
            raise ValueError("TenSEAL ciphertexts are not at the expected data level")
        self._seal_version = probe.version

    @classmethod
    def create(cls) -> HEContext:
        """A fresh context with new keys, secret key included."""
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=POLY_MODULUS_DEGREE,
            coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
        )
        return cls(context)

    @classmethod
    def from_bytes(cls, data: bytes) -> HEContext:
        """Load a context serialised by `public_bytes` or `secret_bytes`."""
        try:
            context = ts.context_from(bytes(data))
        except Exception as exc:
            raise ValueError(f"not a serialised TenSEAL context: {exc}") from None
        return cls(context)

    def public_digest(self) -> bytes:
        """keccak256 of the public context: what the chain records for a key epoch."""
        return keccak(self.public_bytes())

    def public_bytes(self) -> bytes:
        """The context with the public key only: safe to hand to anyone."""
        return self._context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def secret_bytes(self) -> bytes:
        """The context with the secret key: only for members, and only wrapped."""
        if not self.has_secret_key:
            raise SecretKeyRequired("this context holds no secret key to serialise")
        return self._context.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    @property
    def has_secret_key(self) -> bool:
        return bool(self._context.has_secret_key())

    @property
    def modulus(self) -> int:
        """q, the single 60-bit prime of a data-level ciphertext."""
        return self._modulus

    @property
    def tenseal_context(self) -> ts.Context:
        """The wrapped TenSEAL context (it holds the secret key if this one does)."""
        return self._context

    def __repr__(self) -> str:
        return f"HEContext(has_secret_key={self.has_secret_key}, modulus={self._modulus})"

    def encrypt(self, vector: np.ndarray) -> list[bytes]:
        """Encrypt a flat float vector as wire blocks of `SLOTS_PER_BLOCK` slots each;
        the last block is zero-padded."""
        values = np.asarray(vector, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"expected a flat (1-D) vector, got shape {values.shape}")
        n_blocks = block_count(values.size)
        if not np.all(np.isfinite(values)):
            raise ValueError("vector contains NaN or infinite values")
        peak = float(np.max(np.abs(values)))
        if peak > MAX_ABS_VALUE:
            raise ValueError(
                f"vector has a value of magnitude {peak:g}; CKKS weighted sums stay exact "
                f"only for |x| <= {MAX_ABS_VALUE:g}"
            )
        padded = np.zeros(n_blocks * SLOTS_PER_BLOCK, dtype=np.float64)
        padded[: values.size] = values
        blocks = []
        for chunk in padded.reshape(n_blocks, SLOTS_PER_BLOCK):
            encrypted = ts.ckks_vector(self._encrypting, chunk.tolist())
            blocks.append(block_to_bytes(self.to_coefficients(encrypted)))
        return blocks

    def decrypt(self, blocks: Sequence[bytes], length: int) -> np.ndarray:
        """Decrypt wire blocks back to the first ``length`` values (float64)."""
        if not self.has_secret_key:
            raise SecretKeyRequired(
                "this context holds only the public key; decrypting needs the swarm's secret key"
            )
        expected = block_count(length)
        if len(blocks) != expected:
            raise ValueError(
                f"got {len(blocks)} ciphertext block(s) for {length} values; expected {expected}"
            )
        out = np.empty(expected * SLOTS_PER_BLOCK, dtype=np.float64)
        for i, block in enumerate(blocks):
            coeffs = block_from_bytes(block, self._modulus)
            plain = self.from_coefficients(coeffs).decrypt()
            out[i * SLOTS_PER_BLOCK : (i + 1) * SLOTS_PER_BLOCK] = plain
        return out[:length]

    def to_coefficients(self, vec: ts.CKKSVector) -> np.ndarray:
        """The raw coefficients (uint64, shape (`COEFFS_PER_BLOCK`,)) of a fresh,
        data-level CKKS vector of at most `SLOTS_PER_BLOCK` slots."""
        ct = _parse_vector(vec.serialize())
        self._check_layout(ct)
        return ct.coeffs

    def from_coefficients(self, coeffs: np.ndarray) -> ts.CKKSVector:
        """A CKKS vector (`SLOTS_PER_BLOCK` slots) holding the given coefficients."""
        if not isinstance(coeffs, np.ndarray) or coeffs.dtype != np.uint64:
            raise ValueError("coefficients must be a numpy uint64 array")
        if coeffs.shape != (COEFFS_PER_BLOCK,):
            raise MalformedCiphertext(
                f"got {coeffs.shape} coefficients; expected ({COEFFS_PER_BLOCK},)"
            )
        if np.any(coeffs >= np.uint64(self._modulus)):
            raise MalformedCiphertext(
                f"coefficients are not reduced modulo q={self._modulus}; "
                "expected every value in [0, q)"
            )
        major, minor = self._seal_version
        body = b"".join(
            (
                _CT_META.pack(self._parms_id, 1, 2, POLY_MODULUS_DEGREE, 1, GLOBAL_SCALE, 1),
                _SEAL_HEADER.pack(
                    _SEAL_MAGIC,
                    _SEAL_HEADER.size,
                    major,
                    minor,
                    _COMPR_NONE,
                    0,
                    _SEAL_HEADER.size + _COUNT.size + COEFFS_PER_BLOCK * 8,
                ),
                _COUNT.pack(COEFFS_PER_BLOCK),
                coeffs.astype("<u8", copy=False).tobytes(),
            )
        )
        header = _SEAL_HEADER.pack(
            _SEAL_MAGIC,
            _SEAL_HEADER.size,
            major,
            minor,
            _COMPR_NONE,
            0,
            _SEAL_HEADER.size + len(body),
        )
        return ts.ckks_vector_from(self._context, _vector_bytes(header + body))

    def _check_layout(self, ct: _SealCiphertext) -> None:
        problems = []
        if ct.parms_id != self._parms_id:
            problems.append("parms_id is not this context's data level")
        if ct.size != 2:
            problems.append(f"{ct.size} polynomials instead of 2")
        if ct.poly_modulus_degree != POLY_MODULUS_DEGREE:
            problems.append(f"degree {ct.poly_modulus_degree} instead of {POLY_MODULUS_DEGREE}")
        if ct.coeff_modulus_size != 1:
            problems.append(f"{ct.coeff_modulus_size} primes instead of 1")
        if ct.is_ntt_form != 1:
            problems.append("not in NTT form")
        if ct.scale != GLOBAL_SCALE:
            problems.append(f"scale {ct.scale} instead of 2^40")
        if problems:
            raise MalformedCiphertext(
                "not a fresh data-level ciphertext of this context: " + "; ".join(problems)
            )


def _check_parameters(context: ts.Context) -> None:
    """Refuse a context whose parameters differ from the swarm's."""
    seal = context.seal_context().data
    parms = seal.key_context_data().parms()
    expected = [
        m.value() for m in sealapi.CoeffModulus.Create(POLY_MODULUS_DEGREE, COEFF_MOD_BIT_SIZES)
    ]
    primes = [m.value() for m in parms.coeff_modulus()]
    data_primes = [m.value() for m in seal.first_context_data().parms().coeff_modulus()]
    if (
        parms.scheme().name != "CKKS"
        or parms.poly_modulus_degree() != POLY_MODULUS_DEGREE
        or primes != expected
        or data_primes != expected[:1]
    ):
        raise ValueError(
            f"context parameters differ from the swarm's: expected CKKS, "
            f"N={POLY_MODULUS_DEGREE}, primes {expected}; got {parms.scheme().name}, "
            f"N={parms.poly_modulus_degree()}, primes {primes}"
        )


def _parse_vector(data: bytes) -> _SealCiphertext:
    """Parse a serialised single-ciphertext `CKKSVectorProto`."""
    try:
        proto = CKKSVectorProto.FromString(data)
    except DecodeError as exc:
        raise MalformedCiphertext(f"not a CKKSVector protobuf: {exc}") from None
    if len(proto.ciphertexts) != 1:
        raise MalformedCiphertext(
            f"CKKS vector holds {len(proto.ciphertexts)} ciphertexts; expected exactly 1"
        )
    return _parse_seal_ciphertext(proto.ciphertexts[0])


def _parse_seal_ciphertext(blob: bytes) -> _SealCiphertext:
    if len(blob) < _SEAL_HEADER.size:
        raise MalformedCiphertext("SEAL ciphertext shorter than its header")
    magic, header_size, major, minor, compression, _, size = _SEAL_HEADER.unpack_from(blob)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or size != len(blob):
        raise MalformedCiphertext("SEAL ciphertext header is invalid")
    body = _decompress(blob[_SEAL_HEADER.size :], compression)
    if len(body) != _BODY_SIZE:
        raise MalformedCiphertext(
            f"SEAL ciphertext body is {len(body)} bytes; expected {_BODY_SIZE} "
            f"(one prime, two polynomials of degree {POLY_MODULUS_DEGREE})"
        )
    parms_id, ntt, n_polys, degree, n_primes, scale, _ = _CT_META.unpack_from(body)
    d_magic, d_header, _, _, d_compression, _, d_size = _SEAL_HEADER.unpack_from(
        body, _CT_META.size
    )
    (count,) = _COUNT.unpack_from(body, _CT_META.size + _SEAL_HEADER.size)
    if (
        d_magic != _SEAL_MAGIC
        or d_header != _SEAL_HEADER.size
        or d_compression != _COMPR_NONE
        or count != COEFFS_PER_BLOCK
        or d_size != _SEAL_HEADER.size + _COUNT.size + count * 8
    ):
        raise MalformedCiphertext("SEAL coefficient array header is invalid")
    coeffs = np.frombuffer(body, dtype="<u8", count=count, offset=_COEFF_OFFSET)
    return _SealCiphertext(
        version=(major, minor),
        parms_id=parms_id,
        is_ntt_form=ntt,
        size=n_polys,
        poly_modulus_degree=degree,
        coeff_modulus_size=n_primes,
        scale=scale,
        coeffs=coeffs.astype(np.uint64),
    )


def _decompress(data: bytes, compression: int) -> bytes:
    try:
        if compression == _COMPR_NONE:
            return data
        if compression == _COMPR_ZLIB:
            return zlib.decompress(data)
        if compression == _COMPR_ZSTD:
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=_BODY_SIZE)
    except (zlib.error, zstandard.ZstdError) as exc:
        raise MalformedCiphertext(f"cannot decompress SEAL ciphertext: {exc}") from None
    raise MalformedCiphertext(f"unknown SEAL compression mode {compression}")


def _vector_bytes(ciphertext: bytes) -> bytes:
    """The `CKKSVectorProto` of one ciphertext of `SLOTS_PER_BLOCK` slots at `GLOBAL_SCALE`:
    the bytes ``CKKSVectorProto(...).SerializeToString()`` gives, built faster."""
    return b"".join(
        (
            _field_bytes(CKKSVectorProto.SIZES_FIELD_NUMBER, _varint(SLOTS_PER_BLOCK)),
            _field_bytes(CKKSVectorProto.CIPHERTEXTS_FIELD_NUMBER, ciphertext),
            _key(CKKSVectorProto.SCALE_FIELD_NUMBER, _WIRE_I64) + _DOUBLE.pack(GLOBAL_SCALE),
        )
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _field_bytes(field: int, payload: bytes) -> bytes:
    return _key(field, _WIRE_LEN) + _varint(len(payload)) + payload


def _symmetric_twin(context: ts.Context) -> ts.Context:
    """A copy of a secret context that encrypts with the secret key instead of the public one.

    Every member holds the swarm's secret key, and SEAL's secret-key encryption (a fresh
    uniform c1, c0 = −c1·s + m + e) is as secure as public-key encryption but needs about half
    the work (no encryption of zero under the public key, one error polynomial less): it is
    the larger part of a round's local cost at a million parameters. The ciphertexts have the
    same form and decrypt with the same key; the public context, its digest on chain and the
    coordinator are unchanged. TenSEAL sets the encryption type only when a context is made,
    so the copy is the same serialised context with that one field changed.
    """
    proto = TenSEALContextProto.FromString(context.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False,
        save_relin_keys=False))
    proto.encryption_type = int(ts.ENCRYPTION_TYPE.SYMMETRIC.value)
    twin = ts.context_from(proto.SerializeToString())
    twin.global_scale = GLOBAL_SCALE
    return twin
