"""The node's round loop: it never dies on one round, never adopts poison, waits outages out.

The trainer, state and model check are the node's own, on the bundled data; the round
driver is scripted here, because what is under test is the loop's reaction to each outcome
(the real chain rounds that produce such outcomes are in test_masked_round and test_soak).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from web3.exceptions import BadFunctionCallOutput

from apiary.chain.binding import SwarmContract
from apiary.core.data.sample import write_sample_shard
from apiary.core.settings import NodeSettings
from apiary.node import runtime
from apiary.node.invites import InviteBook
from apiary.node.keys import KeyRing
from apiary.node.ports import SwarmLink
from apiary.node.rounds import RoundOutcome
from apiary.node.state import HistoryConflict, NodeState
from apiary.node.trainer import LocalTrainer

TOKEN = "loop-test-token-0123456789"


@dataclass
class ScriptedDriver:
    """Plays one step per round: an exception to raise, or weights to return."""

    steps: list[Callable[[np.ndarray], np.ndarray]]
    round: int = 1
    seen: list[int] = field(default_factory=list)

    def current_round(self) -> int:
        return self.round

    def last_finalized_round(self) -> int:
        return 0

    def run(self, round_number: int, train, param_count: int) -> RoundOutcome:  # type: ignore[no-untyped-def]
        self.seen.append(round_number)
        weights, _, _ = train()
        step = self.steps.pop(0)
        result = step(weights)
        self.round += 1
        return RoundOutcome(round=round_number, weights=result, weight_sum=2,
                            contributors=["a", "b"], aggregate_digests=[])

    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome:
        raise AssertionError("nothing to catch up")


def raising(exc: Exception) -> Callable[[np.ndarray], np.ndarray]:
    def step(_: np.ndarray) -> np.ndarray:
        raise exc
    return step


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> runtime.NodeRuntime:
    monkeypatch.setattr(runtime.Backoff, "__init__", lambda self: None)  # no waiting
    monkeypatch.setattr(runtime.Backoff, "next", lambda self: 0.0)
    monkeypatch.setattr(runtime.Backoff, "reset", lambda self: None)
    data = tmp_path / "va.npz"
    write_sample_shard("va", data)
    settings = NodeSettings(name="va", admin_token=TOKEN, state_dir=tmp_path / "state",
                            data=data, rounds=3)
    trainer = LocalTrainer.from_settings(settings)
    node = runtime.NodeRuntime(settings, trainer, NodeState.open(settings.state_dir),
                               KeyRing(settings.state_dir), InviteBook(settings.state_dir))
    node.ready.set()
    return node


def test_poison_is_rejected_and_failures_do_not_stop_the_loop(node, caplog) -> None:
    poison = np.random.default_rng(1).uniform(-1e5, 1e5)
    driver = ScriptedDriver([
        raising(ValueError("scale out of bounds")),      # round 1: an unexpected error
        raising(ConnectionError("chain refused")),        # round 1 again: an outage
        lambda w: w + poison,                             # round 1: a poisoned aggregate
        lambda w: w,                                      # round 2: honest
        lambda w: w * 1e9,                                # round 3: poisoned again
    ])
    node.driver = driver
    node.run()
    history = node.state.snapshot()["history"]
    assert [(r["round"], r["status"]) for r in history] == [
        (1, "rejected"), (2, "adopted"), (3, "rejected")]
    assert "exceeds the bound" in history[0]["reason"]
    initial = node.trainer.initial_weights()
    assert driver.seen == [1, 1, 1, 2, 3]
    adopted = node.state.load_weights()
    assert adopted is not None and np.all(np.isfinite(adopted))
    assert np.max(np.abs(adopted)) < 1e3 and adopted.shape == initial.shape
    assert history[2]["weights_digest"] == history[1]["weights_digest"], "model kept"
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed unexpectedly (ValueError: scale out of bounds)" in m for m in messages)
    assert sum("cannot reach" in m for m in messages) == 1
    assert any("aggregate rejected" in m and "round=1" in m for m in messages)
    counted = node.metrics.registry.get_sample_value
    assert counted("apiary_rounds_rejected_total", {"node": "va"}) == 2
    assert counted("apiary_rounds_completed_total", {"node": "va"}) == 1
    assert counted("apiary_rounds_failed_total", {"node": "va"}) == 1, "the unexpected error"
    assert counted("apiary_round_seconds_count", {"node": "va"}) == 3, "rounds with an outcome"


def test_a_node_restarted_on_poisoned_saved_weights_starts_again(node) -> None:
    node.state.save(np.full(node.trainer.param_count, np.nan), 4, "bad")
    node.load_or_initialise()
    assert np.all(np.isfinite(node.weights))
    assert node.state.round == 0


def test_a_chain_without_the_swarms_contract_stops_the_node_in_one_line(node, w3,
                                                                         dev_keys) -> None:
    """A devnet restarted without its state answers, but holds no contract any more: the
    node says so and stops, rather than dying on a BadFunctionCallOutput traceback."""
    gone = SwarmContract.at(w3, "0x" + "12" * 20, dev_keys[1])
    node.link = SwarmLink(gone, w3.provider.endpoint_uri, None)
    node.driver = ScriptedDriver([raising(BadFunctionCallOutput("no code at the address"))])
    with pytest.raises(runtime.ContractGone, match="no longer holds the swarm's contract"):
        node.run()
    assert node.phase.startswith("stopped")
    assert node.state.snapshot()["history"] == []


def test_a_node_rests_its_round_interval_after_each_round_it_took_part_in(node) -> None:
    """Rounds on a schedule: after each round the loop waits round_interval_s (on its stop
    event, so a signal still ends the rest at once), and says so in its phase."""
    node.settings = node.settings.model_copy(update={"round_interval_s": 30.0, "rounds": 2})
    rests: list[tuple[float, str]] = []
    node.stop_event.wait = lambda timeout=None: rests.append((timeout, node.phase)) or False
    node.driver = ScriptedDriver([lambda w: w, lambda w: w])
    node.run()
    assert [r["round"] for r in node.state.snapshot()["history"]] == [1, 2]
    assert rests == [(30.0, "resting 30 s before the next round")], "none after the last"


@dataclass
class LaggingView(ScriptedDriver):
    """After round 2, the chain's view says round 2 is open for two polls although it
    finalized it (an RPC node behind the others), then moves on."""

    opens: list[int] = field(default_factory=list)

    def current_round(self) -> int:
        return self.opens.pop(0) if self.opens and self.round > 2 else self.round

    def last_finalized_round(self) -> int:
        return self.round - 1


def test_a_view_behind_the_round_the_node_holds_is_waited_out_and_never_stops_the_node(
    node, caplog, monkeypatch,
) -> None:
    monkeypatch.setattr(runtime, "CHAIN_BEHIND_POLL_S", 0.0)
    driver = LaggingView([lambda w: w, lambda w: w + 0.01, lambda w: w + 0.02], opens=[2, 2])
    node.driver = driver
    node.run()
    history = node.state.snapshot()["history"]
    assert [(r["round"], r["status"]) for r in history] == [
        (1, "adopted"), (2, "adopted"), (3, "adopted")]
    assert driver.seen == [1, 2, 3], "round 2 is not run again"
    lines = [r.getMessage() for r in caplog.records if "the chain is open" in r.getMessage()]
    assert len(lines) == 1, "said once, not at every poll"
    assert "round=2" in lines[0] and "holds round 2" in lines[0]
    assert not (node.state.directory / "orphaned.json").exists()


@dataclass
class FinalizationNotShownYet(ScriptedDriver):
    """After round 2, one poll sees round 2 still open and round 1 the last finalized: the
    node adopted round 2 a moment before the chain's finalization shows."""

    stale_polls: int = 1
    stale: bool = False

    def current_round(self) -> int:
        self.stale = self.round == 3 and self.stale_polls > 0
        if self.stale:
            self.stale_polls -= 1
            return 2
        return self.round

    def last_finalized_round(self) -> int:
        return 1 if self.stale else 0


