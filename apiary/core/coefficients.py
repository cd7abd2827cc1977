"""Coefficient-domain arithmetic on CKKS ciphertext blocks.

A block is one TenSEAL CKKS ciphertext at data level: two polynomials of degree
``POLY_DEGREE`` over a single 60-bit prime q, i.e. ``COEFFS_PER_BLOCK`` integers in
[0, q). On the wire a block is those integers as big-endian u64, so that the EVM reads
four of them per 32-byte word. CKKS addition and multiplication by a small integer are
linear in these coefficients, so Σ wᵢ·ctᵢ mod q, computed coefficient-wise, decrypts to
Σ wᵢ·xᵢ. This module is the reference for that arithmetic (node, coordinator and the
contract's tests all check against it) and has no dependency on TenSEAL.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
from eth_utils import keccak

from apiary.core.errors import ApiaryError

POLY_DEGREE = 8192
SLOTS_PER_BLOCK = 4096
COEFFS_PER_BLOCK = 2 * POLY_DEGREE
BLOCK_BYTES = COEFFS_PER_BLOCK * 8
MAX_WEIGHT_SUM = 1024

MAX_TOTAL_WEIGHT = 2**32
"""Largest Σw that `weighted_sum` accepts: Σ wᵢ·(2^32 − 1) must stay below 2^64."""

MAX_MODULUS = 2**62
"""Exclusive bound on q for `weighted_sum`: the final correction needs 2q < 2^63."""

_BIG_ENDIAN_U64 = np.dtype(">u8")
_LOW_32 = np.uint64(0xFFFF_FFFF)
_SHIFT_32 = np.uint64(32)


class MalformedCiphertext(ApiaryError, ValueError):
    """A ciphertext block does not have the shape or value range of a data-level block."""


def block_count(length: int) -> int:
    """Number of blocks that hold a vector of ``length`` parameters."""
    length = operator.index(length)
    if length < 1:
        raise ValueError(f"vector length must be at least 1, got {length}")
    return -(-length // SLOTS_PER_BLOCK)


def block_to_bytes(coeffs: np.ndarray) -> bytes:
    """Serialise one block of coefficients as ``BLOCK_BYTES`` big-endian u64 bytes."""
    _check_block_array(coeffs, "block")
    return coeffs.astype(_BIG_ENDIAN_U64, copy=False).tobytes()


def block_from_bytes(data: bytes, modulus: int) -> np.ndarray:
    """Parse a wire block into a uint64 array, checking its length and that every
    coefficient is reduced modulo ``modulus``."""
    _check_block_length(data)
    coeffs = np.frombuffer(data, dtype=_BIG_ENDIAN_U64).astype(np.uint64)
    q = np.uint64(_check_modulus(modulus, bound=2**64))
    bad = np.flatnonzero(coeffs >= q)
    if bad.size:
        first = int(bad[0])
        raise MalformedCiphertext(
            f"{bad.size} coefficient(s) are not reduced modulo q={modulus}: "
            f"coefficient {first} is {int(coeffs[first])}; expected every value in [0, q)"
        )
    return coeffs


def block_digest(data: bytes) -> bytes:
    """keccak256 of a block's wire bytes (what a node commits to on chain)."""
    _check_block_length(data)
    return keccak(bytes(data))


