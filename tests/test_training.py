"""Model registry, weight flattening, local training and metrics."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from apiary.core.data import HOSPITALS, load_heart_shards
from apiary.core.flat import flatten, load_flat, param_count, weights_digest
from apiary.core.models import MODEL_NAMES, build_mlp_with_params, build_model
from apiary.core.training import (
    DEFAULT_TRAINING,
    Metrics,
    TrainingConfig,
    evaluate,
    predict_proba,
    roc_auc,
    train_local,
)

LR, BATCH = DEFAULT_TRAINING.lr, DEFAULT_TRAINING.batch_size


@pytest.fixture(scope="module")
def pooled() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    shards = load_heart_shards(seed=0)
    parts = [shards[h] for h in HOSPITALS]
    return (
        np.concatenate([s.x_train for s in parts]),
        np.concatenate([s.y_train for s in parts]),
        np.concatenate([s.x_test for s in parts]),
        np.concatenate([s.y_test for s in parts]),
    )


# ---------------------------------------------------------------- models
def test_registry() -> None:
    assert MODEL_NAMES == ("mlp", "cnn", "mlp-wide", "mlp-1m")
    with pytest.raises(ValueError, match="mlp, cnn, mlp-wide, mlp-1m"):
        build_model("resnet", (15,), 2, seed=0)
    mlp = build_model("mlp", (15,), 2, seed=0)
    assert mlp(torch.zeros(4, 15)).shape == (4, 2)
    cnn = build_model("cnn", (1, 28, 28), 10, seed=0)
    assert cnn(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert param_count(cnn) < 100_000
    assert param_count(mlp) == 15 * 32 + 32 + 32 * 16 + 16 + 16 * 2 + 2
    assert param_count(build_model("mlp-1m", (15,), 2, seed=0)) == 1_000_912
    assert abs(param_count(build_model("mlp-1m", (1, 28, 28), 10, seed=0)) - 10**6) < 2_000


def test_init_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = flatten(build_model("cnn", (1, 28, 28), 10, seed=7))
    b = flatten(build_model("cnn", (1, 28, 28), 10, seed=7))
    c = flatten(build_model("cnn", (1, 28, 28), 10, seed=8))
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("target", [10_000, 100_000, 1_000_000])
def test_mlp_with_params(target: int) -> None:
    for input_dim, classes in ((15, 2), (784, 10)):
        model = build_mlp_with_params(target, input_dim, classes, seed=0)
        assert abs(param_count(model) - target) <= 0.1 * target
        assert model(torch.zeros(2, input_dim)).shape == (2, classes)


# ---------------------------------------------------------------- flat vectors
def test_flatten_load_flat_round_trip_is_bitwise() -> None:
    source = build_model("cnn", (1, 28, 28), 10, seed=1)
    target = build_model("cnn", (1, 28, 28), 10, seed=2)
    vec = flatten(source)
    assert vec.dtype == np.float64 and vec.shape == (param_count(source),)
    assert param_count(source) == sum(p.numel() for p in source.parameters())
    assert weights_digest(vec) != weights_digest(flatten(target))
    load_flat(target, vec)
    assert flatten(target).tobytes() == vec.tobytes()
    for p, q in zip(source.parameters(), target.parameters(), strict=True):
        assert torch.equal(p, q)
    assert weights_digest(flatten(target)) == weights_digest(vec)
    assert weights_digest(vec.astype(np.float32)) == weights_digest(vec)
    assert len(weights_digest(vec)) == 64


def test_load_flat_rejects_bad_vectors_and_changes_nothing() -> None:
    model = build_model("mlp", (15,), 2, seed=0)
    before = flatten(model)
    n = param_count(model)
    with pytest.raises(ValueError, match=rf"expected {n} values.*got {n - 1}"):
        load_flat(model, np.zeros(n - 1))
    with pytest.raises(ValueError, match=rf"expected {n} values.*got {n + 1}"):
        load_flat(model, np.zeros(n + 1))
    bad = np.zeros(n)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_flat(model, bad)
    with pytest.raises(ValueError, match="1-D"):
        load_flat(model, np.zeros((1, n)))
    assert flatten(model).tobytes() == before.tobytes()


def test_floating_buffers_are_included_integer_buffers_skipped() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    # weight 12 + bias 4 + bn weight 4 + bias 4 + running_mean 4 + running_var 4
    assert param_count(model) == 32
    vec = np.arange(32, dtype=np.float64)
    load_flat(model, vec)
    assert torch.equal(model[1].running_var, torch.arange(28, 32, dtype=torch.float32))
    assert int(model[1].num_batches_tracked) == 0
    assert np.array_equal(flatten(model), vec)


# ---------------------------------------------------------------- metrics
def test_auc_with_ties_matches_hand_computation() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.2])
    # positives 0.4, 0.8, 0.2 vs negatives 0.1, 0.4, 0.4:
    # 0.4 -> 1 + ½ + ½ = 2; 0.8 -> 3; 0.2 -> 1; total 6 of 9 pairs.
    assert roc_auc(y, scores) == pytest.approx(6 / 9)
    two_col = np.stack([1 - scores, scores], axis=1)
    assert roc_auc(y, two_col) == pytest.approx(6 / 9)
    assert roc_auc(y, -scores) == pytest.approx(3 / 9)
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9])) == 1.0


def test_auc_nan_for_one_class_and_macro_ovr_for_multiclass() -> None:
    assert math.isnan(roc_auc(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9])))
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.3, 0.5], [0.5, 0.1, 0.4]])
    # class 0: pos 0.8 vs 0.1, 0.2, 0.5 -> 1; class 1: pos 0.7 vs 0.1, 0.3, 0.1 -> 1;
    # class 2: pos 0.5, 0.4 vs 0.1, 0.2 -> 1  => macro 1.0; then break class 2.
    assert roc_auc(y, proba) == pytest.approx(1.0)
    proba[3] = [0.5, 0.4, 0.1]  # a class-2 positive now ties one negative and trails another
    # class 0: pos 0.8 vs 0.1, 0.2, 0.5 -> 1; class 1: 0.7 vs 0.1, 0.3, 0.4 -> 1;
    # class 2: pos 0.5, 0.1 vs 0.1, 0.2 -> (1 + 1 + ½ + 0)/4 = 0.625
    assert roc_auc(y, proba) == pytest.approx((1 + 1 + 0.625) / 3)


def test_evaluate_and_predict_proba() -> None:
    model = build_model("mlp", (3,), 2, seed=0)
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    y = np.array([0, 1] * 5)
    proba = predict_proba(model, x)
    assert proba.shape == (10, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    m = evaluate(model, x, y)
    assert isinstance(m, Metrics) and m.samples == 10
    assert m.accuracy == pytest.approx(float((proba.argmax(axis=1) == y).mean()))
    assert m.auc == pytest.approx(roc_auc(y, proba[:, 1]))
    expected_loss = -np.mean(np.log(proba[np.arange(10), y]))
    assert m.loss == pytest.approx(expected_loss, rel=1e-6)
    assert math.isnan(evaluate(model, x, np.zeros(10, dtype=np.int64)).auc)


# ---------------------------------------------------------------- training
def test_pooled_heart_training_beats_70_percent(pooled: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, x_test, y_test = pooled
    model = build_model("mlp", x_train.shape[1:], 2, seed=0)
    before = evaluate(model, x_test, y_test)
    loss = train_local(model, x_train, y_train, epochs=10, lr=LR, batch_size=BATCH, seed=0)
    after = evaluate(model, x_test, y_test)
    assert math.isfinite(loss) and loss < before.loss
    assert after.samples == len(y_test) == 247
    assert after.accuracy > 0.70
    assert after.auc > 0.80


def test_same_seed_gives_bitwise_identical_weights(pooled: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, _, _ = pooled

    def run(seed: int) -> tuple[str, float]:
        model = build_model("mlp", x_train.shape[1:], 2, seed=0)
        loss = train_local(model, x_train, y_train, epochs=2, lr=LR, batch_size=BATCH, seed=seed)
        return weights_digest(flatten(model)), loss

    first, second, other = run(5), run(5), run(6)
    assert first == second
    assert first[0] != other[0]


def test_train_local_rejects_bad_arguments() -> None:
    model = build_model("mlp", (3,), 2, seed=0)
    x = np.zeros((4, 3), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError, match="epochs"):
        train_local(model, x, y, epochs=0, lr=0.01, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_local(model, x, y, epochs=1, lr=0.01, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="samples"):
        train_local(model, x, y[:3], epochs=1, lr=0.01, batch_size=2, seed=0)


def test_every_place_takes_its_training_defaults_from_one_config() -> None:
    from apiary.cli import app
    from apiary.core.settings import NodeSettings
    from apiary.tools.compare import CompareOptions
    from apiary.tools.demo import DemoOptions

    values = {"model": "mlp", "rounds": 10, "epochs": 2, "lr": 3e-3, "batch_size": 16, "seed": 0,
              "server_optimizer": "fedavg", "server_lr": None, "server_momentum": 0.9,
              "server_beta1": 0.9, "server_beta2": 0.99, "server_tau": 1e-3, "fedprox_mu": 0.0}
    assert asdict(DEFAULT_TRAINING) == values
    node = {name: NodeSettings.model_fields[name].default
            for name in ("epochs", "lr", "batch_size", "seed")}
    assert node == {"epochs": 2, "lr": 3e-3, "batch_size": 16, "seed": 0}
    from apiary.node.trainer import training_config

    assert training_config(NodeSettings()).model == DEFAULT_TRAINING.model
    assert DemoOptions().training == DEFAULT_TRAINING
    assert CompareOptions().train_config(DEFAULT_TRAINING.seed) == DEFAULT_TRAINING
    demo = DemoOptions.training_with(TrainingConfig(rounds=3, seed=7), out_dir=Path("x"))
    assert (demo.rounds, demo.seed, demo.epochs) == (3, 7, DEFAULT_TRAINING.epochs)
    for command in ("demo", "compare"):
        defaults = {p.name: p.default for p in app.commands[command].params}
        for name in ("rounds", "epochs", "lr", "seed", "batch_size"):
            if name in defaults:
                assert defaults[name] == getattr(DEFAULT_TRAINING, name), (command, name)
