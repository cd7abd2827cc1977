"""The model check before adoption, and a node's own state that must never crash it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apiary.core.backoff import Backoff
from apiary.node.contribution import ContributionStore, SavedContribution
from apiary.node.guard import ModelGuard
from apiary.node.state import NodeState, RoundRecord

RNG = np.random.default_rng(11)
HELD = RNG.normal(0, 0.3, 500)


def step(scale: float = 0.01) -> np.ndarray:
    return HELD + RNG.normal(0, scale, HELD.size)


def test_an_ordinary_training_step_is_adopted() -> None:
    assert ModelGuard().verdict(step(), HELD, []) is None
    assert ModelGuard().verdict(step(), HELD, [0.2, 0.25]) is None


@pytest.mark.parametrize("poison, expected", [
    (np.where(np.arange(HELD.size) == 3, np.nan, HELD), "not finite"),
    (np.where(np.arange(HELD.size) == 3, np.inf, HELD), "not finite"),
    (RNG.uniform(-1e5, 1e5, HELD.size), "exceeds the bound"),
    (HELD * 50, "moves the model"),
    (np.zeros(HELD.size + 1), "parameters"),
])
def test_a_poisoned_aggregate_is_rejected_with_the_reason(poison: np.ndarray,
                                                           expected: str) -> None:
    reason = ModelGuard().verdict(poison, HELD, [0.2])
    assert reason is not None and expected in reason


def test_the_change_bound_follows_the_recent_rounds() -> None:
    guard = ModelGuard(change_ratio=0.01, change_factor=5.0)
    moved = HELD + 0.5 * np.ones(HELD.size) / np.sqrt(HELD.size)  # a change of norm 0.5
    assert guard.verdict(moved, HELD, [0.2]) is None, "within 5 × the last change"
    assert guard.verdict(moved, HELD, [0.05]) is not None, "10 × the last change"
    assert guard.verdict(moved, HELD, [0.05], consecutive=False) is None, "catching up"


def record(round_number: int, change: float | None, status: str = "adopted") -> RoundRecord:
    return RoundRecord(round=round_number, contributors=[], weight_sum=1, accuracy=None,
                       auc=None, loss=None, train_loss=None, heldout_accuracy=None,
                       heldout_auc=None, weights_digest="d", seconds={}, status=status,
                       change_norm=change)


def test_recent_changes_skip_rejected_rounds(tmp_path: Path) -> None:
    state = NodeState.open(tmp_path)
    state.save(HELD, 1, "a", record(1, 0.3))
    state.save(HELD, 2, "a", record(2, None, "rejected"))
    state.save(HELD, 3, "b", record(3, 0.2))
    assert NodeState.open(tmp_path).recent_changes() == [0.3, 0.2]


def test_an_unreadable_state_file_is_set_aside_not_crashed_on(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"round": 4, "hist')
    state = NodeState.open(tmp_path)
    assert state.round == 0 and state.history == []
    assert (tmp_path / "state.json.unreadable").read_text().startswith('{"round": 4')


@pytest.mark.parametrize("content", [b"not a numpy file", None])
def test_unreadable_or_non_finite_saved_weights_are_not_loaded(tmp_path: Path,
                                                               content: bytes | None) -> None:
    state = NodeState.open(tmp_path)
    if content is None:
        state.save(np.array([1.0, np.nan]), 2, "x")
    else:
        state.weights_path.write_bytes(content)
    assert state.load_weights() is None


def saved(round_number: int = 3) -> SavedContribution:
    return SavedContribution(round_number, 0, 120, 0.5, [b"\x01" * 64, b"\x02" * 64])


def test_a_round_update_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    store = ContributionStore(tmp_path, "0xabc")
    store.save(saved())
    again = ContributionStore(tmp_path, "0xabc").load(3)
    assert again == saved()
    assert (store.directory / "round-3.update").stat().st_mode & 0o077 == 0
    assert ContributionStore(tmp_path, "0xdef").load(3) is None, "another swarm's"
    assert store.load(4) is None


def test_a_truncated_round_update_is_ignored(tmp_path: Path) -> None:
    store = ContributionStore(tmp_path, "0xabc")
    store.save(saved())
    path = store.directory / "round-3.update"
    path.write_bytes(path.read_bytes()[:-5])
    assert store.load(3) is None
    path.write_bytes(b"garbage")
    assert store.load(3) is None
    header = {"contract": "0xabc", "round": 3, "epoch": 0, "samples": 1, "train_loss": 0.1,
              "lengths": ["x"]}
    path.write_bytes(json.dumps(header).encode() + b"\n")
    assert store.load(3) is None


def test_updates_of_ended_rounds_are_discarded(tmp_path: Path) -> None:
    store = ContributionStore(tmp_path, "0xabc")
    for n in (2, 3, 4):
        store.save(saved(n))
    store.discard_through(3)
    assert [store.load(n) is not None for n in (2, 3, 4)] == [False, False, True]


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first_s=1, cap_s=5)
    assert [backoff.next() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next() == 1
