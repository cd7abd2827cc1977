"""Federated mode authenticates as swarm mode does: only members' certificates pass the
coordinator's handshake, an update must be its sender's own, signed, with a sample count
its registered dataset allows; nodes wait out outages and never rewrite their history.

Real parts throughout: a devnet holding the members, the coordinator's gRPC server over
mutual TLS, CKKS ciphertexts, and the node's own federated client."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from apiary.core.he import HEContext
from apiary.core.tls import COORDINATOR_CERT, create_self_signed
from apiary.core.transport import TransportError, fetch_aggregate
from apiary.node import federated
from apiary.node.federated import CHANNEL_OPTIONS, FederatedRound
from apiary.node.rounds import RoundFailed
from apiary.node.state import HistoryConflict, NodeState, RoundRecord
from apiary.tools.demo import LocalSwarm
from apiary.wire import apiary_pb2, apiary_pb2_grpc
from tests import test_coordinator as shared
from tests.test_coordinator import (
    BLOCKS,
    DATASET_SIZES,
    MEMBERS,
    OUTSIDER,
    PARAMS,
    SAMPLES,
    Federation,
    stream,
)
from tests.test_swarm_e2e import THREE, finished, options

# The coordinator tests' fixtures: a founded swarm on the devnet and CKKS updates.
federation, public = shared.federation, shared.public
updates, vectors = shared.updates, shared.vectors

pytestmark = pytest.mark.chain

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def unchanged(fed: Federation, target: str) -> tuple[int, list[str]]:
    service = next(s for s, _ in fed.running)
    return service.rounds.current_round, service.rounds.pending_senders()


def fetch_with(fed: Federation, target: str, credentials: grpc.ChannelCredentials,
               round_number: int = 1) -> TransportError:
    with pytest.raises(TransportError) as info:
        fetch_aggregate(target, round_number, "anyone", modulus=fed.admin.he_parameters().modulus,
                        timeout=5, channel_options=CHANNEL_OPTIONS, credentials=credentials)
    return info.value


def client(fed: Federation, name: str, target: str, he: HEContext, *,
           saved_round: int = 0, stop: threading.Event | None = None) -> FederatedRound:
    """The node's own federated client, as `apiary node --mode federated` builds it."""
    return FederatedRound(target, he, name, 20.0, private_key=fed.keys[name],
                          address=fed.address(name), contract_address=fed.contract,
                          tls=fed.tls[name], certificate=fed.swarm_dir / COORDINATOR_CERT,
                          saved_round=lambda: saved_round, stop=stop or threading.Event())


# --------------------------------------------------------------------------- who may talk


def test_non_members_are_refused_push_and_aggregate(
    federation: Federation, updates: dict[str, list[bytes]],
) -> None:
    _, target = federation.start()
    for name in MEMBERS:
        federation.push(target, name, updates[name])
    before = unchanged(federation, target)
    pinned = (federation.swarm_dir / COORDINATOR_CERT).read_bytes()
    blocks = updates["hospital-a"]
    stranger = create_self_signed("hospital-a", ["127.0.0.1"])  # a look-alike of a member's
    callers = {
        "no certificate": grpc.ssl_channel_credentials(root_certificates=pinned),
        "unregistered certificate": federation.credentials(OUTSIDER),
        "look-alike certificate": stranger.channel_credentials(pinned),
    }
    for what, credentials in callers.items():
        header = federation.header(OUTSIDER, blocks, round_number=2)
        with (grpc.secure_channel(target, credentials, options=list(CHANNEL_OPTIONS)) as channel,
              pytest.raises(grpc.RpcError) as push):
            apiary_pb2_grpc.CoordinatorStub(channel).PushUpdate(
                iter(stream(header, blocks)), timeout=5)
        assert push.value.code() == grpc.StatusCode.UNAVAILABLE, what  # the handshake fails
        assert fetch_with(federation, target, credentials).code == grpc.StatusCode.UNAVAILABLE
        assert unchanged(federation, target) == before, what
    with grpc.insecure_channel(target) as plain, pytest.raises(grpc.RpcError) as cleartext:
        apiary_pb2_grpc.CoordinatorStub(plain).Status(apiary_pb2.CoordinatorStatusRequest(),
                                                      timeout=5)
    assert cleartext.value.code() == grpc.StatusCode.UNAVAILABLE
    assert federation.fetch(target, 1)[0].round == 1, "a member still gets it"


