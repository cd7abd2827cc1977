"""Chunked streaming over real gRPC on loopback, with real CKKS ciphertext blocks."""

from __future__ import annotations

import filecmp
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import to_checksum_address

from apiary.chain.devnet import free_port
from apiary.core.coefficients import BLOCK_BYTES, SLOTS_PER_BLOCK, block_digest
from apiary.core.he import HEContext
from apiary.core.transport import (
    CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    ReceivedUpdate,
    TransportError,
    aggregate_chunks,
    push_update,
    receive_aggregate,
    receive_update,
    sign_update,
    update_chunks,
    update_message,
    verify_update_signature,
)
from apiary.wire import apiary_pb2, apiary_pb2_grpc
from apiary.wire.generate import GENERATED, PROTO_DIR, generate

BLOCKS = 9  # 1.125 MiB: two data chunks
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
CONTRACT = to_checksum_address("0x" + "ab" * 20)
KEY_A = "0x" + "11" * 32
KEY_B = "0x" + "22" * 32


def make_header(
    blocks: Sequence[bytes], *, round_number: int = 1, sender: str = "hospital-a", samples: int = 10
) -> apiary_pb2.UpdateHeader:
    return apiary_pb2.UpdateHeader(
        round=round_number,
        sender=sender,
        sample_count=samples,
        block_count=len(blocks),
        block_digests=[block_digest(b) for b in blocks],
    )


def data_chunks(blocks: Sequence[bytes]) -> list[apiary_pb2.UpdateChunk]:
    return [c for c in update_chunks(make_header(blocks), blocks) if c.HasField("data")]


def with_coefficient(block: bytes, index: int, value: int) -> bytes:
    coeffs = np.frombuffer(block, dtype=">u8").copy()
    coeffs[index] = value
    return coeffs.tobytes()


