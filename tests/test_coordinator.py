"""The federated coordinator on real gRPC servers, with real CKKS ciphertexts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from apiary.chain.devnet import free_port
from apiary.coordinator.server import (
    CoordinatorConfigError,
    CoordinatorService,
    serve,
    start_server,
)
from apiary.core.coefficients import (
    SLOTS_PER_BLOCK,
    block_from_bytes,
    block_to_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.he import HEContext
from apiary.core.settings import CoordinatorSettings
from apiary.core.transport import TransportError, fetch_aggregate, push_update
from apiary.wire import apiary_pb2, apiary_pb2_grpc
from tests.test_transport import bad_update_streams, make_header, raw_push

PARAMS = 2 * SLOTS_PER_BLOCK - 37
BLOCKS = 2
MEMBERS = ("hospital-a", "hospital-b", "hospital-c")
SAMPLES = {"hospital-a": 120, "hospital-b": 300, "hospital-c": 45}

Start = Callable[..., tuple[CoordinatorService, str]]
Fetch = Callable[..., tuple[apiary_pb2.AggregateHeader, list[bytes]]]


@pytest.fixture(scope="module")
def public(he: HEContext) -> HEContext:
    return HEContext.from_bytes(he.public_bytes())


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.uniform(-1, 1, PARAMS) for name in MEMBERS}


@pytest.fixture(scope="module")
def updates(public: HEContext, vectors: dict[str, np.ndarray]) -> dict[str, list[bytes]]:
    """Each hospital's encrypted update, made with the public context as anyone can."""
    return {name: public.encrypt(vector) for name, vector in vectors.items()}


@pytest.fixture
def start(public: HEContext) -> Iterator[Start]:
    running: list[tuple[CoordinatorService, grpc.Server]] = []

    def _start(
        min_peers: int = 2, round_deadline_s: float = 60.0
    ) -> tuple[CoordinatorService, str]:
        service = CoordinatorService(
            public, PARAMS, MEMBERS, min_peers=min_peers, round_deadline_s=round_deadline_s
        )
        server, port = start_server(service, "127.0.0.1", free_port())
        running.append((service, server))
        return service, f"127.0.0.1:{port}"

    yield _start
    for service, server in running:
        service.rounds.stop()
        server.stop(0)


def header_of(name: str, blocks: list[bytes], round_number: int = 1) -> apiary_pb2.UpdateHeader:
    return make_header(blocks, round_number=round_number, sender=name, samples=SAMPLES[name])


def push(target: str, name: str, blocks: list[bytes], round_number: int = 1) -> None:
    header = header_of(name, blocks, round_number)
    reply = push_update(target, header, blocks, timeout=10, service="coordinator")
    assert (reply.round, reply.blocks_received) == (round_number, BLOCKS)


def state(service: CoordinatorService) -> tuple[int, list[str]]:
    return service.rounds.current_round, service.rounds.pending_senders()


def status(target: str) -> apiary_pb2.CoordinatorStatus:
    with grpc.insecure_channel(target) as channel:
        stub = apiary_pb2_grpc.CoordinatorStub(channel)
        return stub.Status(apiary_pb2.CoordinatorStatusRequest(), timeout=5)


@pytest.fixture
def fetch(public: HEContext) -> Fetch:
    def _fetch(
        target: str, round_number: int, timeout: float = 10.0, sender: str = "hospital-a"
    ) -> tuple[apiary_pb2.AggregateHeader, list[bytes]]:
        return fetch_aggregate(
            target,
            round_number,
            sender,
            modulus=public.modulus,
            timeout=timeout,
            expected_blocks=BLOCKS,
        )

    return _fetch


# --------------------------------------------------------------------------- a full round


