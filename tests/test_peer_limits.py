"""Abusive streams against a real gRPC peer server on a real devnet: a stream that stalls
is cut at its deadline, a member cannot hold more than its share of streams, an oversized
message is refused, and after a flood the server holds nothing and serves honest pushes."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import free_port
from apiary.core.he import HEContext
from apiary.core.streamguard import PeerSlots, StreamLimits
from apiary.core.tls import create_self_signed
from apiary.core.transport import CHUNK_BYTES, push_update
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.wire import apiary_pb2, apiary_pb2_grpc
from tests.test_peer import DATASET_SIZE, PARAMS, signed_header

pytestmark = pytest.mark.chain

LIMITS = StreamLimits(header_s=1.0, base_s=1.0, per_block_s=0.5, per_peer=2)
"""Deadlines short enough for a test: 2 s for a stream of two blocks."""


@pytest.fixture
def peer(w3: Web3, dev_keys: list[str], he: HEContext) -> Iterator[dict]:
    """Members A and B are round 1's participants; B's node serves pushes."""
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=PARAMS, modulus=he.modulus,
                                 context_digest=he.public_digest(), min_peers=2,
                                 enrol_window_s=1)
    a, b = admin.as_account(dev_keys[1]), admin.as_account(dev_keys[2])
    for i, member in enumerate((a, b)):
        admin.add_member(member.sender, f"127.0.0.1:{62000 + i}", bytes([i + 1]) * 32,
                         create_self_signed(f"m{i}", ["127.0.0.1"]).cert, DATASET_SIZE)
    a.enrol(1, 0, 25)
    b.enrol(1, 0, 25)
    if admin.round_info(1).attempt == 0:  # every member enrolled: fixed already
        w3.provider.make_request("evm_increaseTime", [2])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        a.fix_participants(1)
    inbox = Inbox()
    service = PeerService(admin.as_account(dev_keys[2]), inbox, "b", limits=LIMITS)
    port = free_port()
    server = start_peer_server(service, "127.0.0.1", port)
    blocks = he.encrypt(np.random.default_rng(5).normal(0, 1, PARAMS))
    header = signed_header(blocks, admin.address, dev_keys[1])
    stop = threading.Event()
    yield {"target": f"127.0.0.1:{port}", "service": service, "inbox": inbox,
           "blocks": blocks, "header": header, "a": a, "stop": stop}
    stop.set()
    server.stop(grace=None)


def stalling(header: apiary_pb2.UpdateHeader, stop: threading.Event,
             trickle: bool = False) -> Iterator[apiary_pb2.UpdateChunk]:
    """The header, then nothing (or a few bytes now and then) until `stop`."""
    yield apiary_pb2.UpdateChunk(header=header)
    while not stop.wait(0.05):
        if trickle:
            yield apiary_pb2.UpdateChunk(data=b"\0" * 64)


def start_push(peer: dict, chunks: Iterator[apiary_pb2.UpdateChunk]
               ) -> tuple[grpc.Channel, grpc.Future]:
    channel = grpc.insecure_channel(peer["target"])
    return channel, apiary_pb2_grpc.PeerStub(channel).PushUpdate.future(chunks, timeout=60)


def outcome(call: grpc.Future) -> grpc.StatusCode:
    try:
        call.result(timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def slots_freed(peer: dict) -> bool:
    """Whether every stream's slot was given back (the handler thread lets go of it just
    after the client has its status)."""
    deadline = time.monotonic() + 10
    while peer["service"].pushes.held() and time.monotonic() < deadline:
        time.sleep(0.02)
    return peer["service"].pushes.held() == {}


def honest_push_works(peer: dict) -> None:
    reply = push_update(peer["target"], peer["header"], peer["blocks"], timeout=10)
    assert reply.blocks_received == len(peer["blocks"])
    assert list(peer["inbox"].copies(1, 1)) == [peer["a"].sender]


def test_a_stream_that_stalls_after_its_header_is_cut_at_its_deadline(peer: dict) -> None:
    channel, call = start_push(peer, stalling(peer["header"], peer["stop"]))
    with channel:
        error = call.exception(timeout=30)
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in (error.details() or "")
    assert peer["inbox"].copies(1, 1) == {} and slots_freed(peer)
    honest_push_works(peer)


def test_a_stream_that_never_sends_its_header_is_cut_too(peer: dict) -> None:
    def silent() -> Iterator[apiary_pb2.UpdateChunk]:
        while not peer["stop"].wait(0.05):
            pass
        yield from ()

    channel, call = start_push(peer, silent())
    with channel:
        assert outcome(call) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_member_holds_at_most_two_streams_at_a_time(peer: dict) -> None:
    opened = [start_push(peer, stalling(peer["header"], peer["stop"], trickle=True))
              for _ in range(LIMITS.per_peer)]
    deadline = time.monotonic() + 10
    while (peer["service"].pushes.held().get(peer["a"].sender.lower(), 0) < LIMITS.per_peer
           and time.monotonic() < deadline):
        time.sleep(0.02)
    channel, third = start_push(peer, stalling(peer["header"], peer["stop"]))
    with channel:
        error = third.exception(timeout=30)
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already has 2 push streams" in (error.details() or "")
    for channel, call in opened:
        with channel:
            assert outcome(call) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert slots_freed(peer)
    honest_push_works(peer)


def test_a_message_larger_than_a_chunk_is_refused_by_grpc(peer: dict) -> None:
    chunks = iter([apiary_pb2.UpdateChunk(header=peer["header"]),
                   apiary_pb2.UpdateChunk(data=b"\0" * (2 * CHUNK_BYTES))])
    channel, call = start_push(peer, chunks)
    with channel:
        assert outcome(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    honest_push_works(peer)


def test_a_flood_of_endless_streams_is_refused_or_cut_and_leaves_nothing(peer: dict) -> None:
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flood = [start_push(peer, stalling(peer["header"], peer["stop"], trickle=True))
             for _ in range(200)]
    codes = []
    for channel, call in flood:
        with channel:
            codes.append(outcome(call))
    # Refused by the member's stream limit or the server's capacity (RESOURCE_EXHAUSTED; a
    # connection the flood's own client could not open is UNAVAILABLE), or cut at the
    # deadline: never accepted, and at most a few ever held a slot.
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                          grpc.StatusCode.DEADLINE_EXCEEDED}, set(codes)
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) <= 10
    assert slots_freed(peer) and peer["inbox"].copies(1, 1) == {}
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024
    assert grown_mib < 300
    honest_push_works(peer)


def test_peer_slots_are_counted_per_peer() -> None:
    slots = PeerSlots(2)
    with slots.slot("0xA", "push"), slots.slot("0xa", "push"):
        with pytest.raises(Exception, match="already has 2 push streams"):
            slots.acquire("0xA", "push")
        with slots.slot("0xB", "push"):
            assert slots.held() == {"0xa": 2, "0xb": 1}
    assert slots.held() == {}