def test_a_round_adopted_before_its_finalization_shows_is_not_orphaned(
    node, monkeypatch,
) -> None:
    monkeypatch.setattr(runtime, "CHAIN_BEHIND_POLL_S", 0.0)
    driver = FinalizationNotShownYet([lambda w: w, lambda w: w + 0.01, lambda w: w + 0.02])
    node.driver = driver
    node.run()
    assert driver.stale_polls == 0
    assert driver.seen == [1, 2, 3], "round 2 is not run again"
    history = node.state.snapshot()["history"]
    assert [(r["round"], r["status"]) for r in history] == [
        (1, "adopted"), (2, "adopted"), (3, "adopted")]
    assert not (node.state.directory / "orphaned.json").exists()


@dataclass
class ChainLosingRound(ScriptedDriver):
    """Once round 3 is run, the chain forgets rounds 2 and 3 (a devnet restored from a
    state written before round 2 finalized) and opens round 2 again."""

    lost: bool = False

    def run(self, round_number: int, train, param_count: int) -> RoundOutcome:  # type: ignore[no-untyped-def]
        outcome = super().run(round_number, train, param_count)
        if round_number == 3 and not self.lost:
            self.lost, self.round = True, 2
        return outcome

    def last_finalized_round(self) -> int:
        return self.round - 1


