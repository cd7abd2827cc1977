"""The CKKS codec: TenSEAL ciphertexts as raw coefficient blocks, and sums of them."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi
import zstandard

from apiary.core import he
from apiary.core.coefficients import (
    BLOCK_BYTES,
    COEFFS_PER_BLOCK,
    MAX_WEIGHT_SUM,
    SLOTS_PER_BLOCK,
    MalformedCiphertext,
    block_from_bytes,
    block_to_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.he import GLOBAL_SCALE, MAX_ABS_VALUE, HEContext, SecretKeyRequired
from apiary.wire.tenseal_pb2 import CKKSVectorProto


@pytest.fixture(scope="module")
def ctx() -> HEContext:
    return HEContext.create()


@pytest.fixture(scope="module")
def public_ctx(ctx: HEContext) -> HEContext:
    return HEContext.from_bytes(ctx.public_bytes())


def protobuf_fields(data: bytes) -> set[int]:
    """Top-level field numbers present in a protobuf message."""

    def varint(pos: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    fields, pos = set(), 0
    while pos < len(data):
        key, pos = varint(pos)
        wire = key & 7
        if wire == 0:
            _, pos = varint(pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            length, pos = varint(pos)
            pos += length
        fields.add(key >> 3)
    return fields


def test_modulus_is_the_data_prime(ctx: HEContext) -> None:
    primes = [m.value() for m in sealapi.CoeffModulus.Create(8192, [60, 60])]
    assert ctx.modulus == primes[0]
    assert ctx.modulus.bit_length() == 60


def test_coefficients_round_trip(ctx: HEContext) -> None:
    x = np.random.default_rng(10).uniform(-3, 3, SLOTS_PER_BLOCK)
    vec = ts.ckks_vector(ctx.tenseal_context, x.tolist())
    coeffs = ctx.to_coefficients(vec)
    assert coeffs.dtype == np.uint64
    assert coeffs.shape == (COEFFS_PER_BLOCK,)
    assert int(coeffs.max()) < ctx.modulus
    rebuilt = ctx.from_coefficients(coeffs)
    assert rebuilt.decrypt() == vec.decrypt()
    assert np.array_equal(ctx.to_coefficients(rebuilt), coeffs)


def test_to_coefficients_rejects_other_scale(ctx: HEContext) -> None:
    vec = ts.ckks_vector(ctx.tenseal_context, [1.0, 2.0], scale=2.0**30)
    with pytest.raises(MalformedCiphertext, match="scale"):
        ctx.to_coefficients(vec)


def test_zlib_compressed_ciphertext_parses_as_seal_loads_it(ctx: HEContext) -> None:
    """SEAL may be built with zlib instead of zstd; both decode to the same coefficients."""
    x = np.linspace(-1, 1, 100)
    vec = ts.ckks_vector(ctx.tenseal_context, x.tolist())
    serialized = vec.serialize()
    parsed = he._parse_vector(serialized)
    blob_start = serialized.index(struct.pack("<H", 0xA15E))
    (blob_size,) = struct.unpack_from("<Q", serialized, blob_start + 8)
    blob = serialized[blob_start : blob_start + blob_size]
    body = zstandard.ZstdDecompressor().decompress(blob[16:], max_output_size=1 << 20)
    packed = zlib.compress(body)
    header = bytearray(blob[:16])
    header[5] = 1
    header[8:16] = struct.pack("<Q", 16 + len(packed))
    zlib_blob = bytes(header) + packed
    proto = CKKSVectorProto(
        sizes=[100], ciphertexts=[zlib_blob], scale=GLOBAL_SCALE
    ).SerializeToString()
    assert np.array_equal(he._parse_vector(proto).coeffs, parsed.coeffs)
    loaded = ts.ckks_vector_from(ctx.tenseal_context, proto)
    assert loaded.decrypt() == vec.decrypt()


def test_tenseal_serialisation_is_the_generated_message(ctx: HEContext) -> None:
    """The copied .proto describes TenSEAL's bytes exactly: parse and re-serialise is the
    identity."""
    serialized = ts.ckks_vector(ctx.tenseal_context, [0.5] * SLOTS_PER_BLOCK).serialize()
    message = CKKSVectorProto.FromString(serialized)
    assert list(message.sizes) == [SLOTS_PER_BLOCK]
    assert len(message.ciphertexts) == 1
    assert message.scale == GLOBAL_SCALE
    assert message.SerializeToString() == serialized


def test_hand_written_container_matches_the_generated_stub(ctx: HEContext) -> None:
    coeffs = ctx.to_coefficients(ts.ckks_vector(ctx.tenseal_context, [1.0, -2.0]))
    written = ctx.from_coefficients(coeffs).serialize()
    blob = CKKSVectorProto.FromString(written).ciphertexts[0]
    stub = CKKSVectorProto(sizes=[SLOTS_PER_BLOCK], ciphertexts=[blob], scale=GLOBAL_SCALE)
    assert he._vector_bytes(blob) == stub.SerializeToString()
    big = bytes(range(256)) * 600
    assert CKKSVectorProto.FromString(he._vector_bytes(big)).ciphertexts[0] == big


def test_parse_vector_rejects_malformed_containers(ctx: HEContext) -> None:
    one = ts.ckks_vector(ctx.tenseal_context, [1.0]).serialize()
    blob = CKKSVectorProto.FromString(one).ciphertexts[0]
    with pytest.raises(MalformedCiphertext, match="not a CKKSVector protobuf"):
        he._parse_vector(one[: len(one) // 2])
    with pytest.raises(MalformedCiphertext, match="not a CKKSVector protobuf"):
        he._parse_vector(b"\xff\xff\xff")
    for ciphertexts in ([], [blob, blob]):
        data = CKKSVectorProto(sizes=[1], ciphertexts=ciphertexts).SerializeToString()
        with pytest.raises(MalformedCiphertext, match=f"holds {len(ciphertexts)} ciphertexts"):
            he._parse_vector(data)
    with pytest.raises(MalformedCiphertext, match="header is invalid"):
        he._parse_vector(CKKSVectorProto(ciphertexts=[b"\x00" * 64]).SerializeToString())


def test_encrypt_decrypt_round_trip_ragged(ctx: HEContext) -> None:
    length = 3 * SLOTS_PER_BLOCK + 123
    x = np.random.default_rng(11).normal(0, 2, length)
    blocks = ctx.encrypt(x)
    assert len(blocks) == 4
    assert all(isinstance(b, bytes) and len(b) == BLOCK_BYTES for b in blocks)
    y = ctx.decrypt(blocks, length)
    assert y.dtype == np.float64
    assert y.shape == (length,)
    assert np.max(np.abs(y - x)) < 1e-6
    padded = ctx.decrypt(blocks, 4 * SLOTS_PER_BLOCK)
    assert np.max(np.abs(padded[length:])) < 1e-6


def test_encrypt_single_value(ctx: HEContext) -> None:
    blocks = ctx.encrypt(np.array([-0.25]))
    assert len(blocks) == 1
    assert abs(ctx.decrypt(blocks, 1)[0] + 0.25) < 1e-6


def test_encryptions_are_randomised(ctx: HEContext) -> None:
    x = np.ones(10)
    assert ctx.encrypt(x) != ctx.encrypt(x)


@pytest.mark.parametrize(
    "counts",
    [
        [10, 200, 37],
        [5000, 120_000, 700, 3],
        [1, 1, 1, 1, 1_000_000],
    ],
)
def test_weighted_sum_of_ciphertexts_decrypts_to_weighted_mean(
    ctx: HEContext, counts: list[int]
) -> None:
    weights = weights_from_sample_counts(counts)
    if sum(counts) > MAX_WEIGHT_SUM:
        assert weights != counts
    length = SLOTS_PER_BLOCK + 500
    rng = np.random.default_rng(sum(counts))
    xs = [rng.uniform(-5, 5, length) for _ in counts]
    encrypted = [ctx.encrypt(x) for x in xs]
    aggregate = [
        block_to_bytes(
            weighted_sum(
                [block_from_bytes(e[i], ctx.modulus) for e in encrypted], weights, ctx.modulus
            )
        )
        for i in range(2)
    ]
    mean = ctx.decrypt(aggregate, length) / sum(weights)
    expected = sum(w * x for w, x in zip(weights, xs, strict=True)) / sum(weights)
    assert np.max(np.abs(mean - expected)) < 1e-6


def test_weighted_sum_at_the_value_bound(ctx: HEContext) -> None:
    """Inputs at ±MAX_ABS_VALUE with Σw above MAX_WEIGHT_SUM do not wrap around q."""
    weights = weights_from_sample_counts([1] * 200 + [10**6])
    x = np.full(64, MAX_ABS_VALUE)
    x[::2] = -MAX_ABS_VALUE
    encrypted = block_from_bytes(ctx.encrypt(x)[0], ctx.modulus)
    summed = weighted_sum([encrypted] * len(weights), weights, ctx.modulus)
    mean = ctx.decrypt([block_to_bytes(summed)], x.size) / sum(weights)
    assert np.max(np.abs(mean - x)) < 1e-6


def test_public_context_encrypts_but_cannot_decrypt(ctx: HEContext, public_ctx: HEContext) -> None:
    assert ctx.has_secret_key
    assert not public_ctx.has_secret_key
    assert public_ctx.modulus == ctx.modulus
    x = np.linspace(-2, 2, 300)
    blocks = public_ctx.encrypt(x)
    with pytest.raises(SecretKeyRequired, match="secret key"):
        public_ctx.decrypt(blocks, x.size)
    with pytest.raises(SecretKeyRequired):
        public_ctx.secret_bytes()
    assert np.max(np.abs(ctx.decrypt(blocks, x.size) - x)) < 1e-6


def test_public_bytes_hold_no_secret_key(ctx: HEContext) -> None:
    public, secret = ctx.public_bytes(), ctx.secret_bytes()
    assert 3 not in protobuf_fields(public)
    assert 3 in protobuf_fields(secret)
    assert not HEContext.from_bytes(public).has_secret_key
    restored = HEContext.from_bytes(secret)
    assert restored.has_secret_key
    x = np.arange(5.0)
    assert np.max(np.abs(restored.decrypt(ctx.encrypt(x), 5) - x)) < 1e-6


def test_repr_shows_no_key_material(ctx: HEContext) -> None:
    assert repr(ctx) == f"HEContext(has_secret_key=True, modulus={ctx.modulus})"


def test_decrypt_rejects_malformed_blocks(ctx: HEContext) -> None:
    blocks = ctx.encrypt(np.ones(SLOTS_PER_BLOCK + 1))
    with pytest.raises(MalformedCiphertext, match=str(BLOCK_BYTES)):
        ctx.decrypt([blocks[0], blocks[1][:-8]], SLOTS_PER_BLOCK + 1)
    unreduced = ctx.modulus.to_bytes(8, "big") + blocks[1][8:]
    with pytest.raises(MalformedCiphertext, match="not reduced"):
        ctx.decrypt([blocks[0], unreduced], SLOTS_PER_BLOCK + 1)
    with pytest.raises(ValueError, match="expected 2"):
        ctx.decrypt(blocks[:1], SLOTS_PER_BLOCK + 1)
    with pytest.raises(ValueError, match="expected 1"):
        ctx.decrypt(blocks, SLOTS_PER_BLOCK)
    with pytest.raises(ValueError):
        ctx.decrypt([], 0)


def test_from_coefficients_rejects_bad_arrays(ctx: HEContext) -> None:
    coeffs = np.zeros(COEFFS_PER_BLOCK, dtype=np.uint64)
    coeffs[7] = ctx.modulus
    with pytest.raises(MalformedCiphertext, match="not reduced"):
        ctx.from_coefficients(coeffs)
    with pytest.raises(MalformedCiphertext):
        ctx.from_coefficients(np.zeros(COEFFS_PER_BLOCK // 2, dtype=np.uint64))
    with pytest.raises(ValueError, match="uint64"):
        ctx.from_coefficients(np.zeros(COEFFS_PER_BLOCK, dtype=np.int64))


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.array([1.0, np.nan]), "NaN"),
        (np.array([0.0, np.inf]), "NaN or infinite"),
        (np.array([MAX_ABS_VALUE * 1.01]), "magnitude"),
        (np.zeros((2, 3)), "1-D"),
        (np.array([]), "at least 1"),
    ],
)
def test_encrypt_rejects_bad_vectors(ctx: HEContext, vector: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ctx.encrypt(vector)


def test_from_bytes_rejects_garbage_and_other_parameters() -> None:
    with pytest.raises(ValueError, match="TenSEAL context"):
        HEContext.from_bytes(b"not a context")
    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    with pytest.raises(ValueError, match="parameters differ"):
        HEContext.from_bytes(other.serialize())


def test_bench_he_reports_the_figures_the_cli_prints() -> None:
    from apiary.tools.bench.he import bench_he, format_he_table

    messages: list[str] = []
    result = bench_he(params=2 * SLOTS_PER_BLOCK, nodes=3, repeats=1, progress=messages.append)
    assert result["bytes_per_param"] == 32.0
    assert result["blocks"] == 2
    for key in ("encrypt_params_per_s", "decrypt_params_per_s", "weighted_sum_coeffs_per_s"):
        assert result[key] > 0
    assert result["roundtrip_max_error"] < 1e-6
    assert result["weighted_mean_max_error"] < 1e-6
    assert messages
    assert "weighted sum" in format_he_table(result)


def test_a_secret_context_encrypts_with_the_secret_key_and_any_copy_of_the_key_decrypts(
    ctx: HEContext,
) -> None:
    """Members encrypt with SEAL's secret-key encryption (about half the work of public-key
    encryption); the ciphertexts are ordinary data-level ciphertexts that any holder of the
    swarm key decrypts, and each encryption is freshly randomised."""
    from apiary.wire.tenseal_pb2 import TenSEALContextProto

    encrypting = TenSEALContextProto.FromString(ctx._encrypting.serialize(save_secret_key=True))
    published = TenSEALContextProto.FromString(ctx.tenseal_context.serialize())
    assert encrypting.encryption_type == int(ts.ENCRYPTION_TYPE.SYMMETRIC.value)
    assert published.encryption_type == int(ts.ENCRYPTION_TYPE.ASYMMETRIC.value)
    assert ctx.public_bytes() == HEContext.from_bytes(ctx.public_bytes()).public_bytes()

    x = np.random.default_rng(3).normal(0, 0.5, 2 * SLOTS_PER_BLOCK + 7)
    first, second = ctx.encrypt(x), ctx.encrypt(x)
    assert first != second
    other_holder = HEContext.from_bytes(ctx.secret_bytes())
    for blocks in (first, second):
        assert np.max(np.abs(other_holder.decrypt(blocks, x.size) - x)) < 1e-6
    # The public context alone (the coordinator's) still encrypts, with the public key.
    public = HEContext.from_bytes(ctx.public_bytes())
    assert np.max(np.abs(ctx.decrypt(public.encrypt(x), x.size) - x)) < 1e-6
