"""Server optimisers: each step against values worked out by hand and against a scalar
re-implementation of Reddi et al.'s Algorithm 2; bad parameters refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apiary.core.server_optim import ServerOptimizer, ServerOptimizerError, ServerState
from apiary.core.training import TrainingConfig


def _scalar_reference(name: str, xs: list[float], averages: list[list[float]], eta: float,
                      momentum: float = 0.9, beta1: float = 0.9, beta2: float = 0.99,
                      tau: float = 1e-3) -> list[list[float]]:
    """Algorithm 2 one coordinate at a time in plain Python floats; the models after each
    round."""
    x = list(xs)
    m = [0.0] * len(x)
    v = [tau * tau] * len(x)
    models = []
    for avg in averages:
        for i in range(len(x)):
            delta = avg[i] - x[i]
            if name == "fedavgm":
                m[i] = momentum * m[i] + delta
                x[i] = x[i] + eta * m[i]
                continue
            m[i] = beta1 * m[i] + (1.0 - beta1) * delta
            square = delta * delta
            if name == "fedadam":
                v[i] = beta2 * v[i] + (1.0 - beta2) * square
            else:
                sign = (v[i] > square) - (v[i] < square)
                v[i] = v[i] - (1.0 - beta2) * square * sign
            x[i] = x[i] + eta * m[i] / (math.sqrt(v[i]) + tau)
        models.append(list(x))
    return models


def _run(opt: ServerOptimizer, x0: np.ndarray, averages: list[np.ndarray],
         ) -> tuple[list[np.ndarray], ServerState]:
    x, state = x0, opt.initial_state(x0.size)
    models = []
    for round_number, avg in enumerate(averages, start=1):
        x, state = opt.step(x, avg, state, round_number)
        models.append(x)
    return models, state


X0 = np.array([0.0, 1.0, -0.5, 2e-3])
AVERAGES = [np.array([0.1, 0.8, -0.5, 3e-3]), np.array([0.3, 0.7, -0.4, -1e-3]),
            np.array([0.2, 0.9, -0.6, 0.0])]


def test_plain_averaging_adopts_the_average_bitwise() -> None:
    opt = ServerOptimizer()
    models, state = _run(opt, X0, AVERAGES)
    assert all(np.array_equal(m, a) for m, a in zip(models, AVERAGES, strict=True))
    assert state == ServerState(3) and opt.plain_average and not opt.stateful


def test_fedavg_with_a_server_learning_rate_moves_part_way() -> None:
    x, _ = ServerOptimizer("fedavg", lr=0.5).step(np.array([0.0, 2.0]), np.array([1.0, 0.0]),
                                                  ServerState(0), 1)
    assert x.tolist() == [0.5, 1.0]


def test_fedavgm_by_hand() -> None:
    opt = ServerOptimizer("fedavgm", lr=1.0, momentum=0.5)
    x0 = np.array([0.0, 1.0])
    x1, s1 = opt.step(x0, np.array([1.0, 0.0]), opt.initial_state(2), 1)
    # Δ = (1, -1), m = Δ, x = x0 + m
    assert x1.tolist() == [1.0, 0.0] and s1.m is not None and s1.m.tolist() == [1.0, -1.0]
    x2, s2 = opt.step(x1, np.array([1.5, 0.0]), s1, 2)
    # Δ = (0.5, 0), m = 0.5·(1, -1) + (0.5, 0) = (1, -0.5), x = (1, 0) + (1, -0.5)
    assert s2.m is not None and s2.m.tolist() == [1.0, -0.5] and x2.tolist() == [2.0, -0.5]


def test_fedadam_by_hand() -> None:
    opt = ServerOptimizer("fedadam", lr=0.1, beta1=0.5, beta2=0.5, tau=0.5)
    x1, s1 = opt.step(np.array([0.0]), np.array([1.0]), opt.initial_state(1), 1)
    # Δ = 1; m = 0.5; v = 0.5·0.25 + 0.5·1 = 0.625; x = 0.1·0.5 / (√0.625 + 0.5)
    assert s1.m is not None and s1.v is not None
    assert s1.m.tolist() == [0.5] and s1.v.tolist() == [0.625]
    assert x1[0] == pytest.approx(0.05 / (math.sqrt(0.625) + 0.5), rel=1e-15)
    assert x1[0] == pytest.approx(0.0387426, abs=1e-7)


def test_fedyogi_by_hand_grows_v_only_towards_the_square() -> None:
    opt = ServerOptimizer("fedyogi", lr=0.1, beta1=0.5, beta2=0.5, tau=0.5)
    x1, s1 = opt.step(np.array([0.0, 0.0]), np.array([1.0, 0.1]), opt.initial_state(2), 1)
    # v₋₁ = 0.25. Coordinate 0: Δ² = 1 > v, v = 0.25 + 0.5 = 0.75.
    # Coordinate 1: Δ² = 0.01 < v, v = 0.25 − 0.5·0.01 = 0.245.
    assert s1.v is not None and s1.v.tolist() == pytest.approx([0.75, 0.245], rel=1e-15)
    assert x1.tolist() == pytest.approx([0.05 / (math.sqrt(0.75) + 0.5),
                                         0.005 / (math.sqrt(0.245) + 0.5)], rel=1e-15)


@pytest.mark.parametrize(("name", "eta"), [("fedavgm", 0.7), ("fedadam", 0.01),
                                           ("fedyogi", 0.03)])
def test_steps_equal_a_scalar_implementation_bitwise(name: str, eta: float) -> None:
    opt = ServerOptimizer(name, lr=eta)
    models, state = _run(opt, X0, AVERAGES)
    expected = _scalar_reference(name, X0.tolist(), [a.tolist() for a in AVERAGES], eta)
    assert [m.tolist() for m in models] == expected
    assert state.round == 3


def test_same_inputs_same_bits_and_inputs_untouched() -> None:
    opt = ServerOptimizer("fedadam")
    x0, avg = X0.copy(), AVERAGES[0].copy()
    first = opt.step(x0, avg, opt.initial_state(4), 1)
    second = opt.step(x0, avg, opt.initial_state(4), 1)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].v is not None and second[1].v is not None
    assert first[1].v.tobytes() == second[1].v.tobytes()
    assert np.array_equal(x0, X0) and np.array_equal(avg, AVERAGES[0])


def test_default_learning_rates() -> None:
    assert ServerOptimizer("fedavg").eta == 1.0 and ServerOptimizer("fedavgm").eta == 1.0
    assert ServerOptimizer("fedadam").eta == 0.01 and ServerOptimizer("fedyogi").eta == 0.01
    assert ServerOptimizer("fedadam", lr=0.5).eta == 0.5


@pytest.mark.parametrize("kwargs", [
    {"name": "fedsgd"}, {"lr": 0.0}, {"lr": -1.0}, {"lr": math.inf}, {"lr": math.nan},
    {"momentum": 1.0}, {"momentum": -0.1}, {"beta1": 1.0}, {"beta2": 1.5},
    {"beta2": math.nan}, {"tau": 0.0}, {"tau": -1e-3}, {"tau": math.inf},
])
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ServerOptimizerError):
        ServerOptimizer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [
    {"server_optimizer": "adam"}, {"server_lr": 0.0}, {"server_beta1": 1.0},
    {"server_tau": 0.0}, {"fedprox_mu": -0.1}, {"fedprox_mu": math.nan},
])
def test_training_config_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ServerOptimizerError):
        TrainingConfig(**kwargs)  # type: ignore[arg-type]


def test_a_state_of_the_wrong_kind_or_size_is_refused() -> None:
    adam = ServerOptimizer("fedadam")
    with pytest.raises(ServerOptimizerError, match="lacks a moment v"):
        adam.step(X0, AVERAGES[0], ServerState(0, np.zeros(4)), 1)
    with pytest.raises(ServerOptimizerError, match="expected float64"):
        adam.step(X0, AVERAGES[0], adam.initial_state(3), 1)
    with pytest.raises(ValueError, match="parameters"):
        adam.step(X0, AVERAGES[0][:3], adam.initial_state(4), 1)


def test_the_literal_of_the_settings_lists_every_optimiser() -> None:
    from typing import get_args

    from apiary.core.server_optim import SERVER_OPTIMIZERS
    from apiary.core.settings import ServerOptimizerName

    assert get_args(ServerOptimizerName) == SERVER_OPTIMIZERS


@pytest.mark.parametrize(("flag", "value"), [
    ("server_optimizer", "adam"), ("server_lr", "0"), ("server_momentum", "1"),
    ("server_beta1", "-0.1"), ("server_beta2", "nan"), ("server_tau", "0"),
    ("fedprox_mu", "-1"),
])
def test_node_settings_refuse_bad_values_in_one_line(flag: str, value: str) -> None:
    from apiary.core.errors import ConfigError
    from apiary.core.settings import NodeSettings

    with pytest.raises(ConfigError) as caught:
        NodeSettings.load(**{flag: value})
    assert flag in str(caught.value) and "\n" not in str(caught.value)



def test_node_settings_reach_the_training_config() -> None:
    from apiary.core.settings import NodeSettings
    from apiary.node.trainer import training_config

    settings = NodeSettings.load(server_optimizer="fedyogi", server_lr="0.05",
                                 server_tau="0.01", fedprox_mu="0.1")
    cfg = training_config(settings)
    assert (cfg.server_optimizer, cfg.server_lr, cfg.server_tau, cfg.fedprox_mu) == (
        "fedyogi", 0.05, 0.01, 0.1)
    assert cfg.server_step() == ServerOptimizer("fedyogi", 0.05, tau=0.01)
