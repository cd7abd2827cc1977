"""The swarm-wide training configuration: what every member must train with, and its digest.

Fixed when the swarm is founded: its digest is a constructor argument of the contract, the
whole of it is in the founder's swarm file. It holds the task's identity (name, version, a
digest of the architecture and one of the initial weights, the parameter count) and every
field of :class:`~apiary.core.training.TrainingConfig` but ``rounds`` (how long a node takes
part is its own choice) and ``model`` (the task's entry point: a site's own path or module
name, or a built-in's alias; the identity stands for it), read generically so that a field
added there is covered too.

The digest is keccak256 of the canonical JSON (sorted keys, no spaces). A mismatch is a
:class:`ConfigMismatch` that names each differing setting: ``lr: this node 0.01, the swarm
0.003``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_utils import keccak

from apiary.core.errors import ConfigError
from apiary.core.training import TrainingConfig

if TYPE_CHECKING:
    from torch import nn

    from apiary.core.tasks.protocol import Task

__all__ = ["LOCAL_FIELDS", "ConfigMismatch", "SwarmConfig", "TaskIdentity"]

LOCAL_FIELDS = frozenset({"rounds", "model"})
"""TrainingConfig fields each site chooses for itself."""


class ConfigMismatch(ConfigError):
    """This node's training configuration is not the swarm's."""


@dataclass(frozen=True)
class TaskIdentity:
    """What makes two tasks the same task: name, version, architecture, initial weights."""

    name: str
    version: str
    architecture: str
    """SHA-256 of the model's module types and its state-dict names, shapes and dtypes."""
    initial_weights: str
    """SHA-256 of the initial flat weight vector as float32 (``weights_digest``)."""
    parameters: int

    @classmethod
    def of(cls, task: Task, model: nn.Module) -> TaskIdentity:
        """The identity of ``task`` whose freshly built (initial) model is ``model``."""
        return cls.named(task.name, task.version, model)

    @classmethod
    def named(cls, name: str, version: str, model: nn.Module) -> TaskIdentity:
        """The identity of a model built outside a task (a benchmark's), under a name."""
        from apiary.core.flat import flatten, param_count, weights_digest

        return cls(name=name, version=version, architecture=architecture(model),
                   initial_weights=weights_digest(flatten(model)),
                   parameters=param_count(model))


def architecture(model: nn.Module) -> str:
    """SHA-256 of the module tree's types and the state dict's names, shapes and dtypes."""
    modules = [(name, type(module).__qualname__) for name, module in model.named_modules()]
    state = [(name, list(tensor.shape), str(tensor.dtype))
             for name, tensor in model.state_dict().items()]
    canonical = json.dumps({"modules": modules, "state": state}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SwarmConfig:
    """The task's identity and the swarm-wide hyper-parameters, as one comparable record."""

    task: TaskIdentity
    training: dict[str, Any]

    @classmethod
    def of(cls, identity: TaskIdentity, training: TrainingConfig) -> SwarmConfig:
        shared = {f.name: getattr(training, f.name) for f in dataclasses.fields(training)
                  if f.name not in LOCAL_FIELDS}
        return cls(identity, shared)

    def as_json(self) -> dict[str, Any]:
        return {"task": dataclasses.asdict(self.task), "training": dict(self.training)}

    @classmethod
    def from_json(cls, data: Any) -> SwarmConfig:
        """Read :meth:`as_json`'s form; ConfigError when it is not that."""
        try:
            task = TaskIdentity(**data["task"])
            training = dict(data["training"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a swarm training configuration ({exc}): expected "
                              '{"task": {name, version, architecture, initial_weights, '
                              'parameters}, "training": {...}}') from None
        return cls(task, training)

    def canonical(self) -> bytes:
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode()

    def digest(self) -> bytes:
        """keccak256 of the canonical JSON: what the contract records."""
        return bytes(keccak(self.canonical()))

    def differences(self, swarm: SwarmConfig, who: str = "this node") -> list[str]:
        """Each setting where this configuration (``who``'s) differs from ``swarm``'s, as
        ``"lr: this node 0.01, the swarm 0.003"``."""
        mine, theirs = _flat(self.as_json()), _flat(swarm.as_json())
        return [f"{name}: {who} {_shown(mine.get(name))}, the swarm "
                f"{_shown(theirs.get(name))}"
                for name in sorted(mine.keys() | theirs.keys(), key=_setting_order)
                if mine.get(name, _MISSING) != theirs.get(name, _MISSING)]

    def mismatch(self, swarm: SwarmConfig, where: str, who: str = "this node") -> str | None:
        """None when this is ``swarm``, else a message naming every differing setting."""
        if self.digest() == swarm.digest():
            return None
        differing = self.differences(swarm, who) or ["the digest (equal values of other types)"]
        return (f"{who}'s training configuration differs from the swarm's ({where}): "
                f"{'; '.join(differing)}")

    def check_matches(self, swarm: SwarmConfig, where: str) -> None:
        """ConfigMismatch naming every differing setting unless this is ``swarm``."""
        problem = self.mismatch(swarm, where)
        if problem is not None:
            raise ConfigMismatch(f"{problem}. Start this node with the swarm's settings "
                                 "(apiary node --help names the flags)")


_MISSING = object()
_TASK_NAMES = {"name": "task", "version": "task version", "architecture": "task architecture",
               "initial_weights": "task initial weights", "parameters": "task parameters"}


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Setting name → value: the task's as "task", "task version", …, training's by field."""
    flat = {_TASK_NAMES.get(k, f"task {k}"): v for k, v in config["task"].items()}
    flat.update(config["training"])
    return flat


def _setting_order(name: str) -> tuple[int, str]:
    order = list(_TASK_NAMES.values())
    return (order.index(name), "") if name in order else (len(order), name)


def _shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return str(value)
