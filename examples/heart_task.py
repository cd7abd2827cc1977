"""Bring your own model: a complete Apiary task for the UCI Heart Disease shards.

Run it in a local swarm of the four hospitals::

    .venv/bin/apiary demo --task examples/heart_task.py --rounds 3

or at one hospital: ``apiary node --task examples/heart_task.py --data … --state-dir …``
(every member of a swarm runs the same task: its name, version, architecture and initial
weights are part of the swarm-wide configuration the chain records).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from apiary.core.tasks import Site, SiteData, Split, TaskBase
from apiary.core.training import Metrics, TrainingConfig, evaluate


class HeartTask(TaskBase):
    name = "heart-residual"
    version = "1"

    def load_data(self, site: Site) -> SiteData:
        # The node's --data shard (and --heldout); read any file or database here instead.
        return super().load_data(site)

    def build_model(self, data: SiteData) -> nn.Module:
        # Built with torch's random state seeded by the swarm seed: the same on every node.
        features = math.prod(data.input_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 24), nn.LayerNorm(24),
                             nn.ReLU(), nn.Linear(24, data.num_classes or 2))

    def train(self, model: nn.Module, data: SiteData, config: TrainingConfig,
              seed: int) -> float:
        # One round of local training from the global weights: SGD with momentum.
        x = torch.as_tensor(data.train.x, dtype=torch.float32)
        y = torch.as_tensor(data.train.y, dtype=torch.int64)
        optimiser = torch.optim.SGD(model.parameters(), lr=10 * config.lr, momentum=0.9)
        shuffle = torch.Generator().manual_seed(seed)
        model.train()
        total = 0.0
        for _ in range(config.epochs):
            total = 0.0
            for batch in torch.randperm(len(x), generator=shuffle).split(config.batch_size):
                optimiser.zero_grad()
                loss = F.cross_entropy(model(x[batch]), y[batch])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
        model.eval()
        return total / len(x)

    def evaluate(self, model: nn.Module, split: Split) -> Metrics:
        return evaluate(model, split.x, split.y)  # accuracy, ROC AUC, cross-entropy


task = HeartTask()