def weights_from_sample_counts(counts: Sequence[int]) -> list[int]:
    """Integer weights for the on-chain weighted sum, from members' sample counts.

    The contract applies the same rule, so the two must agree exactly: the counts
    themselves when they sum to at most ``MAX_WEIGHT_SUM``, otherwise each count scaled
    to ``MAX_WEIGHT_SUM`` with floor division and floored at 1, so that Σw stays small
    enough for the CKKS plaintext not to wrap around q.
    """
    values = [_as_int(c, "sample count") for c in counts]
    if not values:
        raise ValueError("need at least one sample count")
    for i, count in enumerate(values):
        if count < 1:
            raise ValueError(f"sample count {i} is {count}; every count must be at least 1")
    total = sum(values)
    if total <= MAX_WEIGHT_SUM:
        return values
    return [max(1, (count * MAX_WEIGHT_SUM) // total) for count in values]


def weighted_sum(
    blocks: np.ndarray | Sequence[np.ndarray], weights: Sequence[int], modulus: int
) -> np.ndarray:
    """Exact Σ wᵢ·blocksᵢ mod q, coefficient-wise.

    Coefficients may be any uint64 (not only values below q), weights any non-negative
    integers with Σw ≤ ``MAX_TOTAL_WEIGHT`` (which covers 256 inputs of weight < 2^20),
    and q any modulus in [2, ``MAX_MODULUS``). Returns a uint64 array of values in [0, q).

    Each coefficient is split into 32-bit halves so that Σw·hi and Σw·lo are exact in
    uint64. Both are reduced mod q, leaving h, l < q and x = h·2^32 + l < 2^32·q + q.
    The quotient x // q is below 2^32 + 1, so a float64 estimate of it is off by at most
    one; the remainder x − est·q is then computed exactly in wrapping uint64 arithmetic
    and lies in [−q, 2q), which a single ±q correction brings into [0, q).
    """
    q = _check_modulus(modulus, bound=MAX_MODULUS)
    matrix = _stack_blocks(blocks)
    w = _check_weights(weights, matrix.shape[0])
    return _reduce_split(w @ (matrix >> _SHIFT_32), w @ (matrix & _LOW_32), q)


def _reduce_split(hi_sum: np.ndarray, lo_sum: np.ndarray, q: int) -> np.ndarray:
    """(hi_sum·2^32 + lo_sum) mod q for uint64 arrays, q < ``MAX_MODULUS``."""
    q_u = np.uint64(q)
    h = hi_sum % q_u
    lo = lo_sum % q_u
    estimate = (h.astype(np.float64) * 4294967296.0 + lo.astype(np.float64)) / float(q)
    quotient = np.floor(estimate).astype(np.uint64)
    remainder = ((h << _SHIFT_32) + lo - quotient * q_u).view(np.int64)
    q_i = np.int64(q)
    remainder = np.where(remainder < 0, remainder + q_i, remainder)
    remainder = np.where(remainder >= q_i, remainder - q_i, remainder)
    return remainder.view(np.uint64)


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _check_modulus(modulus: int, bound: int) -> int:
    q = _as_int(modulus, "modulus")
    if not 2 <= q < bound:
        raise ValueError(f"modulus must be in [2, 2^{bound.bit_length() - 1}), got {q}")
    return q


def _check_block_length(data: bytes) -> None:
    if len(data) != BLOCK_BYTES:
        raise MalformedCiphertext(
            f"ciphertext block is {len(data)} bytes; expected {BLOCK_BYTES} "
            f"({COEFFS_PER_BLOCK} big-endian u64 coefficients)"
        )


def _check_block_array(coeffs: object, what: str) -> None:
    if not isinstance(coeffs, np.ndarray):
        raise ValueError(f"{what} must be a numpy uint64 array, got {type(coeffs).__name__}")
    if coeffs.dtype != np.uint64:
        raise ValueError(f"{what} must have dtype uint64, got {coeffs.dtype}")
    if coeffs.shape != (COEFFS_PER_BLOCK,):
        raise ValueError(f"{what} must have shape ({COEFFS_PER_BLOCK},), got {coeffs.shape}")


def _stack_blocks(blocks: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(blocks, np.ndarray):
        if blocks.dtype != np.uint64:
            raise ValueError(f"blocks must have dtype uint64, got {blocks.dtype}")
        if blocks.ndim != 2 or blocks.shape[1] != COEFFS_PER_BLOCK:
            raise ValueError(f"blocks must have shape (n, {COEFFS_PER_BLOCK}), got {blocks.shape}")
        matrix = blocks
    else:
        items = list(blocks)
        for i, block in enumerate(items):
            _check_block_array(block, f"block {i}")
        matrix = np.stack(items) if items else np.empty((0, COEFFS_PER_BLOCK), np.uint64)
    if matrix.shape[0] == 0:
        raise ValueError("weighted_sum needs at least one block")
    return matrix


def _check_weights(weights: Sequence[int], n: int) -> np.ndarray:
    values = [_as_int(w, "weight") for w in weights]
    if len(values) != n:
        raise ValueError(f"got {n} block(s) but {len(values)} weight(s); need one per block")
    for i, w in enumerate(values):
        if w < 0:
            raise ValueError(f"weight {i} is {w}; weights must be non-negative")
    total = sum(values)
    if total > MAX_TOTAL_WEIGHT:
        raise ValueError(f"sum of weights is {total}; at most 2^32 keeps the arithmetic exact")
    return np.array(values, dtype=np.uint64)
