"""Pairwise masks on ciphertext coefficients: they cancel in the weighted sum, and only there."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from eth_utils import to_checksum_address

from apiary.core.coefficients import (
    BLOCK_BYTES,
    COEFFS_PER_BLOCK,
    block_from_bytes,
    block_to_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.errors import ApiaryError
from apiary.core.he import HEContext
from apiary.core.masking import (
    STREAM_INFO,
    SWARM_MODULUS,
    Masker,
    MaskingError,
    MaskSet,
    bench_masking,
    expand_seed,
    pair_seed,
    stream_key,
)

Q = SWARM_MODULUS
CONTRACT = "0x" + "5e" * 20
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


class Member:
    """A deterministic member: address and X25519 key pair from its number."""

    def __init__(self, n: int) -> None:
        self.private = X25519PrivateKey.from_private_bytes(
            hashlib.sha256(f"member {n}".encode()).digest()
        )
        self.private_raw = self.private.private_bytes_raw()
        self.public_raw = self.private.public_key().public_bytes_raw()
        self.address = "0x" + hashlib.sha256(f"address {n}".encode()).hexdigest()[:40]


def members(n: int, first: int = 0) -> list[Member]:
    return [Member(i) for i in range(first, first + n)]


def directory(group: list[Member]) -> dict[str, bytes]:
    return {m.address: m.public_raw for m in group}


def masker_for(member: Member, group: list[Member]) -> Masker:
    return Masker(member.address, member.private_raw, directory(group), CONTRACT, Q)


def random_blocks(rng: np.random.Generator, n_blocks: int) -> list[np.ndarray]:
    return list(rng.integers(0, Q, size=(n_blocks, COEFFS_PER_BLOCK), dtype=np.uint64))


def chi_square_16(values: np.ndarray, modulus: int) -> float:
    """χ² of values in [0, q) over 16 equal-width bins (15 degrees of freedom)."""
    bins = np.minimum((values.astype(np.float64) / modulus * 16).astype(np.int64), 15)
    counts = np.bincount(bins, minlength=16)
    expected = values.size / 16
    return float(np.sum((counts - expected) ** 2 / expected))


def reference_expand(seed: bytes, round_: int, attempt: int, block: int, q: int) -> list[int]:
    """The documented expansion, word by word: the first accepted low-k-bit words of the
    AES-256-CTR keystream of block ``block`` under the per-(round, attempt) key."""
    key = HKDFExpand(
        hashes.SHA256(), 32, STREAM_INFO + round_.to_bytes(8, "big") + attempt.to_bytes(4, "big")
    ).derive(seed)
    nonce = block.to_bytes(8, "big") + bytes(8)
    stream = (
        Cipher(algorithms.AES(key), modes.CTR(nonce))
        .encryptor()
        .update(bytes(8 * 4 * COEFFS_PER_BLOCK))
    )
    k = q.bit_length()
    out = []
    for offset in range(0, len(stream), 8):
        word = int.from_bytes(stream[offset : offset + 8], "little") & ((1 << k) - 1)
        if word < q:
            out.append(word)
            if len(out) == COEFFS_PER_BLOCK:
                return out
    raise AssertionError("reference keystream too short")


# Pair seeds


def test_pair_seed_is_symmetric() -> None:
    a, b = members(2)
    ab = pair_seed(a.private_raw, b.public_raw, a.address, b.address, CONTRACT)
    ba = pair_seed(b.private_raw, a.public_raw, b.address, a.address, CONTRACT)
    assert ab == ba
    assert len(ab) == 32


def test_pair_seed_is_bound_to_pair_contract_and_addresses() -> None:
    a, b, c = members(3)
    ab = pair_seed(a.private_raw, b.public_raw, a.address, b.address, CONTRACT)
    assert ab != pair_seed(a.private_raw, c.public_raw, a.address, c.address, CONTRACT)
    assert ab != pair_seed(a.private_raw, b.public_raw, a.address, b.address, "0x" + "11" * 20)
    assert ab != pair_seed(a.private_raw, b.public_raw, a.address, c.address, CONTRACT)


def test_pair_seed_ignores_address_capitalisation() -> None:
    a, b = members(2)
    lower = pair_seed(a.private_raw, b.public_raw, a.address, b.address, CONTRACT)
    checksummed = pair_seed(
        a.private_raw,
        b.public_raw,
        to_checksum_address(a.address),
        b.address.upper().replace("0X", "0x"),
        to_checksum_address(CONTRACT),
    )
    assert lower == checksummed


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=["zero", "one", "order-8"])
def test_pair_seed_rejects_low_order_public_key(point: bytes) -> None:
    a, b = members(2)
    with pytest.raises(MaskingError, match="low-order"):
        pair_seed(a.private_raw, point, a.address, b.address, CONTRACT)


def test_pair_seed_rejects_bad_keys_and_addresses() -> None:
    a, b = members(2)
    with pytest.raises(MaskingError, match="32 raw bytes"):
        pair_seed(a.private_raw, b.public_raw[:31], a.address, b.address, CONTRACT)
    with pytest.raises(MaskingError, match="32 raw bytes"):
        pair_seed(a.private_raw + b"\0", b.public_raw, a.address, b.address, CONTRACT)
    with pytest.raises(MaskingError, match="20-byte hex address"):
        pair_seed(a.private_raw, b.public_raw, a.address[:-1], b.address, CONTRACT)
    with pytest.raises(MaskingError, match="a pair needs two members"):
        pair_seed(a.private_raw, b.public_raw, a.address, to_checksum_address(a.address), CONTRACT)


# Expansion


@pytest.mark.parametrize("q", [Q, 5, 2**40 + 15])
def test_expansion_follows_the_documented_construction(q: int) -> None:
    seed = hashlib.sha256(b"seed").digest()
    stream = expand_seed(seed, 7, 2, 3, q)
    assert stream.dtype == np.uint64
    assert stream.shape == (COEFFS_PER_BLOCK,)
    assert stream.tolist() == reference_expand(seed, 7, 2, 3, q)


def test_expansion_differs_per_round_attempt_and_block() -> None:
    seed = hashlib.sha256(b"seed").digest()
    base = expand_seed(seed, 7, 2, 3, Q)
    for other in [(8, 2, 3), (7, 3, 3), (7, 2, 4), (7, 2, 2), (2**32 + 7, 2, 3)]:
        assert np.count_nonzero(expand_seed(seed, *other, Q) == base) == 0
    assert np.array_equal(expand_seed(seed, 7, 2, 3, Q), base)


def test_stream_keys_differ_per_round_and_attempt() -> None:
    seed = hashlib.sha256(b"seed").digest()
    keys = {stream_key(seed, r, a) for r in range(4) for a in range(4)}
    assert len(keys) == 16


def test_expansion_is_uniform() -> None:
    seed = hashlib.sha256(b"uniform").digest()
    values = np.concatenate([expand_seed(seed, 1, 0, b, Q) for b in range(4)])
    assert int(values.max()) < Q
    assert chi_square_16(values, Q) < 50.0
    assert abs(float(values.astype(np.float64).mean()) / Q - 0.5) < 0.01


# Cancellation


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_masks_cancel_exactly_in_the_weighted_sum(n: int) -> None:
    rng = np.random.default_rng(n)
    group = members(n)
    counts = rng.integers(1, 400, size=n).tolist()
    weights = weights_from_sample_counts(counts)
    mask_set = MaskSet(tuple(m.address for m in group), tuple(weights), round=11, attempt=0)
    n_blocks = 3
    cts = [random_blocks(rng, n_blocks) for _ in group]
    masked = [masker_for(m, group).mask(ct, mask_set) for m, ct in zip(group, cts, strict=True)]
    for k in range(n_blocks):
        plain = weighted_sum([ct[k] for ct in cts], weights, Q)
        assert np.array_equal(weighted_sum([mb[k] for mb in masked], weights, Q), plain)
        for ct, mb in zip(cts, masked, strict=True):
            assert mb[k].dtype == np.uint64
            assert int(mb[k].max()) < Q
            assert np.count_nonzero(mb[k] == ct[k]) < 4


def test_mask_is_the_documented_combination_of_pair_streams() -> None:
    group = members(4)
    weights = (3, 1, 4, 2)
    mask_set = MaskSet(tuple(m.address for m in group), weights, round=5, attempt=1)
    i = 2
    me = group[i]
    mask = masker_for(me, group).block_mask(mask_set, 6)
    streams = [
        None
        if j == i
        else expand_seed(
            pair_seed(me.private_raw, m.public_raw, me.address, m.address, CONTRACT), 5, 1, 6, Q
        )
        for j, m in enumerate(group)
    ]
    for c in [0, 1, 777, COEFFS_PER_BLOCK - 1]:
        expected = sum(weights[j] * int(streams[j][c]) for j in range(i + 1, 4)) - sum(
            weights[j] * int(streams[j][c]) for j in range(i)
        )
        assert int(mask[c]) == expected % Q


def test_weighted_masks_sum_to_zero() -> None:
    group = members(5)
    weights = (7, 1, 300, 2, 9)
    mask_set = MaskSet(tuple(m.address for m in group), weights, round=3, attempt=0)
    masks = [masker_for(m, group).block_mask(mask_set, 0) for m in group]
    assert not np.any(weighted_sum(masks, list(weights), Q))


def test_mask_bytes_matches_mask() -> None:
    rng = np.random.default_rng(4)
    group = members(3)
    mask_set = MaskSet(tuple(m.address for m in group), (1, 2, 3), round=1, attempt=0)
    blocks = random_blocks(rng, 2)
    masker = masker_for(group[1], group)
    as_bytes = masker.mask_bytes([block_to_bytes(b) for b in blocks], mask_set)
    assert all(len(b) == BLOCK_BYTES for b in as_bytes)
    from_arrays = masker.mask(blocks, mask_set)
    assert [block_from_bytes(b, Q).tolist() for b in as_bytes] == [a.tolist() for a in from_arrays]
    assert np.array_equal(
        masker.mask([block_to_bytes(b) for b in blocks], mask_set)[1], from_arrays[1]
    )


def test_masks_differ_per_round_attempt_and_block() -> None:
    group = members(3)
    addresses = tuple(m.address for m in group)
    masker = masker_for(group[0], group)
    base = masker.block_mask(MaskSet(addresses, (1, 2, 3), round=4, attempt=0), 0)
    others = [
        masker.block_mask(MaskSet(addresses, (1, 2, 3), round=5, attempt=0), 0),
        masker.block_mask(MaskSet(addresses, (1, 2, 3), round=4, attempt=1), 0),
        masker.block_mask(MaskSet(addresses, (1, 2, 3), round=4, attempt=0), 1),
    ]
    for other in others:
        assert np.count_nonzero(other == base) == 0


def test_participant_order_and_capitalisation() -> None:
    group = members(3)
    masker = masker_for(group[1], group)
    addresses = tuple(m.address for m in group)
    lower = masker.block_mask(MaskSet(addresses, (1, 2, 3), round=1, attempt=0), 0)
    checksummed = tuple(to_checksum_address(a) for a in addresses)
    assert np.array_equal(
        masker.block_mask(MaskSet(checksummed, (1, 2, 3), round=1, attempt=0), 0), lower
    )
    swapped = MaskSet(tuple(reversed(addresses)), (3, 2, 1), round=1, attempt=0)
    assert not np.array_equal(masker.block_mask(swapped, 0), lower)


def test_a_dropped_member_is_left_out_of_a_new_attempt() -> None:
    rng = np.random.default_rng(9)
    group = members(5)
    counts = [120, 40, 300, 75, 10]
    first = MaskSet.from_sample_counts([m.address for m in group], counts, round=8, attempt=0)
    cts = [random_blocks(rng, 2) for _ in group]
    masked_first = [masker_for(m, group).mask(ct, first) for m, ct in zip(group, cts, strict=True)]

    dropped = 3
    survivors = [m for i, m in enumerate(group) if i != dropped]
    survivor_cts = [ct for i, ct in enumerate(cts) if i != dropped]
    survivor_counts = [c for i, c in enumerate(counts) if i != dropped]
    second = MaskSet.from_sample_counts(
        [m.address for m in survivors], survivor_counts, round=8, attempt=1
    )
    weights = list(second.weights)
    assert weights == weights_from_sample_counts(survivor_counts)
    masked_second = [
        masker_for(m, group).mask(ct, second) for m, ct in zip(survivors, survivor_cts, strict=True)
    ]
    for k in range(2):
        plain = weighted_sum([ct[k] for ct in survivor_cts], weights, Q)
        assert np.array_equal(weighted_sum([mb[k] for mb in masked_second], weights, Q), plain)
        stale = [mb[k] for i, mb in enumerate(masked_first) if i != dropped]
        assert not np.array_equal(weighted_sum(stale, weights, Q), plain)
        for i, survivor in enumerate(survivors):
            old = masked_first[group.index(survivor)][k]
            assert np.count_nonzero(masked_second[i][k] == old) < 4


# Statistical hiding


def test_masks_are_uniform() -> None:
    group = members(4)
    mask_set = MaskSet(tuple(m.address for m in group), (2, 5, 1, 9), round=2, attempt=0)
    masker = masker_for(group[1], group)
    values = np.concatenate([masker.block_mask(mask_set, b) for b in range(4)])
    assert int(values.max()) < Q
    assert chi_square_16(values, Q) < 50.0
    assert abs(float(values.astype(np.float64).mean()) / Q - 0.5) < 0.01


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_masked_block_is_uncorrelated_with_the_block(kind: str) -> None:
    rng = np.random.default_rng(12)
    group = members(3)
    mask_set = MaskSet(tuple(m.address for m in group), (4, 4, 4), round=6, attempt=0)
    if kind == "random":
        block = random_blocks(rng, 1)[0]
    else:
        block = np.arange(COEFFS_PER_BLOCK, dtype=np.uint64) * np.uint64(Q // COEFFS_PER_BLOCK)
    masked = masker_for(group[0], group).mask([block], mask_set)[0]
    values = masked.astype(np.float64)
    assert chi_square_16(masked, Q) < 50.0
    rho = np.corrcoef(block.astype(np.float64), values)[0, 1]
    assert abs(rho) < 0.05


def test_tenseal_masked_ciphertexts_decrypt_only_in_aggregate(he: HEContext) -> None:
    assert he.modulus == Q
    rng = np.random.default_rng(21)
    group = members(3)
    counts = [50, 20, 80]
    mask_set = MaskSet.from_sample_counts([m.address for m in group], counts, round=1, attempt=0)
    weights = list(mask_set.weights)
    length = 5000
    xs = [rng.uniform(-1.0, 1.0, size=length) for _ in group]
    masked = [
        masker_for(m, group).mask_bytes(he.encrypt(x), mask_set)
        for m, x in zip(group, xs, strict=True)
    ]
    for x, blocks in zip(xs, masked, strict=True):
        seen = he.decrypt(blocks, length)
        rho = np.corrcoef(x, seen)[0, 1]
        assert abs(rho) < 0.05
        assert np.linalg.norm(seen) > 1e4 * np.linalg.norm(x)
    total = [
        block_to_bytes(weighted_sum([block_from_bytes(b[k], Q) for b in masked], weights, Q))
        for k in range(len(masked[0]))
    ]
    expected = sum(w * x for w, x in zip(weights, xs, strict=True))
    # The weighted *mean* is what nodes use; CKKS noise on the sum grows with Σw.
    error = np.max(np.abs(he.decrypt(total, length) - expected)) / sum(weights)
    assert error < 1e-7


# Errors


def test_masking_error_is_an_apiary_error() -> None:
    assert issubclass(MaskingError, ApiaryError)


def test_own_address_must_be_a_participant() -> None:
    group = members(4)
    others = MaskSet(tuple(m.address for m in group[1:]), (1, 1, 1), round=1, attempt=0)
    with pytest.raises(MaskingError, match="is not a participant"):
        masker_for(group[0], group).mask(random_blocks(np.random.default_rng(0), 1), others)


def test_missing_peer_key() -> None:
    group = members(3)
    masker = Masker(group[0].address, group[0].private_raw, directory(group[:2]), CONTRACT, Q)
    mask_set = MaskSet(tuple(m.address for m in group), (1, 1, 1), round=1, attempt=0)
    with pytest.raises(
        MaskingError, match=f"no X25519 public key for participant {group[2].address}"
    ):
        masker.mask(random_blocks(np.random.default_rng(0), 1), mask_set)


def test_low_order_peer_key_in_masker() -> None:
    group = members(2)
    keys = {group[1].address: LOW_ORDER_POINTS[0]}
    masker = Masker(group[0].address, group[0].private_raw, keys, CONTRACT, Q)
    mask_set = MaskSet(tuple(m.address for m in group), (1, 1), round=1, attempt=0)
    with pytest.raises(MaskingError, match="low-order"):
        masker.block_mask(mask_set, 0)


def test_masker_checks_its_own_listed_key_and_modulus() -> None:
    a, b = members(2)
    wrong = {a.address: b.public_raw, b.address: b.public_raw}
    with pytest.raises(MaskingError, match="does not match its own private key"):
        Masker(a.address, a.private_raw, wrong, CONTRACT, Q)
    Masker(a.address, a.private_raw, directory([a, b]), CONTRACT, Q)
    for modulus in [Q + 1, 2**31 - 1, 1, 2**62 + 135]:
        with pytest.raises(MaskingError, match="modulus"):
            Masker(a.address, a.private_raw, directory([a, b]), CONTRACT, modulus)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (bytes(BLOCK_BYTES - 8), "block 1: ciphertext block is"),
        (block_to_bytes(np.full(COEFFS_PER_BLOCK, Q, dtype=np.uint64)), "not reduced"),
        (np.zeros(COEFFS_PER_BLOCK, dtype=np.int64), "dtype int64"),
        (np.zeros(COEFFS_PER_BLOCK - 1, dtype=np.uint64), "shape"),
        (np.full(COEFFS_PER_BLOCK, Q, dtype=np.uint64), "not reduced modulo q"),
        ([0] * COEFFS_PER_BLOCK, "expected bytes or a numpy uint64 array"),
    ],
)
def test_bad_block(block: object, message: str) -> None:
    group = members(2)
    mask_set = MaskSet(tuple(m.address for m in group), (1, 1), round=1, attempt=0)
    good = np.zeros(COEFFS_PER_BLOCK, dtype=np.uint64)
    with pytest.raises(MaskingError, match=message):
        masker_for(group[0], group).mask([good, block], mask_set)  # type: ignore[list-item]


def test_no_blocks_or_a_bare_block() -> None:
    group = members(2)
    mask_set = MaskSet(tuple(m.address for m in group), (1, 1), round=1, attempt=0)
    masker = masker_for(group[0], group)
    with pytest.raises(MaskingError, match="at least one block"):
        masker.mask([], mask_set)
    with pytest.raises(MaskingError, match="not a single block"):
        masker.mask(np.zeros(COEFFS_PER_BLOCK, dtype=np.uint64), mask_set)  # type: ignore[arg-type]


def test_mask_set_validation() -> None:
    a, b, c = (m.address for m in members(3))
    with pytest.raises(MaskingError, match="at least 2 participants"):
        MaskSet((a,), (1,), round=1, attempt=0)
    with pytest.raises(MaskingError, match="appears twice"):
        MaskSet((a, b, to_checksum_address(a)), (1, 1, 1), round=1, attempt=0)
    with pytest.raises(MaskingError, match="at least 1"):
        MaskSet((a, b), (1, 0), round=1, attempt=0)
    with pytest.raises(MaskingError, match="one weight per participant"):
        MaskSet((a, b, c), (1, 1), round=1, attempt=0)
    with pytest.raises(MaskingError, match="20-byte hex address"):
        MaskSet((a, "0x1234"), (1, 1), round=1, attempt=0)
    with pytest.raises(MaskingError, match="round"):
        MaskSet((a, b), (1, 1), round=-1, attempt=0)
    with pytest.raises(MaskingError, match="attempt"):
        MaskSet((a, b), (1, 1), round=1, attempt=2**32)
    with pytest.raises(MaskingError, match="integer"):
        MaskSet((a, b), (1, True), round=1, attempt=0)
    with pytest.raises(MaskingError, match="sum of weights"):
        MaskSet((a, b), (2**31, 2**31 + 1), round=1, attempt=0)


def test_mask_set_normalises() -> None:
    a, b = (m.address for m in members(2))
    mask_set = MaskSet([to_checksum_address(a), b], [2, 3], round=4, attempt=1)  # type: ignore[arg-type]
    assert mask_set.participants == (a, b)
    assert mask_set.weights == (2, 3)
    assert mask_set.total_weight == 5
    assert mask_set.index(to_checksum_address(b)) == 1
    from_counts = MaskSet.from_sample_counts([a, b], [3000, 1000], round=4, attempt=1)
    assert from_counts.weights == tuple(weights_from_sample_counts([3000, 1000]))


def test_bench_masking_runs() -> None:
    assert bench_masking(blocks=2, members=3) > 0.0
