"""The hospital's local model: train from the global weights, evaluate, hand back weights.

Everything about the model and the data comes from the swarm's task
(:mod:`apiary.core.tasks`); the trainer only keeps the model between rounds, moves flat
weight vectors in and out of it, and derives the shuffling seed of each round.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apiary.core.errors import ConfigError
from apiary.core.flat import flatten, load_flat, param_count, weights_digest
from apiary.core.settings import NodeSettings
from apiary.core.tasks import (
    ModelBuildFailed,
    Site,
    SiteData,
    SwarmConfig,
    Task,
    TaskIdentity,
    build_seeded,
    load_task,
)
from apiary.core.training import DEFAULT_TRAINING, Metrics, TrainingConfig

if TYPE_CHECKING:
    from torch import nn

    from apiary.core.data.shards import Shard


def round_seed(swarm_seed: int, round_number: int, name: str) -> int:
    """Shuffling seed of one node in one round: the same in swarm and federated runs."""
    return (swarm_seed * 1_000_003 + round_number * 7919 + zlib.crc32(name.encode())) % 2**31


def task_entry(settings: NodeSettings) -> str:
    """The task the node runs: ``--task``, else ``--model`` (a built-in task's alias), else
    the default built-in task."""
    if settings.task and settings.model:
        raise ConfigError(f"both --task {settings.task!r} and --model {settings.model!r} are "
                          "set: give one (--model mlp|cnn is short for --task heart|fashion)")
    return settings.task or settings.model or DEFAULT_TRAINING.model


def training_config(settings: NodeSettings) -> TrainingConfig:
    """The node's TrainingConfig: every field the settings share with it, by name."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(TrainingConfig)
              if f.name in NodeSettings.model_fields}
    values["model"] = task_entry(settings)
    return TrainingConfig(**values)


@dataclass
class LocalTrainer:
    name: str
    task: Task
    data: SiteData
    config: TrainingConfig
    model: nn.Module = field(init=False, repr=False)
    identity: TaskIdentity = field(init=False)

    def __post_init__(self) -> None:
        self.model = build_seeded(self.task, self.data, self.config.seed)
        self._initial = flatten(self.model)
        again = flatten(build_seeded(self.task, self.data, self.config.seed))
        if weights_digest(again) != weights_digest(self._initial):
            raise ModelBuildFailed(
                f"task {self.task.name!r}: build_model gives other weights each time from the "
                "same seed, so no two nodes would start alike; draw every random number from "
                "torch's generator (seeded for it) or from the seed you are given")
        self.identity = TaskIdentity.of(self.task, self.model)

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> LocalTrainer:
        """The node's task, loaded from its entry point, on the site the settings describe."""
        return cls.at_site(settings.name, settings.data, settings.heldout,
                           training_config(settings))

    @classmethod
    def at_site(cls, name: str, data: Path | None, heldout: Path | None,
                config: TrainingConfig) -> LocalTrainer:
        """The task ``config.model`` names, on the data it loads for this site."""
        task = load_task(config.model)
        return cls(name, task, task.load_data(Site(name, data, heldout)), config)

    @classmethod
    def for_shard(cls, name: str, shard: Shard, config: TrainingConfig,
                  heldout: Shard | None = None) -> LocalTrainer:
        """A trainer on a shard in memory (the comparison's in-process methods)."""
        return cls(name, load_task(config.model), SiteData.from_shards(shard, heldout), config)

    @property
    def param_count(self) -> int:
        return param_count(self.model)

    @property
    def sample_count(self) -> int:
        return self.data.num_train

    @property
    def swarm_config(self) -> SwarmConfig:
        """What this node trains with, as the swarm-wide configuration compares it."""
        return SwarmConfig.of(self.identity, self.config)

    def new_model(self) -> nn.Module:
        """A fresh model of the task (the initial weights), e.g. to score weights with."""
        return build_seeded(self.task, self.data, self.config.seed)

    def initial_weights(self) -> np.ndarray:
        """The swarm's round-0 model: every node builds it from the same seed."""
        return self._initial.copy()

    def train(self, weights: np.ndarray, round_number: int) -> tuple[np.ndarray, float]:
        load_flat(self.model, weights)
        loss = self.task.train(self.model, self.data, self.config,
                               round_seed(self.config.seed, round_number, self.name))
        return flatten(self.model), float(loss)

    def evaluate(self, weights: np.ndarray) -> tuple[Metrics, Metrics | None]:
        load_flat(self.model, weights)
        own = self.task.evaluate(self.model, self.data.test)
        held = None
        if self.data.heldout is not None:
            held = self.task.evaluate(self.model, self.data.heldout)
        return own, held

    @staticmethod
    def digest(weights: np.ndarray) -> str:
        return weights_digest(weights)
