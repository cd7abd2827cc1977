"""What a node keeps on disk so that a restart resumes where it stopped.

``global.npy`` holds the current global weights (float64, exactly as decrypted) and
``state.json`` the round they came from and the per-round history, one record per round in
round order. Writes go through a temporary file and a rename, so a crash never leaves half
a file behind. The history only grows: a round's record is never replaced, and no round
older than the saved one is adopted (`HistoryConflict`). The one exception is a chain that
lost rounds the node holds (`NodeState.rewind`): their records move to ``orphaned.json``.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apiary.core.errors import ApiaryError
from apiary.core.files import replacing, write_json

STATE_FILE = "state.json"
ORPHANED_FILE = "orphaned.json"

log = logging.getLogger("apiary.node.state")


def saved_history(directory: Path) -> list[dict[str, Any]]:
    """A node's round history as its state file holds it (empty if none yet), read by
    someone else than the node: the file is replaced atomically, so it is whole or absent."""
    path = directory / STATE_FILE
    if not path.exists():
        return []
    history: list[dict[str, Any]] = json.loads(path.read_text())["history"]
    return history


class HistoryConflict(ApiaryError, RuntimeError):
    """A round would go backwards or overwrite the node's saved history; nothing is saved."""


@dataclass
class RoundRecord:
    round: int
    contributors: list[str]
    weight_sum: int
    accuracy: float | None
    auc: float | None
    loss: float | None
    train_loss: float | None
    heldout_accuracy: float | None
    heldout_auc: float | None
    weights_digest: str
    seconds: dict[str, float]
    aggregate_digests: list[str] = field(default_factory=list)
    committed: bool = True
    relay: bool = False
    status: str = "adopted"
    """adopted, or rejected: the aggregate failed the model check and the model stayed."""
    reason: str | None = None
    change_norm: float | None = None
    """How far (L2 norm) the adopted model moved from the one held before."""
    aggregate_transactions: list[str] = field(default_factory=list)
    """Hashes of the transactions that put the round's aggregate on chain, block order."""


@dataclass
class NodeState:
    """The node's durable state; thread-safe for the API's readers."""

    directory: Path
    round: int = 0
    weights_digest: str | None = None
    history: list[RoundRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _weights: np.ndarray | None = field(default=None, repr=False)

    @property
    def weights_path(self) -> Path:
        return self.directory / "global.npy"

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def open(cls, directory: Path) -> NodeState:
        directory.mkdir(parents=True, exist_ok=True)
        state = cls(directory)
        if state.state_path.exists():
            try:
                raw = json.loads(state.state_path.read_text())
                state.round = int(raw["round"])
                state.weights_digest = raw.get("weights_digest")
                state.history = [RoundRecord(**r) for r in raw.get("history", [])]
            except (ValueError, KeyError, TypeError) as exc:
                kept = state.state_path.with_suffix(".json.unreadable")
                state.state_path.replace(kept)
                log.error("%s is unreadable (%s): kept it as %s and starting from round 0; "
                          "the node catches up from the swarm", state.state_path, exc, kept)
                state = cls(directory)
        return state

    def recent_changes(self) -> list[float]:
        """The model changes of the adopted rounds, oldest first."""
        with self._lock:
            return [r.change_norm for r in self.history
                    if r.status == "adopted" and r.change_norm is not None]

    def load_weights(self) -> np.ndarray | None:
        """The saved global weights; None when there are none, or they are unreadable or not
        finite (a node must never crash-loop on its own state)."""
        if not self.weights_path.exists():
            return None
        try:
            weights = np.load(self.weights_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): starting from the initial model", self.weights_path,
                      exc)
            return None
        if weights.dtype.kind != "f" or not np.all(np.isfinite(weights)):
            log.error("%s holds weights that are not finite numbers: starting from the initial "
                      "model", self.weights_path)
            return None
        return weights

    def save(self, weights: np.ndarray, round_number: int, digest: str,
             record: RoundRecord | None = None) -> None:
        with self._lock:
            if record is not None:
                self._check_new(round_number, record)
            self._weights = weights
            with replacing(self.weights_path) as fh:
                np.save(fh, weights)
            self.round = round_number
            self.weights_digest = digest
            if record is not None:
                self.history = sorted([*self.history, record], key=lambda r: r.round)
            self._write_json()

    def rewind(self, to_round: int, reason: str) -> list[int]:
        """Forget the rounds after ``to_round``, which the chain no longer holds (a devnet
        restored from an older state): their records are appended to ``orphaned.json`` with
        ``reason``, the weights stay those last adopted, and the next round saved is
        ``to_round + 1``. Returns the orphaned rounds."""
        with self._lock:
            if not 0 <= to_round < self.round:
                raise HistoryConflict(f"cannot rewind to round {to_round}: the saved round "
                                      f"is {self.round}")
            orphaned = [r for r in self.history if r.round > to_round]
            path = self.directory / ORPHANED_FILE
            kept: list[dict[str, Any]] = (json.loads(path.read_text()) if path.exists()
                                          else [])
            kept.append({"from_round": self.round, "to_round": to_round, "reason": reason,
                         "records": [asdict(r) for r in orphaned]})
            write_json(path, kept)
            self.history = [r for r in self.history if r.round <= to_round]
            self.round = to_round
            self._write_json()
            return [r.round for r in orphaned]

    def _check_new(self, round_number: int, record: RoundRecord) -> None:
        if record.round != round_number:
            raise HistoryConflict(f"a record of round {record.round} cannot be saved as "
                                  f"round {round_number}")
        if round_number <= self.round or any(r.round == round_number for r in self.history):
            raise HistoryConflict(
                f"round {round_number} is not after the saved round {self.round} in "
                f"{self.state_path}; the node's history is never rewritten")

    def _write_json(self) -> None:
        payload = {
            "round": self.round,
            "weights_digest": self.weights_digest,
            "history": [asdict(r) for r in self.history],
        }
        write_json(self.state_path, payload)

    def current(self) -> tuple[int, np.ndarray | None, str | None]:
        """The round, the global weights it produced and their digest, read together."""
        with self._lock:
            if self._weights is None and self.weights_path.exists():
                self._weights = np.load(self.weights_path)
            return self.round, self._weights, self.weights_digest

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "round": self.round,
                "weights_digest": self.weights_digest,
                "history": [asdict(r) for r in self.history],
            }