def test_rounds_the_chain_lost_are_orphaned_and_run_again_from_the_model_held(
    node, caplog,
) -> None:
    driver = ChainLosingRound([lambda w: w, lambda w: w + 0.01, lambda w: w + 0.02,
                               lambda w: w + 0.03, lambda w: w + 0.04, lambda w: w + 0.05])
    node.driver = driver
    node.settings = node.settings.model_copy(update={"rounds": 4})
    node.run()
    assert driver.seen == [1, 2, 3, 2, 3, 4], "the lost rounds 2 and 3 are run again"
    history = node.state.snapshot()["history"]
    assert [(r["round"], r["status"]) for r in history] == [
        (1, "adopted"), (2, "adopted"), (3, "adopted"), (4, "adopted")]
    orphaned = json.loads((node.state.directory / "orphaned.json").read_text())
    assert len(orphaned) == 1 and orphaned[0]["from_round"] == 3
    assert orphaned[0]["to_round"] == 1
    assert [r["round"] for r in orphaned[0]["records"]] == [2, 3]
    assert orphaned[0]["records"][0]["weights_digest"] != history[1]["weights_digest"]
    assert any("the chain lost rounds 2, 3" in r.getMessage() for r in caplog.records)
    assert node.metrics.registry.get_sample_value("apiary_rounds_failed_total",
                                                  {"node": "va"}) in (None, 0)


def test_a_rewind_to_a_round_not_before_the_saved_one_is_refused_and_changes_nothing(
    node,
) -> None:
    node.load_or_initialise()
    node.state.save(node.weights, 2, node.trainer.digest(node.weights))
    with pytest.raises(HistoryConflict, match="cannot rewind to round 2"):
        node.state.rewind(2, "test")
    with pytest.raises(HistoryConflict, match="cannot rewind to round -1"):
        node.state.rewind(-1, "test")
    assert node.state.round == 2 and not (node.state.directory / "orphaned.json").exists()


def test_an_outcome_of_a_round_the_node_holds_is_not_adopted_and_the_model_kept(
    node, caplog,
) -> None:
    node.load_or_initialise()
    kept = node.weights + 0.5
    node.state.save(kept, 2, node.trainer.digest(kept))
    node.weights = kept
    node._adopt(RoundOutcome(round=2, weights=kept + 1.0, weight_sum=2,
                             contributors=["a", "b"], aggregate_digests=[]))
    assert node.state.round == 2 and np.array_equal(node.state.load_weights(), kept)
    assert any("not adopted, this node holds round 2 already" in r.getMessage()
               for r in caplog.records)


def test_a_model_that_cannot_be_saved_fails_the_round_not_the_node(node, monkeypatch) -> None:
    saves: list[int] = []
    real_save = node.state.save

    def save(weights, round_number, digest, record=None):  # type: ignore[no-untyped-def]
        saves.append(round_number)
        if saves.count(1) == 1 and round_number == 1:
            raise OSError(28, "No space left on device")
        real_save(weights, round_number, digest, record)

    monkeypatch.setattr(node.state, "save", save)
    node.driver = ScriptedDriver([lambda w: w, lambda w: w, lambda w: w, lambda w: w])
    node.run()
    assert [r["round"] for r in node.state.snapshot()["history"]] == [2, 3]
    counted = node.metrics.registry.get_sample_value
    assert counted("apiary_rounds_failed_total", {"node": "va"}) == 1
