"""The swarm's server optimiser on a node: its state on disk, and rebuilding it by replay.

The optimiser's moments are a function of the sequence of round averages, which every
member can read from the chain (or the coordinator) and decrypt. They are saved next to the
model, tagged with the round they follow; a node whose saved state is not that of its saved
model (it joined with a hand-over of the model alone, or stopped between the two writes)
rebuilds it by replaying the rounds' averages from the initial model, and checks that the
replay ends at the model it holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from apiary.core.errors import ConfigError
from apiary.core.files import replacing
from apiary.core.flat import weights_digest
from apiary.core.server_optim import ServerOptimizer, ServerOptimizerError, ServerState

STATE_FILE = "server_optimizer.npz"

log = logging.getLogger("apiary.node.server_steps")

AverageOf = Callable[[int], "np.ndarray | None"]
"""A past round's decrypted average; None for a round that closed without one."""


class ReplayMismatch(ConfigError, RuntimeError):
    """Replaying the rounds' averages does not end at the model the node holds."""


def state_path(directory: Path) -> Path:
    return directory / STATE_FILE


def save_server_state(directory: Path, optimizer: ServerOptimizer, state: ServerState) -> None:
    """Write the state atomically (a temporary file and a rename)."""
    with replacing(state_path(directory)) as fh:
        np.savez(fh, optimizer=np.array(optimizer.name), round=np.array(state.round),
                 **state.arrays())


def load_server_state(directory: Path, optimizer: ServerOptimizer,
                      size: int) -> ServerState | None:
    """The saved state, if there is one of this optimiser for a model of ``size``."""
    path = state_path(directory)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["optimizer"]) != optimizer.name:
                log.warning("%s holds the state of %s, not %s: rebuilding it", path,
                            saved["optimizer"], optimizer.name)
                return None
            state = ServerState(int(saved["round"]), saved.get("m"), saved.get("v"))
        optimizer.check_state(state, size)
    except (OSError, ValueError, KeyError, ServerOptimizerError) as exc:
        log.error("%s is unreadable (%s): rebuilding the server optimiser's state", path, exc)
        return None
    return state


def replay(optimizer: ServerOptimizer, initial: np.ndarray, through: int,
           average_of: AverageOf) -> tuple[np.ndarray, ServerState]:
    """The model and state after round ``through``, stepping from ``initial`` through the
    average of every round 1..through that has one."""
    weights, state = initial, optimizer.initial_state(initial.size)
    for round_number in range(1, through + 1):
        average = average_of(round_number)
        if average is not None:
            weights, state = optimizer.step(weights, average, state, round_number)
    return weights, ServerState(through, state.m, state.v)


def rebuild(optimizer: ServerOptimizer, initial: np.ndarray, through: int, digest: str | None,
            average_of: AverageOf) -> tuple[np.ndarray, ServerState]:
    """:func:`replay`, refused with :class:`ReplayMismatch` unless it ends at ``digest``."""
    weights, state = replay(optimizer, initial, through, average_of)
    if digest is not None and weights_digest(weights) != digest:
        raise ReplayMismatch(
            f"replaying rounds 1..{through} with {optimizer.name} does not give the model this "
            f"node holds (weights {digest[:12]}): the swarm's rounds were not all adopted as "
            "replayed (a rejected aggregate?), or the chain no longer holds them all")
    return weights, state