def test_three_hospitals_get_the_weighted_mean(
    fetch: Fetch,
    start: Start,
    he: HEContext,
    updates: dict[str, list[bytes]],
    vectors: dict[str, np.ndarray],
) -> None:
    service, target = start()
    with ThreadPoolExecutor(max_workers=4) as pool:
        waiting = pool.submit(fetch, target, 1, 20.0)
        pushes = [pool.submit(push, target, name, updates[name]) for name in MEMBERS]
        for pushed in pushes:
            pushed.result()
        header, blocks = waiting.result()

    names = sorted(MEMBERS)
    weights = weights_from_sample_counts([SAMPLES[n] for n in names])
    assert list(header.contributors) == names
    assert (header.round, header.weight_sum) == (1, sum(weights))
    q = he.modulus
    expected = [
        block_to_bytes(
            weighted_sum([block_from_bytes(updates[n][i], q) for n in names], weights, q)
        )
        for i in range(BLOCKS)
    ]
    assert blocks == expected

    mean = he.decrypt(blocks, PARAMS) / header.weight_sum
    reference = np.average([vectors[n] for n in names], axis=0, weights=weights)
    assert np.max(np.abs(mean - reference)) < 1e-6

    assert state(service) == (2, [])
    reported = status(target)
    assert (reported.round, reported.last_aggregated_round) == (2, 1)
    assert (reported.param_count, list(reported.members)) == (PARAMS, names)
    again, _ = fetch(target, 1, timeout=2.0, sender="hospital-c")
    assert again == header


# --------------------------------------------------------------------------- refusals


def test_bad_pushes_are_refused_and_change_nothing(
    start: Start,
    updates: dict[str, list[bytes]],
    he: HEContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="apiary.coordinator")
    service, target = start(min_peers=3)
    push(target, "hospital-a", updates["hospital-a"])
    before = state(service)
    assert before == (1, ["hospital-a"])

    b_blocks = updates["hospital-b"]
    cases = bad_update_streams(
        header_of("hospital-b", b_blocks), b_blocks, updates["hospital-c"], he.modulus
    )

    def stream(header: apiary_pb2.UpdateHeader, blocks: list[bytes]) -> list:
        return [apiary_pb2.UpdateChunk(header=header)] + [
            apiary_pb2.UpdateChunk(data=b) for b in blocks
        ]

    cases |= {
        "wrong round": (
            stream(header_of("hospital-b", b_blocks, round_number=2), b_blocks),
            grpc.StatusCode.FAILED_PRECONDITION,
            "round 2 is not open; the coordinator is at round 1",
        ),
        "round zero": (
            stream(header_of("hospital-b", b_blocks, round_number=0), b_blocks),
            grpc.StatusCode.FAILED_PRECONDITION,
            "round 0 is not open",
        ),
        "non-member": (
            stream(make_header(b_blocks, sender="mallory"), b_blocks),
            grpc.StatusCode.PERMISSION_DENIED,
            "'mallory' is not a member",
        ),
        "second push": (
            stream(header_of("hospital-a", updates["hospital-a"]), updates["hospital-a"]),
            grpc.StatusCode.ALREADY_EXISTS,
            "round 1: hospital-a has already pushed",
        ),
    }
    for name, (chunks, code, message) in cases.items():
        error = raw_push(target, chunks, service="coordinator")
        assert (error.code(), name) == (code, name)
        assert message in error.details(), name
        assert state(service) == before, name

    logged = caplog.text
    assert "round 1: refused the update of 'hospital-a': ALREADY_EXISTS" in logged
    assert "round 1: accepted the update of hospital-a" in logged

    push(target, "hospital-b", b_blocks)
    assert state(service) == (1, ["hospital-a", "hospital-b"])


def test_get_aggregate_refusals(fetch: Fetch, start: Start) -> None:
    _, target = start()
    for round_number in (0, 2, 5):
        with pytest.raises(TransportError) as never:
            fetch(target, round_number)
        assert never.value.code == grpc.StatusCode.NOT_FOUND
        assert f"round {round_number} has never been opened" in str(never.value)

    with pytest.raises(TransportError) as outsider:
        fetch(target, 1, sender="mallory")
    assert outsider.value.code == grpc.StatusCode.PERMISSION_DENIED

    started = time.monotonic()
    with pytest.raises(TransportError) as waiting:
        fetch(target, 1, timeout=0.6)
    assert waiting.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "round 1 is not aggregated yet: 0 of 3 members have pushed" in str(waiting.value)
    assert time.monotonic() - started < 3


