"""The federated coordinator on real gRPC servers over mutual TLS, with real CKKS
ciphertexts and its members registered on a real devnet."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import Devnet, free_port
from apiary.coordinator.metrics import MetricsPortInUse, serve_metrics
from apiary.coordinator.server import CoordinatorConfigError, CoordinatorService, serve
from apiary.core.coefficients import (
    SLOTS_PER_BLOCK,
    block_digest,
    block_from_bytes,
    block_to_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.he import HEContext
from apiary.core.settings import CoordinatorSettings
from apiary.core.tls import COORDINATOR_CERT, TlsFiles, create_self_signed
from apiary.core.transport import TransportError, fetch_aggregate, push_update, sign_update
from apiary.node.federated import CHANNEL_OPTIONS
from apiary.wire import apiary_pb2, apiary_pb2_grpc
from tests.test_transport import bad_update_streams, make_header, with_coefficient

pytestmark = pytest.mark.chain

PARAMS = 2 * SLOTS_PER_BLOCK - 37
BLOCKS = 2
MEMBERS = ("hospital-a", "hospital-b", "hospital-c")
SAMPLES = {"hospital-a": 120, "hospital-b": 300, "hospital-c": 45}
DATASET_SIZES = {"hospital-a": 200, "hospital-b": 300, "hospital-c": 50}
OUTSIDER = "mallory"
"""Has a key and a certificate of its own; the chain lists neither."""


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


@dataclass
class Federation:
    """A founded swarm (contract, members with their own keys and certificates, the swarm
    directory `apiary found` writes) and the coordinators started for it."""

    admin: SwarmContract
    rpc_url: str
    swarm_dir: Path
    state_dir: Path
    keys: dict[str, str]
    tls: dict[str, TlsFiles]
    running: list[tuple[CoordinatorService, grpc.Server]] = field(default_factory=list)

    @property
    def contract(self) -> str:
        return self.admin.address

    def address(self, name: str) -> str:
        return self.admin.as_account(self.keys[name]).sender

    def settings(self, **fields: object) -> CoordinatorSettings:
        base: dict[str, object] = {
            "coordinator_port": free_port(), "coordinator_swarm": self.swarm_dir,
            "coordinator_state": self.state_dir, "min_peers": 2,
        }
        return CoordinatorSettings(**(base | fields))

    def start(self, **fields: object) -> tuple[CoordinatorService, str]:
        service, server, port = serve(self.settings(**fields))
        self.running.append((service, server))
        return service, f"127.0.0.1:{port}"

    def kill(self, service: CoordinatorService) -> None:
        """Stop a coordinator at once, as kill -9 would: nothing is flushed on the way out."""
        for entry in list(self.running):
            if entry[0] is service:
                entry[1].stop(0)
                self.running.remove(entry)

    def credentials(self, name: str | None) -> grpc.ChannelCredentials:
        pinned = (self.swarm_dir / COORDINATOR_CERT).read_bytes()
        if name is None:
            return grpc.ssl_channel_credentials(root_certificates=pinned)
        return self.tls[name].channel_credentials(pinned)

    def header(self, name: str, blocks: list[bytes], round_number: int = 1, *,
               samples: int | None = None, signer: str | None = None,
               sender: str | None = None) -> apiary_pb2.UpdateHeader:
        header = make_header(blocks, round_number=round_number,
                             sender=sender or self.address(name),
                             samples=SAMPLES.get(name, 10) if samples is None else samples)
        signing = self.keys[signer or name]
        if sender is not None:
            header.signature = sign_update(
                make_header(blocks, round_number=round_number, sender="",
                            samples=header.sample_count), self.contract, signing).signature
            return header
        return sign_update(header, self.contract, signing)

    def push(self, target: str, name: str, blocks: list[bytes], round_number: int = 1) -> None:
        reply = push_update(target, self.header(name, blocks, round_number), blocks, timeout=10,
                            service="coordinator", channel_options=CHANNEL_OPTIONS,
                            credentials=self.credentials(name))
        assert (reply.round, reply.blocks_received) == (round_number, BLOCKS)

    def raw_push(self, target: str, chunks: list, name: str | None) -> grpc.RpcError:
        """Send arbitrary chunks as member `name` (None: no client certificate)."""
        with (grpc.secure_channel(target, self.credentials(name),
                                  options=list(CHANNEL_OPTIONS)) as channel,
              pytest.raises(grpc.RpcError) as info):
            apiary_pb2_grpc.CoordinatorStub(channel).PushUpdate(iter(chunks), timeout=10)
        return info.value

    def fetch(self, target: str, round_number: int, name: str = "hospital-a",
              timeout: float = 10.0) -> tuple[apiary_pb2.AggregateHeader, list[bytes]]:
        return fetch_aggregate(target, round_number, self.address(name) if name in self.keys
                               else name, modulus=self.admin.he_parameters().modulus,
                               timeout=timeout, expected_blocks=BLOCKS,
                               channel_options=CHANNEL_OPTIONS, credentials=self.credentials(name))

    def status(self, target: str, name: str = "hospital-a") -> apiary_pb2.CoordinatorStatus:
        with grpc.secure_channel(target, self.credentials(name),
                                 options=list(CHANNEL_OPTIONS)) as channel:
            stub = apiary_pb2_grpc.CoordinatorStub(channel)
            return stub.Status(apiary_pb2.CoordinatorStatusRequest(), timeout=5)


def stream(header: apiary_pb2.UpdateHeader, blocks: list[bytes]) -> list:
    return [apiary_pb2.UpdateChunk(header=header)] + [
        apiary_pb2.UpdateChunk(data=b) for b in blocks
    ]


@pytest.fixture
def federation(devnet: Devnet, w3: Web3, dev_keys: list[str], public: HEContext,
               tmp_path: Path) -> Iterator[Federation]:
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=PARAMS, modulus=public.modulus,
                                 context_digest=public.public_digest(), min_peers=2)
    keys = {name: dev_keys[i + 1] for i, name in enumerate(MEMBERS)} | {OUTSIDER: dev_keys[9]}
    tls = {name: create_self_signed(name, ["127.0.0.1"]) for name in keys}
    for i, name in enumerate(MEMBERS):
        admin.add_member(admin.as_account(keys[name]).sender, f"127.0.0.1:{62000 + i}",
                         bytes([i + 1]) * 32, tls[name].cert, DATASET_SIZES[name])
    swarm_dir = tmp_path / "swarm"
    swarm_dir.mkdir()
    (swarm_dir / "he-public.ctx").write_bytes(public.public_bytes())
    (swarm_dir / "swarm.json").write_text(json.dumps({
        "contract": admin.address, "rpc_url": devnet.rpc_url, "param_count": PARAMS,
        "members": [{"name": n, "address": admin.as_account(keys[n]).sender,
                     "endpoint": "127.0.0.1:1"} for n in MEMBERS],
    }))
    fed = Federation(admin, devnet.rpc_url, swarm_dir, tmp_path / "coordinator", keys, tls)
    yield fed
    for service, server in fed.running:
        service.rounds.stop()
        server.stop(0)


def expected_blocks(updates: dict[str, list[bytes]], names: list[str], q: int) -> list[bytes]:
    weights = weights_from_sample_counts([SAMPLES[n] for n in names])
    return [block_to_bytes(weighted_sum([block_from_bytes(updates[n][i], q) for n in names],
                                        weights, q)) for i in range(BLOCKS)]


# --------------------------------------------------------------------------- a full round


def test_three_hospitals_get_the_weighted_mean(
    federation: Federation, he: HEContext, updates: dict[str, list[bytes]],
    vectors: dict[str, np.ndarray],
) -> None:
    service, target = federation.start()
    assert (federation.swarm_dir / COORDINATOR_CERT).read_bytes() == \
        (federation.state_dir / "tls" / "node.pem").read_bytes()
    with ThreadPoolExecutor(max_workers=4) as pool:
        waiting = pool.submit(federation.fetch, target, 1, "hospital-a", 20.0)
        pushes = [pool.submit(federation.push, target, name, updates[name]) for name in MEMBERS]
        for pushed in pushes:
            pushed.result()
        header, blocks = waiting.result()

    names = sorted(MEMBERS)
    weights = weights_from_sample_counts([SAMPLES[n] for n in names])
    assert list(header.contributors) == names
    assert (header.round, header.weight_sum) == (1, sum(weights))
    assert blocks == expected_blocks(updates, names, he.modulus)
    mean = he.decrypt(blocks, PARAMS) / header.weight_sum
    reference = np.average([vectors[n] for n in names], axis=0, weights=weights)
    assert np.max(np.abs(mean - reference)) < 1e-6

    assert (service.rounds.current_round, service.rounds.pending_senders()) == (2, [])
    reported = federation.status(target)
    assert (reported.round, reported.last_aggregated_round) == (2, 1)
    assert (reported.param_count, list(reported.members)) == (PARAMS, names)
    again, _ = federation.fetch(target, 1, "hospital-c", timeout=2.0)
    assert again == header


def scraped(url: str) -> dict[str, float]:
    """The unlabelled samples of a scrape, and the labelled ones as name{label=value}."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_the_coordinators_metrics_count_a_round_over_http(
    federation: Federation, updates: dict[str, list[bytes]],
) -> None:
    service, target = federation.start()
    exporter = serve_metrics(service.metrics, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    try:
        before = scraped(url)
        assert before["apiary_coordinator_members"] == 3
        assert before["apiary_coordinator_round"] == 1
        assert before["apiary_coordinator_updates_received_total"] == 0
        for name in MEMBERS:
            federation.push(target, name, updates[name])
        again = stream(federation.header("hospital-a", updates["hospital-a"], round_number=1),
                       updates["hospital-a"])
        federation.raw_push(target, again, "hospital-a")  # round 1 is closed: refused
        forged = federation.header("hospital-c", updates["hospital-b"], round_number=2,
                                   sender=federation.address("hospital-b"))
        federation.raw_push(target, stream(forged, updates["hospital-b"]), "hospital-b")
        after = scraped(url)
        with pytest.raises(MetricsPortInUse, match="cannot serve the coordinator's metrics"):
            serve_metrics(service.metrics, "127.0.0.1", exporter.port)
    finally:
        exporter.stop()
    assert after["apiary_coordinator_updates_received_total"] == 3
    assert after["apiary_coordinator_bytes_received_total"] == sum(
        len(b) for name in MEMBERS for b in updates[name])
    assert after["apiary_coordinator_rounds_closed_total"] == 1
    assert after["apiary_coordinator_round_seconds_count"] == 1
    assert after["apiary_coordinator_round"] == 2
    assert after["apiary_coordinator_updates_refused_total{reason=wrong_round}"] == 1
    assert after["apiary_coordinator_updates_refused_total{reason=not_permitted}"] == 1
    assert after["apiary_coordinator_updates_refused_total{reason=malformed}"] == 0
    assert after["process_cpu_seconds_total"] > 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


# --------------------------------------------------------------------------- refusals


def test_malformed_pushes_are_refused_and_change_nothing(
    federation: Federation, updates: dict[str, list[bytes]], he: HEContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="apiary.coordinator")
    service, target = federation.start(min_peers=3)
    federation.push(target, "hospital-a", updates["hospital-a"])
    a = federation.address("hospital-a")
    before = (service.rounds.current_round, service.rounds.pending_senders())
    assert before == (1, [a])

    b_blocks = updates["hospital-b"]
    cases = bad_update_streams(federation.header("hospital-b", b_blocks), b_blocks,
                               updates["hospital-c"], he.modulus)
    unreduced = [with_coefficient(b_blocks[0], 5, he.modulus), *b_blocks[1:]]
    cases["coefficient >= q"] = (
        stream(federation.header("hospital-b", unreduced), unreduced),
        grpc.StatusCode.INVALID_ARGUMENT, "block 0 is malformed")
    cases |= {
        "wrong round": (
            stream(federation.header("hospital-b", b_blocks, round_number=2), b_blocks),
            grpc.StatusCode.FAILED_PRECONDITION,
            "round 2 is not open; the coordinator is at round 1",
        ),
        "round zero": (
            stream(federation.header("hospital-b", b_blocks, round_number=0), b_blocks),
            grpc.StatusCode.FAILED_PRECONDITION,
            "round 0 is not open",
        ),
        "second push": (
            stream(federation.header("hospital-a", updates["hospital-a"]),
                   updates["hospital-a"]),
            grpc.StatusCode.ALREADY_EXISTS,
            "round 1: hospital-a has already pushed",
        ),
    }
    for name, (chunks, code, message) in cases.items():
        sender = "hospital-a" if name == "second push" else "hospital-b"
        error = federation.raw_push(target, chunks, sender)
        assert (error.code(), name) == (code, name)
        assert message in error.details(), name
        assert (service.rounds.current_round, service.rounds.pending_senders()) == before, name
    refused = {reason: service.metrics.registry.get_sample_value(
        "apiary_coordinator_updates_refused_total", {"reason": reason})
        for reason in ("malformed", "too_large", "wrong_round", "duplicate")}
    assert refused["wrong_round"] == 2 and refused["duplicate"] == 1
    assert sum(refused.values()) == len(cases), refused
    assert service.metrics.registry.get_sample_value(
        "apiary_coordinator_updates_received_total") == 1

    logged = caplog.text
    assert f"round 1: refused the update of '{a}': ALREADY_EXISTS" in logged
    assert "round 1: accepted the update of hospital-a" in logged

    federation.push(target, "hospital-b", b_blocks)
    assert service.rounds.pending_senders() == sorted([a, federation.address("hospital-b")])


def test_get_aggregate_refusals(federation: Federation) -> None:
    _, target = federation.start()
    for round_number in (0, 2, 5):
        with pytest.raises(TransportError) as never:
            federation.fetch(target, round_number)
        assert never.value.code == grpc.StatusCode.NOT_FOUND
        assert f"round {round_number} has never been opened" in str(never.value)

    started = time.monotonic()
    with pytest.raises(TransportError) as waiting:
        federation.fetch(target, 1, timeout=0.6)
    assert waiting.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "round 1 is not aggregated yet: 0 of 3 members have pushed" in str(waiting.value)
    assert time.monotonic() - started < 3


def test_a_secret_context_is_refused(federation: Federation, he: HEContext) -> None:
    secret = federation.swarm_dir / "secret.ctx"
    secret.write_bytes(he.secret_bytes())
    with pytest.raises(CoordinatorConfigError, match="contains the secret key"):
        federation.start(coordinator_context=secret)


def test_bad_settings_are_refused_in_one_line(federation: Federation, tmp_path: Path) -> None:
    cases = {
        "found the swarm first": dict(coordinator_swarm=tmp_path / "nowhere"),
        "min_peers is 4 but the swarm has 3 active member": dict(min_peers=4),
        f"--param-count is 7 but the swarm's contract expects {PARAMS}": dict(param_count=7),
        "cannot read the HE context": dict(coordinator_context=tmp_path / "missing.ctx"),
        "cannot read swarm": dict(rpc_url="http://127.0.0.1:1"),
    }
    for message, fields in cases.items():
        with pytest.raises(CoordinatorConfigError, match=message):
            federation.start(**fields)
    assert not federation.running


# --------------------------------------------------------------------------- dropouts


def test_deadline_closes_the_round_with_min_peers(
    federation: Federation, he: HEContext, updates: dict[str, list[bytes]],
    vectors: dict[str, np.ndarray],
) -> None:
    service, target = federation.start(min_peers=2, round_deadline_s=0.5)
    started = time.monotonic()
    federation.push(target, "hospital-a", updates["hospital-a"])
    federation.push(target, "hospital-b", updates["hospital-b"])
    header, blocks = federation.fetch(target, 1)
    assert time.monotonic() - started >= 0.45
    assert list(header.contributors) == ["hospital-a", "hospital-b"]
    weights = weights_from_sample_counts([SAMPLES["hospital-a"], SAMPLES["hospital-b"]])
    assert header.weight_sum == sum(weights)
    mean = he.decrypt(blocks, PARAMS) / header.weight_sum
    reference = np.average([vectors["hospital-a"], vectors["hospital-b"]], axis=0,
                           weights=weights)
    assert np.max(np.abs(mean - reference)) < 1e-6
    assert service.rounds.current_round == 2

    with pytest.raises(TransportError) as late:
        federation.push(target, "hospital-c", updates["hospital-c"])
    assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "round 1 is not open; the coordinator is at round 2" in str(late.value)
    federation.push(target, "hospital-c", updates["hospital-c"], round_number=2)
    assert service.rounds.pending_senders() == [federation.address("hospital-c")]


def test_past_the_deadline_a_round_waits_for_min_peers(
    federation: Federation, updates: dict[str, list[bytes]]
) -> None:
    service, target = federation.start(min_peers=2, round_deadline_s=0.3)
    federation.push(target, "hospital-a", updates["hospital-a"])
    time.sleep(0.5)
    assert service.rounds.current_round == 1
    with pytest.raises(TransportError) as waiting:
        federation.fetch(target, 1, timeout=0.4)
    assert waiting.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    federation.push(target, "hospital-c", updates["hospital-c"])
    assert service.rounds.current_round == 2
    header, _ = federation.fetch(target, 1, timeout=2.0)
    assert list(header.contributors) == ["hospital-a", "hospital-c"]


# --------------------------------------------------------------------------- restarts


def test_a_killed_coordinator_resumes_at_its_round_with_its_aggregates_and_updates(
    federation: Federation, he: HEContext, updates: dict[str, list[bytes]],
) -> None:
    first, target = federation.start()
    for name in MEMBERS:
        federation.push(target, name, updates[name])
    served, served_blocks = federation.fetch(target, 1)
    federation.push(target, "hospital-a", updates["hospital-a"], round_number=2)
    federation.kill(first)

    again, target = federation.start()
    assert again.rounds.current_round == 2
    assert again.rounds.pending_senders() == [federation.address("hospital-a")]
    header, blocks = federation.fetch(target, 1)
    assert (header, blocks) == (served, served_blocks)
    with pytest.raises(TransportError) as twice:
        federation.push(target, "hospital-a", updates["hospital-a"], round_number=2)
    assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
    federation.push(target, "hospital-b", updates["hospital-b"], round_number=2)
    federation.push(target, "hospital-c", updates["hospital-c"], round_number=2)
    second, second_blocks = federation.fetch(target, 2)
    assert list(second.contributors) == sorted(MEMBERS)
    assert second_blocks == expected_blocks(updates, sorted(MEMBERS), he.modulus)
    assert [block_digest(b) for b in second_blocks] == list(second.block_digests)

    federation.kill(again)
    third, target = federation.start()
    assert third.rounds.current_round == 3
    assert federation.fetch(target, 2)[0] == second


def test_a_state_directory_of_another_swarm_is_refused(
    federation: Federation, updates: dict[str, list[bytes]], w3: Web3, dev_keys: list[str],
    public: HEContext,
) -> None:
    service, target = federation.start()
    for name in MEMBERS:
        federation.push(target, name, updates[name])
    assert service.rounds.current_round == 2
    federation.kill(service)
    other = SwarmContract.deploy(w3, dev_keys[0], param_count=PARAMS, modulus=public.modulus,
                                 context_digest=public.public_digest(), min_peers=1)
    record = json.loads((federation.swarm_dir / "swarm.json").read_text())
    for i, name in enumerate(MEMBERS):
        other.add_member(federation.address(name), f"127.0.0.1:{63000 + i}",
                         bytes([i + 1]) * 32, federation.tls[name].cert, DATASET_SIZES[name])
    (federation.swarm_dir / "swarm.json").write_text(
        json.dumps(record | {"contract": other.address}))
    with pytest.raises(CoordinatorConfigError, match="holds the rounds of swarm"):
        federation.start()
