"""The hospital's local model: train from the global weights, evaluate, hand back weights."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apiary.core.data.shards import Shard
from apiary.core.flat import flatten, load_flat, param_count, weights_digest
from apiary.core.models import build_model
from apiary.core.training import Metrics, evaluate, train_local


def round_seed(swarm_seed: int, round_number: int, name: str) -> int:
    """Shuffling seed of one node in one round: the same in swarm and federated runs."""
    return (swarm_seed * 1_000_003 + round_number * 7919 + zlib.crc32(name.encode())) % 2**31


@dataclass
class LocalTrainer:
    name: str
    shard: Shard
    heldout: Shard | None
    model_name: str
    seed: int
    epochs: int
    lr: float
    batch_size: int

    def __post_init__(self) -> None:
        self.model = build_model(
            self.model_name, self.shard.input_shape, self.shard.num_classes, self.seed
        )

    @classmethod
    def from_files(cls, name: str, data: Path, heldout: Path | None, model_name: str,
                   seed: int, epochs: int, lr: float, batch_size: int) -> LocalTrainer:
        return cls(name, Shard.load(data), Shard.load(heldout) if heldout else None,
                   model_name, seed, epochs, lr, batch_size)

    @property
    def param_count(self) -> int:
        return param_count(self.model)

    @property
    def sample_count(self) -> int:
        return self.shard.num_train

    def initial_weights(self) -> np.ndarray:
        """The swarm's round-0 model: every node builds it from the same seed."""
        model = build_model(self.model_name, self.shard.input_shape, self.shard.num_classes,
                            self.seed)
        return flatten(model)

    def train(self, weights: np.ndarray, round_number: int) -> tuple[np.ndarray, float]:
        load_flat(self.model, weights)
        loss = train_local(
            self.model, self.shard.x_train, self.shard.y_train, epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, seed=round_seed(self.seed, round_number, self.name),
        )
        return flatten(self.model), loss

    def evaluate(self, weights: np.ndarray) -> tuple[Metrics, Metrics | None]:
        load_flat(self.model, weights)
        own = evaluate(self.model, self.shard.x_test, self.shard.y_test)
        held = None
        if self.heldout is not None:
            held = evaluate(self.model, self.heldout.x_test, self.heldout.y_test)
        return own, held

    @staticmethod
    def digest(weights: np.ndarray) -> str:
        return weights_digest(weights)
