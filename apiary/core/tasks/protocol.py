"""What a task is: the user's model, data, training step and evaluation, behind one protocol.

A task is a plain Python object, in the spirit of Flower's client API: the node asks it for
the site's data, builds the swarm's model from the swarm seed, hands it the model for one
round of local training, and asks it for metrics. Everything else (encryption, exchange,
the chain's average) stays the node's. :class:`TaskBase` gives every part but the model a
default: the node's shard files (``--data``, ``--heldout``) as the data, Adam with
cross-entropy (:func:`apiary.core.training.train_local`) as the training step, accuracy,
AUC and loss as the evaluation. A user task is a subclass that names itself and builds its
model.

The model must be the same on every node: :func:`build_seeded` builds it with torch's
random state seeded by the swarm seed (and restores that state afterwards), so default
initialisations are deterministic without the task doing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from apiary.core.errors import ConfigError
from apiary.core.training import Metrics, TrainingConfig, evaluate, train_local

if TYPE_CHECKING:
    from torch import nn

    from apiary.core.data.shards import Shard

__all__ = ["ModelBuildFailed", "Site", "SiteData", "Split", "Task", "TaskBase", "build_seeded"]


class ModelBuildFailed(ConfigError):
    """A task's ``build_model`` failed, returned no torch module, or is not deterministic."""


@dataclass(frozen=True)
class Site:
    """What the node tells a task about the site it runs at (its settings, nothing read yet)."""

    name: str
    """The hospital's name (``--name``)."""
    data: Path | None
    """The node's private data file (``--data``); a task may read anything else instead."""
    heldout: Path | None = None
    """An optional held-out test set every site shares (``--heldout``)."""


@dataclass(frozen=True)
class Split:
    """Inputs and labels of one split; ``x`` is ``(n, ...)``, ``y`` is ``(n,)``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class SiteData:
    """One site's data as a task loaded it: training and test splits, and optionally the
    shared held-out set. ``num_classes`` is the number of model outputs a classification
    task needs (None when the task does not say)."""

    train: Split
    test: Split
    heldout: Split | None = None
    num_classes: int | None = None

    @property
    def num_train(self) -> int:
        """Training samples: the site's weight in the average, registered on chain."""
        return len(self.train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.x.shape[1:])

    @classmethod
    def from_shards(cls, shard: Shard, heldout: Shard | None = None) -> SiteData:
        """A shard's splits; the held-out shard's test split as the shared held-out set."""
        return cls(Split(shard.x_train, shard.y_train), Split(shard.x_test, shard.y_test),
                   Split(heldout.x_test, heldout.y_test) if heldout is not None else None,
                   shard.num_classes)


@runtime_checkable
class Task(Protocol):
    """A swarm's task: every member runs the same one (same name, version, architecture and
    initial weights — the swarm-wide configuration checks it)."""

    name: str
    version: str

    def load_data(self, site: Site) -> SiteData:
        """This site's training and test data (and the shared held-out set, if any)."""
        ...

    def build_model(self, data: SiteData) -> nn.Module:
        """The swarm's model, the same on every site; torch's random state is seeded with
        the swarm seed while this runs (:func:`build_seeded`)."""
        ...

    def train(self, model: nn.Module, data: SiteData, config: TrainingConfig,
              seed: int) -> float:
        """One round of local training, in place, from the global weights already loaded;
        ``seed`` is this site's and round's shuffling seed. Returns the training loss."""
        ...

    def evaluate(self, model: nn.Module, split: Split) -> Metrics:
        """Metrics of the model on one split (the site's test split, or the held-out set)."""
        ...


class TaskBase:
    """Defaults for every part of a task but its model: subclass it, set ``name`` and
    ``version``, implement :meth:`build_model`."""

    name: str = ""
    version: str = "1"

    def load_data(self, site: Site) -> SiteData:
        """The node's shard file (``--data``: .npz or .csv, see :mod:`apiary.core.data.shards`)
        and the held-out set (``--heldout``)."""
        from apiary.core.data.shards import Shard

        if site.data is None:
            raise ConfigError(f"task {self.name!r} reads the node's shard file: set --data")
        shard = Shard.load(site.data)
        heldout = Shard.load(site.heldout) if site.heldout is not None else None
        return SiteData.from_shards(shard, heldout)

    def build_model(self, data: SiteData) -> nn.Module:
        raise NotImplementedError(f"task {type(self).__name__} does not build a model: "
                                  "implement build_model(self, data)")

    def train(self, model: nn.Module, data: SiteData, config: TrainingConfig,
              seed: int) -> float:
        """Adam on cross-entropy, ``config.epochs`` epochs of mini-batches of
        ``config.batch_size`` at ``config.lr``, reshuffled by ``seed``, with FedProx's
        proximal term when ``config.fedprox_mu`` > 0."""
        return train_local(model, data.train.x, data.train.y, epochs=config.epochs,
                           lr=config.lr, batch_size=config.batch_size, seed=seed,
                           mu=config.fedprox_mu)

    def evaluate(self, model: nn.Module, split: Split) -> Metrics:
        """Accuracy, ROC AUC and mean cross-entropy."""
        return evaluate(model, split.x, split.y)


def build_seeded(task: Task, data: SiteData, seed: int) -> nn.Module:
    """``task.build_model(data)`` with torch's random state seeded by ``seed`` and restored
    afterwards; :class:`ModelBuildFailed` when it raises or returns no ``torch.nn.Module``."""
    import torch

    def build() -> object:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return task.build_model(data)

    model = _guarded(task, build)
    if not isinstance(model, torch.nn.Module):
        raise ModelBuildFailed(f"task {task.name!r}: build_model returned a "
                               f"{type(model).__name__}, not a torch.nn.Module")
    return model


def _guarded(task: Task, build: Callable[[], object]) -> object:
    try:
        return build()
    except ConfigError:
        raise
    except Exception as exc:
        raise ModelBuildFailed(f"task {task.name!r}: build_model failed "
                               f"({type(exc).__name__}: {exc}); fix the task's model") from exc
