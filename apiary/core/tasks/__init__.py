"""Tasks: the user's model, data, training step and evaluation, named by an entry point.

A user task is a few lines::

    from torch import nn
    from apiary.core.tasks import SiteData, TaskBase

    class Logistic(TaskBase):
        name, version = "heart-logistic", "1"

        def build_model(self, data: SiteData) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(data.input_shape[0], 2))

    task = Logistic()

and a node runs it with ``--task path/to/file.py`` (see :mod:`apiary.core.tasks.loading`).
"""

from apiary.core.tasks.builtin import BUILTIN_TASKS, MODEL_ALIASES, ShardTask
from apiary.core.tasks.config import ConfigMismatch, SwarmConfig, TaskIdentity
from apiary.core.tasks.loading import NotATask, TaskLoadError, TaskNotFound, load_task
from apiary.core.tasks.protocol import (
    ModelBuildFailed,
    Site,
    SiteData,
    Split,
    Task,
    TaskBase,
    build_seeded,
)

__all__ = ["BUILTIN_TASKS", "MODEL_ALIASES", "ConfigMismatch", "ModelBuildFailed", "NotATask",
           "ShardTask", "Site", "SiteData", "Split", "SwarmConfig", "Task", "TaskBase",
           "TaskIdentity", "TaskLoadError", "TaskNotFound", "build_seeded", "load_task"]