def bad_update_streams(
    header: apiary_pb2.UpdateHeader,
    blocks: list[bytes],
    other: list[bytes],
    modulus: int,
) -> dict[str, tuple[list[apiary_pb2.UpdateChunk], grpc.StatusCode, str]]:
    """Every malformed stream a receiver must refuse: name -> (chunks, code, message part).

    ``header`` must be valid for ``blocks``; ``other`` is a different, valid update."""
    n = len(blocks)

    def stream(h: apiary_pb2.UpdateHeader, payload: Sequence[bytes]) -> list:
        return [apiary_pb2.UpdateChunk(header=h), *data_chunks(payload)]

    def changed(**fields: object) -> apiary_pb2.UpdateHeader:
        h = apiary_pb2.UpdateHeader()
        h.CopyFrom(header)
        for name, value in fields.items():
            if name == "block_digests":
                del h.block_digests[:]
                h.block_digests.extend(value)  # type: ignore[arg-type]
            else:
                setattr(h, name, value)
        return h

    whole = b"".join(blocks)
    swapped = [blocks[0], other[1], *blocks[2:]]
    unreduced = [with_coefficient(blocks[0], 5, modulus), *blocks[1:]]
    extra = [*blocks, other[0]]
    return {
        "empty stream": ([], INVALID, "empty stream"),
        "missing header": (data_chunks(blocks), INVALID, "must start with an UpdateHeader"),
        "truncated by a block": (stream(header, blocks[:-1]), INVALID, "truncated stream"),
        "truncated mid-block": (
            [
                apiary_pb2.UpdateChunk(header=header),
                apiary_pb2.UpdateChunk(data=whole[: CHUNK_BYTES // 2]),
                apiary_pb2.UpdateChunk(data=whole[CHUNK_BYTES // 2 : -10]),
            ]
            if len(whole) > CHUNK_BYTES // 2
            else [apiary_pb2.UpdateChunk(header=header), apiary_pb2.UpdateChunk(data=whole[:-10])],
            INVALID,
            "truncated stream",
        ),
        "oversized": (
            [*stream(header, blocks), apiary_pb2.UpdateChunk(data=b"\x00" * 8)],
            EXHAUSTED,
            "more than the",
        ),
        "chunk over 1 MiB": (
            [
                apiary_pb2.UpdateChunk(header=header),
                apiary_pb2.UpdateChunk(data=whole[:1] * (CHUNK_BYTES + 1)),
            ],
            EXHAUSTED,
            "exceeds the",
        ),
        "wrong block count": (
            stream(make_header(extra, round_number=header.round, sender=header.sender), extra),
            INVALID,
            f"wrong block count: got {n + 1}, the model has {n}",
        ),
        "digest mismatch": (stream(header, swapped), INVALID, "block 1 does not match its digest"),
        "coefficient >= q": (
            stream(changed(block_digests=[block_digest(b) for b in unreduced]), unreduced),
            INVALID,
            "block 0 is malformed",
        ),
        "second header": (
            [apiary_pb2.UpdateChunk(header=header), *stream(header, blocks)],
            INVALID,
            "second UpdateHeader",
        ),
        "digest count": (
            stream(changed(block_digests=list(header.block_digests)[:-1]), blocks),
            INVALID,
            f"lists {n - 1} digest(s) for {n} block(s)",
        ),
        "short digest": (
            stream(
                changed(block_digests=[header.block_digests[0][:31], *header.block_digests[1:]]),
                blocks,
            ),
            INVALID,
            "digest 0 is 31 bytes",
        ),
        "no samples": (stream(changed(sample_count=0), blocks), INVALID, "sample_count is 0"),
        "no sender": (stream(changed(sender=""), blocks), INVALID, "names no sender"),
    }


def raw_push(target: str, chunks: Iterator | list, *, service: str = "peer") -> grpc.RpcError:
    """Send arbitrary chunks; return the error the server answered with. Each call gets a
    connection of its own: on a shared one, a stream the server just aborted can still count
    against its streams-per-connection limit, and the next push would be refused for that."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub: apiary_pb2_grpc.PeerStub | apiary_pb2_grpc.CoordinatorStub
        if service == "peer":
            stub = apiary_pb2_grpc.PeerStub(channel)
        else:
            stub = apiary_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.PushUpdate(iter(chunks), timeout=10)
    return info.value


class Relay(apiary_pb2_grpc.PeerServicer):
    """A minimal swarm relay: `receive_update`, then keep the update."""

    def __init__(self, expected_blocks: int, modulus: int) -> None:
        self.expected_blocks = expected_blocks
        self.modulus = modulus
        self.received: list[ReceivedUpdate] = []

    def PushUpdate(
        self, request_iterator: Iterator[apiary_pb2.UpdateChunk], context: grpc.ServicerContext
    ) -> apiary_pb2.PushReply:
        try:
            update = receive_update(
                request_iterator, expected_blocks=self.expected_blocks, modulus=self.modulus
            )
        except TransportError as exc:
            context.abort(exc.code, exc.message)
        self.received.append(update)
        return apiary_pb2.PushReply(round=update.header.round, blocks_received=len(update.blocks))


@pytest.fixture(scope="module")
def blocks(he: HEContext) -> list[bytes]:
    rng = np.random.default_rng(1)
    return he.encrypt(rng.uniform(-1, 1, BLOCKS * SLOTS_PER_BLOCK - 100))


@pytest.fixture(scope="module")
def other_blocks(he: HEContext) -> list[bytes]:
    rng = np.random.default_rng(2)
    return he.encrypt(rng.uniform(-1, 1, BLOCKS * SLOTS_PER_BLOCK))


@pytest.fixture
def relay(he: HEContext) -> Iterator[tuple[Relay, str]]:
    service = Relay(BLOCKS, he.modulus)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    apiary_pb2_grpc.add_PeerServicer_to_server(service, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(0)


# --------------------------------------------------------------------------- stubs


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in GENERATED:
        assert filecmp.cmp(tmp_path / name, PROTO_DIR / name, shallow=False), (
            f"proto/{name} is stale: run `python -m apiary.wire.generate`"
        )


# --------------------------------------------------------------------------- chunking


def test_chunks_stay_under_the_message_limit_and_round_trip(
    blocks: list[bytes], he: HEContext
) -> None:
    header = make_header(blocks)
    chunks = list(update_chunks(header, blocks))
    assert chunks[0].WhichOneof("part") == "header"
    sizes = [len(c.data) for c in chunks[1:]]
    assert sizes == [CHUNK_BYTES, BLOCKS * BLOCK_BYTES - CHUNK_BYTES]
    assert all(c.ByteSize() < MAX_MESSAGE_BYTES for c in chunks)
    update = receive_update(chunks, expected_blocks=BLOCKS, modulus=he.modulus)
    assert update.header == header
    assert update.blocks == blocks


def test_update_chunks_refuses_a_header_that_does_not_match_the_blocks(
    blocks: list[bytes],
) -> None:
    with pytest.raises(ValueError, match="announces 9 block"):
        update_chunks(make_header(blocks), blocks[:-1])


def test_push_update_round_trip_over_grpc(relay: tuple[Relay, str], blocks: list[bytes]) -> None:
    service, target = relay
    header = make_header(blocks, round_number=4, samples=321)
    reply = push_update(target, header, blocks, timeout=10)
    assert (reply.round, reply.blocks_received) == (4, BLOCKS)
    [received] = service.received
    assert received.header == header
    assert received.blocks == blocks


# --------------------------------------------------------------------------- refusals


def test_every_malformed_stream_is_refused_with_its_code(
    relay: tuple[Relay, str], blocks: list[bytes], other_blocks: list[bytes], he: HEContext
) -> None:
    service, target = relay
    cases = bad_update_streams(make_header(blocks), blocks, other_blocks, he.modulus)
    for name, (chunks, code, message) in cases.items():
        with pytest.raises(TransportError) as direct:
            receive_update(chunks, expected_blocks=BLOCKS, modulus=he.modulus)
        assert (direct.value.code, name) == (code, name)
        assert message in direct.value.message, name

        error = raw_push(target, chunks)
        assert (error.code(), name) == (code, name)
        assert message in error.details(), name
    assert service.received == []


def test_oversized_stream_is_cut_off_at_the_first_excess_chunk(
    relay: tuple[Relay, str], blocks: list[bytes], he: HEContext
) -> None:
    header = make_header(blocks)
    pulled = 0

    def endless() -> Iterator[apiary_pb2.UpdateChunk]:
        nonlocal pulled
        for chunk in update_chunks(header, blocks):
            pulled += 1
            yield chunk
        while True:
            pulled += 1
            yield apiary_pb2.UpdateChunk(data=b"\x00" * CHUNK_BYTES)

    with pytest.raises(TransportError) as info:
        receive_update(endless(), expected_blocks=BLOCKS, modulus=he.modulus)
    assert info.value.code == EXHAUSTED
    assert pulled == 1 + 2 + 1  # header, the two announced chunks, one too many

    service, target = relay
    error = raw_push(target, endless())
    assert error.code() == EXHAUSTED
    assert service.received == []


def test_push_update_raises_the_servers_status(
    relay: tuple[Relay, str], blocks: list[bytes]
) -> None:
    _, target = relay
    with pytest.raises(TransportError) as info:
        push_update(target, make_header(blocks[:3]), blocks[:3], timeout=10)
    assert info.value.code == INVALID
    assert "wrong block count: got 3, the model has 9" in str(info.value)

    with pytest.raises(TransportError) as down:
        push_update(f"127.0.0.1:{free_port()}", make_header(blocks), blocks, timeout=5)
    assert down.value.code == grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------- aggregates


def _aggregate_header(blocks: Sequence[bytes]) -> apiary_pb2.AggregateHeader:
    return apiary_pb2.AggregateHeader(
        round=3,
        weight_sum=465,
        block_count=len(blocks),
        block_digests=[block_digest(b) for b in blocks],
        contributors=["hospital-a", "hospital-b"],
    )


def test_aggregate_stream_round_trip(blocks: list[bytes], he: HEContext) -> None:
    header = _aggregate_header(blocks)
    received_header, received = receive_aggregate(
        aggregate_chunks(header, blocks), modulus=he.modulus, expected_blocks=BLOCKS
    )
    assert received_header == header
    assert received == blocks


def test_bad_aggregate_streams_are_refused(
    blocks: list[bytes], other_blocks: list[bytes], he: HEContext
) -> None:
    header = _aggregate_header(blocks)
    data = list(aggregate_chunks(header, other_blocks))[1:]
    cases = {
        "digest mismatch": ([apiary_pb2.AggregateChunk(header=header), *data], "block 0 does"),
        "missing header": (data, "must start with an AggregateHeader"),
        "truncated": (list(aggregate_chunks(header, blocks))[:-1], "truncated"),
    }
    for name, (chunks, message) in cases.items():
        with pytest.raises(TransportError) as info:
            receive_aggregate(chunks, modulus=he.modulus)
        assert (info.value.code, name) == (INVALID, name)
        assert message in info.value.message
    with pytest.raises(TransportError, match="wrong block count: got 9, the model has 2"):
        receive_aggregate(aggregate_chunks(header, blocks), modulus=he.modulus, expected_blocks=2)


# --------------------------------------------------------------------------- signatures


def _swarm_header(blocks: Sequence[bytes], sender: str = "") -> apiary_pb2.UpdateHeader:
    return make_header(blocks, round_number=7, sender=sender, samples=250)


def test_signed_update_verifies_and_binds_its_content(blocks: list[bytes]) -> None:
    signed = sign_update(_swarm_header(blocks), CONTRACT, KEY_A)
    assert signed.sender == Account.from_key(KEY_A).address
    assert verify_update_signature(signed, CONTRACT)
    lowercase = apiary_pb2.UpdateHeader()
    lowercase.CopyFrom(signed)
    lowercase.sender = signed.sender.lower()
    assert verify_update_signature(lowercase, CONTRACT)

    for field, value in [("round", 8), ("sample_count", 251), ("block_count", 8)]:
        tampered = apiary_pb2.UpdateHeader()
        tampered.CopyFrom(signed)
        setattr(tampered, field, value)
        assert not verify_update_signature(tampered, CONTRACT), field
    assert not verify_update_signature(signed, to_checksum_address("0x" + "cd" * 20))
    unsigned = apiary_pb2.UpdateHeader()
    unsigned.CopyFrom(signed)
    unsigned.ClearField("signature")
    assert not verify_update_signature(unsigned, CONTRACT)


def test_a_signature_by_one_key_claiming_another_sender_fails(blocks: list[bytes]) -> None:
    address_b = Account.from_key(KEY_B).address
    forged = _swarm_header(blocks, sender=address_b)
    message = encode_defunct(primitive=update_message(CONTRACT, forged))
    forged.signature = bytes(Account.sign_message(message, KEY_A).signature)
    assert not verify_update_signature(forged, CONTRACT)

    relabelled = sign_update(_swarm_header(blocks), CONTRACT, KEY_A)
    relabelled.sender = address_b
    assert not verify_update_signature(relabelled, CONTRACT)

    with pytest.raises(ValueError, match="key belongs to"):
        sign_update(_swarm_header(blocks, sender=address_b), CONTRACT, KEY_A)


def test_a_name_instead_of_an_address_never_verifies(blocks: list[bytes]) -> None:
    header = sign_update(_swarm_header(blocks), CONTRACT, KEY_A)
    header.sender = "hospital-a"
    assert not verify_update_signature(header, CONTRACT)
    with pytest.raises(ValueError, match="not an Ethereum address"):
        update_message(CONTRACT, header)
