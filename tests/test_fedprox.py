"""FedProx's proximal term in local training: μ = 0 trains bitwise as before, μ > 0 pulls the
local model towards the global one it started from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apiary.core.data import load_heart_shards
from apiary.core.flat import flatten, load_flat
from apiary.core.models import build_model
from apiary.core.training import TrainingConfig, train_local
from apiary.tools.baselines import run_fedavg

EPOCHS, LR, BATCH, SEED = 3, 3e-3, 16, 5


@pytest.fixture(scope="module")
def shard():  # type: ignore[no-untyped-def]
    return load_heart_shards(seed=0)["cleveland"]


def _without_proximal_term(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    """Local training as it was before FedProx: Adam on cross-entropy, reshuffled each epoch."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    generator = torch.Generator().manual_seed(SEED)
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(xt.shape[0], generator=generator)
        for start in range(0, xt.shape[0], BATCH):
            idx = order[start : start + BATCH]
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            optimiser.step()


def _trained(shard, mu: float | None) -> np.ndarray:  # type: ignore[no-untyped-def]
    model = build_model("mlp", shard.input_shape, shard.num_classes, 0)
    kwargs = {} if mu is None else {"mu": mu}
    train_local(model, shard.x_train, shard.y_train, epochs=EPOCHS, lr=LR, batch_size=BATCH,
                seed=SEED, **kwargs)
    return flatten(model)


def test_mu_zero_trains_bitwise_as_without_the_term(shard) -> None:  # type: ignore[no-untyped-def]
    model = build_model("mlp", shard.input_shape, shard.num_classes, 0)
    _without_proximal_term(model, shard.x_train, shard.y_train)
    before = flatten(model)
    assert _trained(shard, 0.0).tobytes() == before.tobytes()
    assert _trained(shard, None).tobytes() == before.tobytes()


def test_mu_pulls_towards_the_starting_model(shard) -> None:  # type: ignore[no-untyped-def]
    start = flatten(build_model("mlp", shard.input_shape, shard.num_classes, 0))
    drift = [float(np.linalg.norm(_trained(shard, mu) - start)) for mu in (0.0, 0.1, 1.0, 10.0)]
    assert drift == sorted(drift, reverse=True) and drift[3] < 0.5 * drift[0]


def test_the_term_is_anchored_at_the_weights_training_starts_from(shard) -> None:  # type: ignore[no-untyped-def]
    """From another starting point the pull is towards that point, not the initial model."""
    model = build_model("mlp", shard.input_shape, shard.num_classes, 0)
    anchor = flatten(model) + 0.3
    load_flat(model, anchor)
    train_local(model, shard.x_train, shard.y_train, epochs=EPOCHS, lr=LR, batch_size=BATCH,
                seed=SEED, mu=10.0)
    pulled = float(np.linalg.norm(flatten(model) - anchor))
    load_flat(model, anchor)
    train_local(model, shard.x_train, shard.y_train, epochs=EPOCHS, lr=LR, batch_size=BATCH,
                seed=SEED)
    assert pulled < 0.5 * float(np.linalg.norm(flatten(model) - anchor))


@pytest.mark.parametrize("mu", [-0.1, math.nan, math.inf])
def test_bad_mu_is_refused(shard, mu: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="mu must be"):
        _trained(shard, mu)


def test_plaintext_reference_uses_the_term() -> None:
    shards = load_heart_shards(seed=0)
    plain = run_fedavg(shards, TrainingConfig(rounds=2, epochs=1))
    prox = run_fedavg(shards, TrainingConfig(rounds=2, epochs=1, fedprox_mu=1.0))
    again = run_fedavg(shards, TrainingConfig(rounds=2, epochs=1, fedprox_mu=1.0))
    assert not np.array_equal(plain.weights["global"], prox.weights["global"])
    assert np.array_equal(prox.weights["global"], again.weights["global"])
