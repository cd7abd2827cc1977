"""In-process reference trainings: central (pooled), local (each hospital alone), FedAvg.

FedAvg mirrors a node's round loop (`node.runtime.NodeRuntime.run`/`_adopt`) call for call:
the same initial model (`LocalTrainer.initial_weights`), the same `LocalTrainer.train` per
hospital and round (so the same `round_seed` shuffling), and the same integer weights
(`weights_from_sample_counts` of the training-set sizes), divided by their sum as a node does
after decrypting, then the same server step (`TrainingConfig.server_step`) and FedProx term.
Only the encryption is missing, so its accuracy is what swarm and federated runs must
reproduce. Central and local get the same budget of rounds × epochs epochs, in one
run of Adam.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from apiary.core.coefficients import weights_from_sample_counts
from apiary.core.data.shards import Shard
from apiary.core.flat import load_flat
from apiary.core.models import build_model
from apiary.core.training import TrainingConfig, evaluate
from apiary.node.trainer import LocalTrainer

__all__ = ["MethodRun", "pooled", "run_central", "run_fedavg", "run_local", "union_test"]


@dataclass
class MethodRun:
    """Final weights by model (``"global"``, or a hospital's name for local models), the
    held-out accuracy after each round (shared-model methods) and the wall time."""

    weights: dict[str, np.ndarray]
    curve: list[float] = field(default_factory=list)
    seconds: float = 0.0


def union_test(shards: dict[str, Shard]) -> Shard:
    """The union of the hospitals' test splits (the held-out set the nodes report on)."""
    first = next(iter(shards.values()))
    x = np.concatenate([s.x_test for s in shards.values()])
    y = np.concatenate([s.y_test for s in shards.values()])
    return Shard("heldout", x, y, x, y, first.feature_names, first.num_classes)


def pooled(shards: dict[str, Shard]) -> Shard:
    """All hospitals' training (and test) splits in one place."""
    first = next(iter(shards.values()))
    parts = list(shards.values())
    return Shard("central",
                 np.concatenate([s.x_train for s in parts]),
                 np.concatenate([s.y_train for s in parts]),
                 np.concatenate([s.x_test for s in parts]),
                 np.concatenate([s.y_test for s in parts]),
                 first.feature_names, first.num_classes)


def _trainer(name: str, shard: Shard, cfg: TrainingConfig, epochs: int,
             fedprox_mu: float = 0.0) -> LocalTrainer:
    return LocalTrainer.for_shard(name, shard, replace(cfg, epochs=epochs, fedprox_mu=fedprox_mu))


def _alone(name: str, shard: Shard, cfg: TrainingConfig) -> np.ndarray:
    trainer = _trainer(name, shard, cfg, cfg.rounds * cfg.epochs)
    weights, _ = trainer.train(trainer.initial_weights(), 1)
    return weights


def run_central(shards: dict[str, Shard], cfg: TrainingConfig) -> MethodRun:
    started = time.perf_counter()
    weights = _alone("central", pooled(shards), cfg)
    return MethodRun({"global": weights}, seconds=time.perf_counter() - started)


def run_local(shards: dict[str, Shard], cfg: TrainingConfig) -> MethodRun:
    started = time.perf_counter()
    weights = {name: _alone(name, shard, cfg) for name, shard in shards.items()}
    return MethodRun(weights, seconds=time.perf_counter() - started)


def run_fedavg(shards: dict[str, Shard], cfg: TrainingConfig,
               on_round: Callable[[int, float], None] | None = None) -> MethodRun:
    started = time.perf_counter()
    trainers = [_trainer(name, shard, cfg, cfg.epochs, cfg.fedprox_mu)
                for name, shard in shards.items()]
    server = cfg.server_step()
    coefficients = weights_from_sample_counts([t.sample_count for t in trainers])
    heldout = union_test(shards)
    scorer = build_model(cfg.model, heldout.input_shape, heldout.num_classes, cfg.seed)
    weights = trainers[0].initial_weights()
    state = server.initial_state(weights.size)
    curve: list[float] = []
    for round_number in range(1, cfg.rounds + 1):
        total = np.zeros_like(weights)
        for trainer, coefficient in zip(trainers, coefficients, strict=True):
            update, _ = trainer.train(weights, round_number)
            total += coefficient * update
        weights, state = server.step(weights, total / sum(coefficients), state, round_number)
        load_flat(scorer, weights)
        curve.append(evaluate(scorer, heldout.x_test, heldout.y_test).accuracy)
        if on_round is not None:
            on_round(round_number, curve[-1])
    return MethodRun({"global": weights}, curve, time.perf_counter() - started)
