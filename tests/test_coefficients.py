"""The coefficient arithmetic that node, coordinator and contract must agree on."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from apiary.core.coefficients import (
    BLOCK_BYTES,
    COEFFS_PER_BLOCK,
    MAX_WEIGHT_SUM,
    SLOTS_PER_BLOCK,
    MalformedCiphertext,
    _reduce_split,
    block_count,
    block_digest,
    block_from_bytes,
    block_to_bytes,
    weighted_sum,
    weights_from_sample_counts,
)

Q = 1152921504606748673  # CoeffModulus.Create(8192, [60, 60])[0]
U64_MAX = 2**64 - 1
MAX_W = 2**20 - 1
ZERO_BLOCK_KECCAK = "6387d10d3fe6d4fcb51c9f9caf0c34f88526afc3d0c6a2b80adfceeea2b4a701"


def random_blocks(rng: np.random.Generator, n: int, high: int = 2**64) -> np.ndarray:
    return rng.integers(0, high, size=(n, COEFFS_PER_BLOCK), dtype=np.uint64)


def reference_sum(blocks: np.ndarray, weights: list[int], modulus: int) -> list[int]:
    """Σ wᵢ·blocksᵢ mod q with Python big ints."""
    as_ints = blocks.astype(object)
    total = sum(w * row for w, row in zip(weights, as_ints, strict=True))
    return [int(v) % modulus for v in total]


def test_constants() -> None:
    assert COEFFS_PER_BLOCK == 16384
    assert BLOCK_BYTES == 131072
    assert BLOCK_BYTES // SLOTS_PER_BLOCK == 32


@pytest.mark.parametrize(
    ("length", "blocks"), [(1, 1), (4095, 1), (4096, 1), (4097, 2), (3 * 4096 + 5, 4)]
)
def test_block_count(length: int, blocks: int) -> None:
    assert block_count(length) == blocks


@pytest.mark.parametrize("length", [0, -1])
def test_block_count_rejects_empty(length: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        block_count(length)


def test_block_bytes_round_trip_and_big_endian() -> None:
    rng = np.random.default_rng(1)
    coeffs = random_blocks(rng, 1, Q)[0]
    coeffs[0] = 1
    coeffs[1] = Q - 1
    data = block_to_bytes(coeffs)
    assert len(data) == BLOCK_BYTES
    assert data[:8] == (1).to_bytes(8, "big")
    assert data[8:16] == (Q - 1).to_bytes(8, "big")
    back = block_from_bytes(data, Q)
    assert back.dtype == np.uint64
    assert np.array_equal(back, coeffs)


@pytest.mark.parametrize("size", [0, BLOCK_BYTES - 1, BLOCK_BYTES - 8, BLOCK_BYTES + 8])
def test_block_from_bytes_rejects_wrong_length(size: int) -> None:
    with pytest.raises(MalformedCiphertext, match=str(BLOCK_BYTES)):
        block_from_bytes(bytes(size), Q)


@pytest.mark.parametrize("bad", [Q, Q + 1, U64_MAX])
def test_block_from_bytes_rejects_unreduced_coefficient(bad: int) -> None:
    data = bytearray(BLOCK_BYTES)
    data[-8:] = bad.to_bytes(8, "big")
    with pytest.raises(MalformedCiphertext, match=f"coefficient {COEFFS_PER_BLOCK - 1}"):
        block_from_bytes(bytes(data), Q)


def test_block_to_bytes_rejects_wrong_array() -> None:
    with pytest.raises(ValueError, match="uint64"):
        block_to_bytes(np.zeros(COEFFS_PER_BLOCK, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        block_to_bytes(np.zeros(COEFFS_PER_BLOCK - 1, dtype=np.uint64))


def test_block_digest_is_keccak256() -> None:
    zero = bytes(BLOCK_BYTES)
    assert block_digest(zero).hex() == ZERO_BLOCK_KECCAK
    assert block_digest(zero) != hashlib.sha3_256(zero).digest()
    flipped = bytearray(zero)
    flipped[-1] = 1
    assert block_digest(bytes(flipped)) != block_digest(zero)
    with pytest.raises(MalformedCiphertext):
        block_digest(bytes(BLOCK_BYTES - 8))


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ([1], [1]),
        ([5, 7, 9], [5, 7, 9]),
        ([1, 1023], [1, 1023]),
        ([1024], [1024]),
        ([1, 1024], [1, 1023]),
        ([3000, 1000], [768, 256]),
        ([2048], [1024]),
        ([1, 10**6], [1, 1023]),
        ([1, 1, 10**9], [1, 1, 1023]),
        ([100, 5000, 20, 800], [17, 864, 3, 138]),
        ([513, 512], [512, 511]),
    ],
)
def test_weights_from_sample_counts(counts: list[int], weights: list[int]) -> None:
    assert weights_from_sample_counts(counts) == weights


def test_weights_stay_small() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        counts = [int(c) for c in rng.integers(1, 10**7, size=int(rng.integers(1, 50)))]
        weights = weights_from_sample_counts(counts)
        assert all(w >= 1 for w in weights)
        assert sum(weights) <= MAX_WEIGHT_SUM + len(counts)


@pytest.mark.parametrize("counts", [[], [0], [5, 0], [3, -1], [1.5], [True]])
def test_weights_reject_bad_counts(counts: list[object]) -> None:
    with pytest.raises(ValueError):
        weights_from_sample_counts(counts)  # type: ignore[arg-type]


def test_weighted_sum_exact_random_full_range() -> None:
    rng = np.random.default_rng(3)
    blocks = random_blocks(rng, 7)
    weights = [int(w) for w in rng.integers(0, 2**20, size=7)]
    out = weighted_sum(blocks, weights, Q)
    assert out.dtype == np.uint64
    assert out.shape == (COEFFS_PER_BLOCK,)
    assert [int(v) for v in out] == reference_sum(blocks, weights, Q)


def test_weighted_sum_exact_edge_values_256_inputs_max_weights() -> None:
    rng = np.random.default_rng(4)
    blocks = random_blocks(rng, 256)
    edges = np.array([0, 1, Q - 1, Q, Q + 1, 2**32 - 1, 2**32, 2**63, U64_MAX], dtype=np.uint64)
    blocks[:, : edges.size] = edges
    blocks[:, 100:200] = U64_MAX
    blocks[:, 200:300] = Q - 1
    blocks[:128, 300:400] = 0
    weights = [MAX_W] * 256
    weights[5] = 0
    out = weighted_sum(blocks, weights, Q)
    assert [int(v) for v in out] == reference_sum(blocks, weights, Q)


def test_weighted_sum_exact_near_multiples_of_q() -> None:
    """Single inputs k·q + d hit every boundary of the quotient estimate."""
    values = [k * Q + d for k in range(17) for d in (-2, -1, 0, 1, 2) if 0 <= k * Q + d <= U64_MAX]
    values += [U64_MAX - d for d in range(5)]
    block = np.zeros(COEFFS_PER_BLOCK, dtype=np.uint64)
    block[: len(values)] = values
    out = weighted_sum([block], [1], Q)
    assert [int(v) for v in out[: len(values)]] == [v % Q for v in values]
    out = weighted_sum([block, block], [MAX_W, 1], Q)
    assert [int(v) for v in out[: len(values)]] == [(MAX_W + 1) * v % Q for v in values]


@pytest.mark.parametrize("modulus", [Q, 2**31 - 1, 2**61 - 1, 2**62 - 1])
def test_reduction_at_quotient_boundaries(modulus: int) -> None:
    """x = k·q + d with d near 0 or q: where the float64 quotient estimate overshoots or
    undershoots by one and the ±q corrections are needed."""
    rng = np.random.default_rng(modulus % 1000)
    ks = [int(k) for k in rng.integers(0, 2**32, 2000)] + [0, 1, 2**32 - 1]
    offsets = [0, 1, 2, 2**20, modulus - 2**20, modulus - 2, modulus - 1]
    xs = [k * modulus + d for k in ks for d in offsets if (k * modulus + d) >> 32 < modulus]
    hi = np.array([x >> 32 for x in xs], dtype=np.uint64)
    lo = np.array([x & 0xFFFF_FFFF for x in xs], dtype=np.uint64)
    assert [int(v) for v in _reduce_split(hi, lo, modulus)] == [x % modulus for x in xs]


@pytest.mark.parametrize("modulus", [2, 3, 65537, 2**31 - 1, 2**61 - 1, 2**62 - 1])
def test_weighted_sum_exact_other_moduli(modulus: int) -> None:
    rng = np.random.default_rng(modulus)
    blocks = random_blocks(rng, 9)
    blocks[:, :3] = [0, modulus - 1, U64_MAX]
    weights = [int(w) for w in rng.integers(0, 2**20, size=9)]
    weights[0] = MAX_W
    out = weighted_sum(blocks, weights, modulus)
    assert [int(v) for v in out] == reference_sum(blocks, weights, modulus)


def test_weighted_sum_largest_total_weight() -> None:
    blocks = np.full((2, COEFFS_PER_BLOCK), U64_MAX, dtype=np.uint64)
    weights = [2**31, 2**31]
    out = weighted_sum(blocks, weights, Q)
    assert int(out[0]) == (2**32 * U64_MAX) % Q
    with pytest.raises(ValueError, match="sum of weights"):
        weighted_sum(blocks, [2**31, 2**31 + 1], Q)


def test_weighted_sum_accepts_list_and_leaves_inputs_alone() -> None:
    rng = np.random.default_rng(5)
    blocks = random_blocks(rng, 3)
    copies = blocks.copy()
    from_matrix = weighted_sum(blocks, [1, 2, 3], Q)
    from_list = weighted_sum(list(blocks), [1, 2, 3], Q)
    assert np.array_equal(from_matrix, from_list)
    assert np.array_equal(blocks, copies)


def test_weighted_sum_validates_inputs() -> None:
    ok = np.zeros(COEFFS_PER_BLOCK, dtype=np.uint64)
    with pytest.raises(ValueError, match="weight"):
        weighted_sum([ok, ok], [1], Q)
    with pytest.raises(ValueError, match="at least one block"):
        weighted_sum([], [], Q)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_sum([ok, ok], [1, -1], Q)
    with pytest.raises(ValueError, match="integer"):
        weighted_sum([ok], [1.5], Q)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="shape"):
        weighted_sum([ok, ok[:-1]], [1, 1], Q)
    with pytest.raises(ValueError, match="shape"):
        weighted_sum(np.zeros((2, 100), dtype=np.uint64), [1, 1], Q)
    with pytest.raises(ValueError, match="uint64"):
        weighted_sum([ok.astype(np.int64)], [1], Q)
    with pytest.raises(ValueError, match="modulus"):
        weighted_sum([ok], [1], 2**62)
    with pytest.raises(ValueError, match="modulus"):
        weighted_sum([ok], [1], 1)


def test_weighted_sum_is_vectorised() -> None:
    """A loose floor (the target is 20 M/s) that a per-coefficient Python loop cannot reach."""
    rng = np.random.default_rng(6)
    blocks = random_blocks(rng, 5)
    weights = [3, 5, 7, 11, 13]
    weighted_sum(blocks, weights, Q)
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        weighted_sum(blocks, weights, Q)
    rate = rounds * blocks.size / (time.perf_counter() - start)
    assert rate > 5e6