def test_a_removed_member_is_refused_at_once(
    federation: Federation, updates: dict[str, list[bytes]],
) -> None:
    service, target = federation.start()
    trust = service.members.trust
    trust.ttl_s = 60.0  # its handshake still passes on the cached bundle: the call checks
    federation.push(target, "hospital-a", updates["hospital-a"])
    before = unchanged(federation, target)
    federation.admin.remove_member(federation.address("hospital-c"),
                                   HEContext.create().public_digest())
    error = federation.raw_push(target, stream(federation.header("hospital-c",
                                                                 updates["hospital-c"]),
                                               updates["hospital-c"]), "hospital-c")
    assert error.code() == DENIED
    assert "not registered for an active member" in error.details()
    refused = fetch_with(federation, target, federation.credentials("hospital-c"))
    assert refused.code == DENIED
    assert unchanged(federation, target) == before
    trust.invalidate()
    assert fetch_with(federation, target, federation.credentials("hospital-c")).code == \
        grpc.StatusCode.UNAVAILABLE, "once the bundle is read again, not even the handshake"
    federation.push(target, "hospital-b", updates["hospital-b"])
    assert federation.fetch(target, 1)[0].contributors == ["hospital-a", "hospital-b"], \
        "the round is complete without the removed member"


def test_a_member_cannot_push_under_another_members_name(
    federation: Federation, updates: dict[str, list[bytes]],
) -> None:
    _, target = federation.start()
    blocks, b = updates["hospital-b"], federation.address("hospital-b")
    cases = {
        # b's own, validly signed header, sent over a's connection (a replays or relays it)
        "b's signed header": federation.header("hospital-b", blocks),
        # a header naming b, signed with a's key
        "signed by a": federation.header("hospital-a", blocks, sender=b),
    }
    for what, header in cases.items():
        error = federation.raw_push(target, stream(header, blocks), "hospital-a")
        assert error.code() == DENIED, what
        assert f"names {b!r} as its sender, but the caller's certificate is member " \
               f"{federation.address('hospital-a')}'s (hospital-a)" in error.details(), what
        assert unchanged(federation, target) == (1, []), what


def test_a_bad_signature_is_refused(
    federation: Federation, updates: dict[str, list[bytes]],
) -> None:
    _, target = federation.start()
    blocks, a = updates["hospital-a"], federation.address("hospital-a")
    signed = federation.header("hospital-a", blocks)
    flipped = apiary_pb2.UpdateHeader()
    flipped.CopyFrom(signed)
    flipped.signature = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    unsigned = apiary_pb2.UpdateHeader()
    unsigned.CopyFrom(signed)
    unsigned.ClearField("signature")
    altered = apiary_pb2.UpdateHeader()
    altered.CopyFrom(signed)
    altered.sample_count = 199  # within a's dataset, but not what it signed
    by_b = federation.header("hospital-a", blocks, sender=a, signer="hospital-b")
    for what, header in {"flipped": flipped, "unsigned": unsigned, "altered": altered,
                         "signed by b": by_b}.items():
        error = federation.raw_push(target, stream(header, blocks), "hospital-a")
        assert error.code() == DENIED, what
        assert f"not signed by {a}'s Ethereum key" in error.details(), what
        assert unchanged(federation, target) == (1, []), what
    federation.push(target, "hospital-a", blocks)


def test_sample_counts_outside_the_registered_dataset_are_refused(
    federation: Federation, updates: dict[str, list[bytes]],
) -> None:
    _, target = federation.start()
    blocks = updates["hospital-a"]
    bound = DATASET_SIZES["hospital-a"]
    for samples, words in {0: "sample_count is 0; it must be at least 1",
                           2**63: f"sample_count is {2**63}; hospital-a may weigh a round with "
                                  f"1 to {bound} samples",
                           2**64 - 1: "1 to 200 samples",
                           bound + 1: f"sample_count is {bound + 1}"}.items():
        header = federation.header("hospital-a", blocks, samples=samples)
        error = federation.raw_push(target, stream(header, blocks), "hospital-a")
        assert (error.code(), samples) == (INVALID, samples)
        assert words in error.details()
        assert unchanged(federation, target) == (1, [])
    header = federation.header("hospital-a", blocks, samples=bound)
    # the bound itself is allowed
    with grpc.secure_channel(target, federation.credentials("hospital-a"),
                             options=list(CHANNEL_OPTIONS)) as channel:
        reply = apiary_pb2_grpc.CoordinatorStub(channel).PushUpdate(
            iter(stream(header, blocks)), timeout=10)
    assert reply.blocks_received == BLOCKS


# --------------------------------------------------------------------------- the node's side