def test_a_secret_context_is_refused(he: HEContext) -> None:
    with pytest.raises(CoordinatorConfigError, match="only the public HE context"):
        CoordinatorService(he, PARAMS, MEMBERS)


def test_bad_settings_are_refused(public: HEContext, tmp_path: Path) -> None:
    context = tmp_path / "public.ctx"
    context.write_bytes(public.public_bytes())
    cases = {
        "min_peers": dict(coordinator_members="a,b", param_count=PARAMS, min_peers=3),
        "names must be unique": dict(coordinator_members="a,a", param_count=PARAMS),
        "no members": dict(param_count=PARAMS),
        "parameter count is not set": dict(coordinator_members="a,b"),
    }
    for message, fields in cases.items():
        settings = CoordinatorSettings(
            coordinator_port=free_port(), coordinator_context=context, **fields
        )
        with pytest.raises(CoordinatorConfigError, match=message):
            serve(settings)
    with pytest.raises(CoordinatorConfigError, match="cannot read the HE context"):
        serve(
            CoordinatorSettings(
                coordinator_context=tmp_path / "missing", coordinator_members="a", param_count=1
            )
        )


def test_serve_from_settings(public: HEContext, he: HEContext, tmp_path: Path) -> None:
    secret = tmp_path / "secret.ctx"
    secret.write_bytes(he.secret_bytes())
    settings = CoordinatorSettings(
        coordinator_port=free_port(),
        coordinator_context=secret,
        coordinator_members="hospital-b, hospital-a",
        param_count=PARAMS,
    )
    with pytest.raises(CoordinatorConfigError, match="contains the secret key"):
        serve(settings)

    context = tmp_path / "public.ctx"
    context.write_bytes(public.public_bytes())
    server = serve(settings.model_copy(update={"coordinator_context": context}))
    try:
        reported = status(f"127.0.0.1:{settings.coordinator_port}")
    finally:
        server.stop(0)
    assert (reported.round, reported.last_aggregated_round) == (1, 0)
    assert list(reported.members) == ["hospital-a", "hospital-b"]


# --------------------------------------------------------------------------- dropouts


def test_deadline_closes_the_round_with_min_peers(
    fetch: Fetch,
    start: Start,
    he: HEContext,
    updates: dict[str, list[bytes]],
    vectors: dict[str, np.ndarray],
) -> None:
    service, target = start(min_peers=2, round_deadline_s=0.5)
    started = time.monotonic()
    push(target, "hospital-a", updates["hospital-a"])
    push(target, "hospital-b", updates["hospital-b"])
    header, blocks = fetch(target, 1)
    assert time.monotonic() - started >= 0.45
    assert list(header.contributors) == ["hospital-a", "hospital-b"]
    weights = weights_from_sample_counts([SAMPLES["hospital-a"], SAMPLES["hospital-b"]])
    assert header.weight_sum == sum(weights)
    mean = he.decrypt(blocks, PARAMS) / header.weight_sum
    reference = np.average([vectors["hospital-a"], vectors["hospital-b"]], axis=0, weights=weights)
    assert np.max(np.abs(mean - reference)) < 1e-6
    assert state(service) == (2, [])

    with pytest.raises(TransportError) as late:
        push(target, "hospital-c", updates["hospital-c"])
    assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "round 1 is not open; the coordinator is at round 2" in str(late.value)
    push(target, "hospital-c", updates["hospital-c"], round_number=2)
    assert state(service) == (2, ["hospital-c"])


def test_past_the_deadline_a_round_waits_for_min_peers(
    fetch: Fetch, start: Start, updates: dict[str, list[bytes]]
) -> None:
    service, target = start(min_peers=2, round_deadline_s=0.3)
    push(target, "hospital-a", updates["hospital-a"])
    time.sleep(0.5)
    assert state(service) == (1, ["hospital-a"])
    with pytest.raises(TransportError) as waiting:
        fetch(target, 1, timeout=0.4)
    assert waiting.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    push(target, "hospital-c", updates["hospital-c"])
    assert state(service) == (2, [])
    header, _ = fetch(target, 1, timeout=2.0)
    assert list(header.contributors) == ["hospital-a", "hospital-c"]
