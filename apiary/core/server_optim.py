"""Server-side optimisers applied to the decrypted average: FedAvg, FedAvgM, FedAdam, FedYogi.

After a round, every member holds the same weighted average ``avg`` of the contributors'
models and the same previous global model ``x``. Each applies the same step to them
(Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2), with the
pseudo-gradient ``Δ = avg − x``:

* ``fedavg``   x ← x + η·Δ                       (η = 1: x ← avg, plain averaging, bitwise)
* ``fedavgm``  m ← β·m + Δ;  x ← x + η·m          (server momentum, Hsu et al. 2019)
* ``fedadam``  m ← β1·m + (1−β1)·Δ;  v ← β2·v + (1−β2)·Δ²;  x ← x + η·m / (√v + τ)
* ``fedyogi``  m as fedadam;  v ← v − (1−β2)·Δ²·sign(v − Δ²);  x as fedadam

with m₋₁ = 0 and v₋₁ = τ² (the paper's v₋₁ ≥ τ²), no bias correction, as in the paper.

Every operation is an element-wise IEEE-754 float64 add, subtract, multiply, divide, square
root or sign, each correctly rounded, in a fixed order: every node computes bitwise the same
model and state from the same inputs, on any machine. The state (m, v) is a function of the
sequence of averages only, so a node that missed rounds rebuilds it by replaying them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from apiary.core.errors import ConfigError

__all__ = ["DEFAULT_SERVER_LR", "SERVER_OPTIMIZERS", "ServerOptimizer", "ServerOptimizerError",
           "ServerState"]

SERVER_OPTIMIZERS: tuple[str, ...] = ("fedavg", "fedavgm", "fedadam", "fedyogi")

DEFAULT_SERVER_LR: dict[str, float] = {
    "fedavg": 1.0,
    "fedavgm": 1.0,
    "fedadam": 1e-2,
    "fedyogi": 1e-2,
}
"""η when none is given: 1 for the averaging methods; for the adaptive ones 10^-2, within
the range where Reddi et al. find their best server learning rates (their Fig. 2 grids)."""


class ServerOptimizerError(ConfigError, ValueError):
    """A server optimiser name or parameter that cannot work."""


@dataclass(frozen=True)
class ServerState:
    """The optimiser's state after ``round``: first moment ``m`` (fedavgm, fedadam, fedyogi)
    and second moment ``v`` (fedadam, fedyogi); None where the optimiser keeps none."""

    round: int
    m: np.ndarray | None = None
    v: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The moments by name, as they are saved."""
        return {k: a for k, a in (("m", self.m), ("v", self.v)) if a is not None}


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value < 1.0):
        raise ServerOptimizerError(f"{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class ServerOptimizer:
    """One server step rule and its hyper-parameters; ``lr`` None takes the optimiser's
    :data:`DEFAULT_SERVER_LR`."""

    name: str = "fedavg"
    lr: float | None = None
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ServerOptimizerError(f"unknown server optimiser {self.name!r}: use one of "
                                       f"{', '.join(SERVER_OPTIMIZERS)}")
        lr = self.lr
        if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ServerOptimizerError(f"the server learning rate must be a finite number > 0, "
                                       f"got {lr!r}")
        _check_unit("the server momentum", self.momentum)
        _check_unit("server beta1", self.beta1)
        _check_unit("server beta2", self.beta2)
        tau = self.tau
        if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
            raise ServerOptimizerError(f"server tau must be a finite number > 0, got {tau!r}")

    @property
    def eta(self) -> float:
        return float(DEFAULT_SERVER_LR[self.name] if self.lr is None else self.lr)

    @property
    def plain_average(self) -> bool:
        """The step is x ← avg: nothing to keep between rounds, no history to replay."""
        return self.name == "fedavg" and self.eta == 1.0

    @property
    def stateful(self) -> bool:
        """It keeps moments from round to round."""
        return self.name != "fedavg"

    def initial_state(self, size: int) -> ServerState:
        """The state before round 1 (m₋₁ = 0, v₋₁ = τ²)."""
        m = np.zeros(size) if self.stateful else None
        v = np.full(size, float(self.tau) * float(self.tau)) if self.name in (
            "fedadam", "fedyogi") else None
        return ServerState(0, m, v)

    def check_state(self, state: ServerState, size: int) -> None:
        """Raise ServerOptimizerError unless ``state`` fits this optimiser and model size."""
        for key, want in (("m", self.stateful), ("v", self.name in ("fedadam", "fedyogi"))):
            array = getattr(state, key)
            if want != (array is not None):
                raise ServerOptimizerError(f"the {self.name} state {'lacks' if want else 'has'} "
                                           f"a moment {key}")
            if array is not None and (array.dtype != np.float64 or array.shape != (size,)):
                raise ServerOptimizerError(f"the {self.name} moment {key} has {array.dtype} "
                                           f"{array.shape}, expected float64 ({size},)")

    def step(self, x: np.ndarray, avg: np.ndarray, state: ServerState,
             round_number: int) -> tuple[np.ndarray, ServerState]:
        """The global model and state after ``round_number``, whose average is ``avg``."""
        x = _as_vector(x, "the previous global model")
        avg = _as_vector(avg, "the average")
        if x.shape != avg.shape:
            raise ValueError(f"the average has {avg.size} parameters, the model {x.size}")
        self.check_state(state, x.size)
        if self.plain_average:
            return avg.copy(), ServerState(round_number)
        eta = self.eta
        delta = avg - x
        if self.name == "fedavg":
            return x + eta * delta, ServerState(round_number)
        assert state.m is not None
        if self.name == "fedavgm":
            m = self.momentum * state.m + delta
            return x + eta * m, ServerState(round_number, m)
        assert state.v is not None
        beta1, beta2 = float(self.beta1), float(self.beta2)
        m = beta1 * state.m + (1.0 - beta1) * delta
        square = delta * delta
        if self.name == "fedadam":
            v = beta2 * state.v + (1.0 - beta2) * square
        else:  # fedyogi
            v = state.v - (1.0 - beta2) * square * np.sign(state.v - square)
        new_x = x + eta * m / (np.sqrt(v) + float(self.tau))
        return new_x, ServerState(round_number, m, v)


def _as_vector(weights: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(weights)
    if array.ndim != 1 or array.dtype.kind != "f":
        raise ValueError(f"{what} must be a 1-D float vector, got {array.dtype} {array.shape}")
    return array.astype(np.float64, copy=False)