def test_nodes_run_a_round_through_the_authenticated_coordinator(
    federation: Federation, he: HEContext, vectors: dict[str, np.ndarray],
) -> None:
    _, target = federation.start()
    clients = {name: client(federation, name, target, he) for name in MEMBERS}
    assert {c.current_round() for c in clients.values()} == {1}

    def run(name: str):  # type: ignore[no-untyped-def]
        return clients[name].run(1, lambda: (vectors[name], 0.5, SAMPLES[name]), PARAMS)

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(run, MEMBERS))
    reference = np.average([vectors[n] for n in MEMBERS], axis=0,
                           weights=[SAMPLES[n] for n in MEMBERS])
    for outcome in outcomes:
        assert outcome.contributors == sorted(MEMBERS)
        assert np.max(np.abs(outcome.weights - reference)) < 1e-6
    assert clients["hospital-b"].current_round() == 2


def test_a_node_whose_saved_round_is_ahead_waits_and_does_not_rerun(
    federation: Federation, he: HEContext, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(federated, "AHEAD_POLL_S", 0.2)
    caplog.set_level(logging.INFO, logger="apiary.node.federated")
    service, target = federation.start()  # a coordinator that lost its state: at round 1
    stop = threading.Event()
    ahead = client(federation, "hospital-a", target, he, saved_round=5, stop=stop)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(ahead.current_round)
        time.sleep(1.0)
        assert not waiting.done(), "it must not hand out round 1 to a node at round 5"
        stop.set()
        with pytest.raises(RoundFailed, match="waiting for the coordinator to reach round 6"):
            waiting.result(timeout=5)
    lines = [r.getMessage() for r in caplog.records if "ahead of coordinator" in r.getMessage()]
    assert len(lines) == 1
    assert "saved round 5 is ahead of coordinator" in lines[0] and "(at round 1)" in lines[0]
    assert (service.rounds.current_round, service.rounds.pending_senders()) == (1, [])


def test_a_saved_history_is_never_rewritten(tmp_path: Path) -> None:
    state = NodeState.open(tmp_path)

    def record(round_number: int) -> RoundRecord:
        return RoundRecord(round=round_number, contributors=["a"], weight_sum=1, accuracy=0.5,
                           auc=None, loss=None, train_loss=None, heldout_accuracy=None,
                           heldout_auc=None, weights_digest=f"d{round_number}", seconds={})

    for r in (1, 2, 3):
        state.save(np.full(3, float(r)), r, f"d{r}", record(r))
    saved = (state.state_path.read_bytes(), state.weights_path.read_bytes())
    for r in (1, 3):
        with pytest.raises(HistoryConflict, match=f"round {r} is not after the saved round 3"):
            state.save(np.zeros(3), r, "again", record(r))
    assert (state.state_path.read_bytes(), state.weights_path.read_bytes()) == saved
    reopened = NodeState.open(tmp_path)
    assert reopened.round == 3 and [r.round for r in reopened.history] == [1, 2, 3]


def test_an_unreachable_coordinator_is_waited_out_in_one_line(
    federation: Federation, he: HEContext, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(federated, "RETRY_FIRST_S", 0.1)
    monkeypatch.setattr(federated, "RETRY_MAX_S", 0.4)
    caplog.set_level(logging.INFO, logger="apiary.node.federated")
    first, target = federation.start()  # publishes its certificate, then goes away
    port = int(target.rsplit(":", 1)[1])
    federation.kill(first)
    node = client(federation, "hospital-a", target, he)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(node.current_round)
        time.sleep(1.5)
        assert not waiting.done()
        federation.start(coordinator_port=port)
        assert waiting.result(timeout=30) == 1
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(down) == 1 and down[0].levelno == logging.WARNING
    assert down[0].exc_info is None
    assert any("is back after" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_a_coordinator_killed_mid_run_resumes_and_no_node_rewrites_a_round(
    tmp_path: Path,
) -> None:
    """kill -9 of the coordinator process between rounds; restarted on its state directory,
    it resumes at its round, and every node's history holds each round once, in order."""
    with LocalSwarm(options(tmp_path, "federated", 5), THREE) as fed:
        fed.found()
        nodes = fed.start_all()
        fed.wait_until(lambda: finished(fed, THREE, 2), 180, "round 2 everywhere")
        fed.kill_coordinator()
        time.sleep(2.0)
        fed.start_coordinator()
        fed.wait_until(lambda: all(n.process.poll() is not None for n in nodes), 240,
                       "five federated rounds")
        assert all(n.process.returncode == 0 for n in nodes)
        for name in THREE:
            rounds = [r["round"] for r in fed.history(name)]
            assert rounds == sorted(set(rounds)) and rounds[-1] == 5, (name, rounds)
            log = (fed.out / "logs" / f"{name}.log").read_text()
            assert "Traceback" not in log
        weights = [np.load(fed.state_dir(n) / "global.npy") for n in THREE]
        assert all(np.array_equal(weights[0], w) for w in weights[1:])
        coordinator = (fed.out / "logs" / "coordinator.log").read_text()
        assert "resuming at round" in coordinator
