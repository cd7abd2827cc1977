"""The built-in tasks: the node's shard files and a model of the registry.

``heart`` trains the registry's ``mlp`` and ``fashion`` its ``cnn`` on whatever shard the
node is given (``--data``); each is an ordinary :class:`~apiary.core.tasks.protocol.TaskBase`
subclass, as a user's task is. Every registry model also names a task of its own, so
``--model mlp`` and ``--model cnn`` stay short aliases of ``heart`` and ``fashion``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiary.core.errors import ConfigError
from apiary.core.tasks.protocol import SiteData, TaskBase

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BUILTIN_TASKS", "MODEL_ALIASES", "ShardTask", "builtin_task"]


class ShardTask(TaskBase):
    """A registry model (``apiary.core.models``) on the node's shard."""

    def __init__(self, name: str, model: str, version: str = "1") -> None:
        self.name, self.model, self.version = name, model, version

    def build_model(self, data: SiteData) -> nn.Module:
        from apiary.core.models import build_model

        if data.num_classes is None:
            raise ConfigError(f"task {self.name!r} needs the number of classes of its data")
        return build_model(self.model, data.input_shape, data.num_classes, seed=_seed())

    def __repr__(self) -> str:
        return f"ShardTask({self.name!r}, model={self.model!r}, version={self.version!r})"


def _seed() -> int:
    """The seed :func:`~apiary.core.tasks.protocol.build_seeded` set: the registry seeds
    (and forks) torch's state itself, so it gets the same value again."""
    import torch

    return int(torch.initial_seed())


BUILTIN_TASKS: dict[str, str] = {"heart": "mlp", "fashion": "cnn"}
"""Built-in task name → the registry model it trains."""
MODEL_ALIASES: dict[str, str] = {model: task for task, model in BUILTIN_TASKS.items()}
"""``--model`` value → the built-in task it stands for."""


def builtin_task(name: str) -> ShardTask | None:
    """The built-in task ``name`` (or the task of a registry model), None if there is none."""
    from apiary.core.models import MODEL_NAMES

    name = MODEL_ALIASES.get(name, name)
    if name in BUILTIN_TASKS:
        return ShardTask(name, BUILTIN_TASKS[name])
    if name in MODEL_NAMES:
        return ShardTask(name, name)
    return None


heart = ShardTask("heart", "mlp")
"""``apiary.core.tasks.builtin:heart``: the registry's MLP on the node's shard."""
fashion = ShardTask("fashion", "cnn")
"""``apiary.core.tasks.builtin:fashion``: the registry's CNN on the node's shard."""
