"""A task defined outside the package, as a hospital's ML team writes one: its own module
class on the node's shard, the training step and evaluation of TaskBase."""

from __future__ import annotations

import math

import torch
from torch import nn

from apiary.core.tasks import SiteData, TaskBase


class Tiny(nn.Module):
    """features → width (tanh) → classes."""

    def __init__(self, features: int, classes: int, width: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, width)
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


class TinyTask(TaskBase):
    name = "tiny"
    version = "1"
    width = 6

    def build_model(self, data: SiteData) -> nn.Module:
        return Tiny(math.prod(data.input_shape), data.num_classes or 2, self.width)


class WideTask(TinyTask):
    """Same name and version, another architecture: not the same task."""

    width = 12


task = TinyTask()
wide = WideTask()
not_a_task = {"name": "tiny"}


class Unseeded(TinyTask):
    """Draws its initial weights from a generator of its own: every build differs."""

    def build_model(self, data: SiteData) -> nn.Module:
        model = super().build_model(data)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator()
                                            .manual_seed(torch.seed() % 2**31)))
        return model


unseeded = Unseeded()


class Broken(TinyTask):
    def build_model(self, data: SiteData) -> nn.Module:
        raise RuntimeError("no such layer")


broken = Broken()
