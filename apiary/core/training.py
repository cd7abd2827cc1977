"""Local training and evaluation on one hospital's data (CPU, deterministic given the seed).

Optimiser: Adam, created afresh at each :func:`train_local` call — it converges in a few epochs
on a few hundred tabular rows across a wide range of learning rates, and its moment estimates
stay local (only weights are shared, so nothing else needs encrypting or averaging).
Loss: cross-entropy on logits.

:class:`TrainingConfig` holds the one set of training defaults that the node's settings, the
demo, the comparison and the benchmarks start from. The settings and the command line read
it at import, so torch is imported by the functions that train, not by this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from apiary.core.server_optim import ServerOptimizer, ServerOptimizerError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DEFAULT_TRAINING", "Metrics", "TrainingConfig", "evaluate", "predict_proba",
           "roc_auc", "train_local"]

_EVAL_BATCH = 4096


@dataclass(frozen=True)
class TrainingConfig:
    """How each hospital trains: ``rounds`` of ``epochs`` local epochs of Adam at ``lr`` on
    mini-batches of ``batch_size``; ``seed`` fixes the initial model and the shuffling. The
    ``server_*`` fields choose the step applied to each round's average, ``fedprox_mu`` the
    proximal term of the local loss; bad values raise ServerOptimizerError."""

    model: str = "mlp"
    """The task (``--task``): a built-in (heart, fashion, or their models' names mlp, cnn) or
    an entry point, see :mod:`apiary.core.tasks.loading`."""
    rounds: int = 10
    epochs: int = 2
    lr: float = 3e-3
    batch_size: int = 16
    seed: int = 0
    server_optimizer: str = "fedavg"
    """The step every node applies to the decrypted average (`apiary.core.server_optim`)."""
    server_lr: float | None = None
    """Server learning rate η; None: 1 for fedavg and fedavgm, 10^-2 for fedadam and fedyogi."""
    server_momentum: float = 0.9
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    fedprox_mu: float = 0.0
    """FedProx's proximal weight μ: local loss + μ/2·‖w − w_global‖² (0: plain local loss)."""

    def __post_init__(self) -> None:
        self.server_step()  # refuses bad server optimiser parameters
        mu = self.fedprox_mu
        if not (isinstance(mu, int | float) and math.isfinite(mu) and mu >= 0):
            raise ServerOptimizerError(f"fedprox_mu must be a finite number >= 0, got {mu!r}")

    def server_step(self) -> ServerOptimizer:
        """The server optimiser these settings select."""
        return ServerOptimizer(self.server_optimizer, self.server_lr, self.server_momentum,
                               self.server_beta1, self.server_beta2, self.server_tau)


DEFAULT_TRAINING = TrainingConfig()


@dataclass(frozen=True)
class Metrics:
    """Test metrics; ``auc`` is NaN when only one class is present in ``y``."""

    accuracy: float
    auc: float
    loss: float
    samples: int


def _check_xy(x: np.ndarray, y: np.ndarray | None = None) -> None:
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise ValueError(f"x must be a numpy array of shape (n, ...), got {getattr(x, 'shape', x)}")
    if x.shape[0] == 0:
        raise ValueError("x has no samples")
    if y is not None:
        if not isinstance(y, np.ndarray) or y.ndim != 1:
            raise ValueError(f"y must be a 1-D numpy array, got {getattr(y, 'shape', y)}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    mu: float = 0.0,
) -> float:
    """Train ``model`` in place with Adam; return the mean training loss of the last epoch.

    Mini-batches are reshuffled every epoch by a ``torch.Generator`` seeded with ``seed``, so the
    same model, data and seed give bitwise identical weights (same machine and thread count).
    ``mu`` > 0 adds FedProx's proximal term μ/2·‖w − w₀‖² to each batch's loss, w₀ the weights
    the model starts from (the global model); μ = 0 trains exactly as without it. The reported
    loss is the cross-entropy alone. The model is left in eval mode.
    """
    import torch
    import torch.nn.functional as F

    _check_xy(x, y)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu must be a finite number >= 0, got {mu}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    n = xt.shape[0]
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
    model.train()
    epoch_loss = math.nan
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            if anchor:
                proximal = sum(((p - p0) ** 2).sum()
                               for p, p0 in zip(model.parameters(), anchor, strict=True))
                (loss + 0.5 * mu * proximal).backward()
            else:
                loss.backward()
            optimiser.step()
            total += float(loss.detach()) * idx.shape[0]
        epoch_loss = total / n
    model.eval()
    return epoch_loss


def _logits(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    import torch

    _check_xy(x)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(xt[i : i + _EVAL_BATCH]) for i in range(0, len(xt), _EVAL_BATCH)])


def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class probabilities, float64 ``(n, num_classes)``."""
    import torch

    return torch.softmax(_logits(model, x).double(), dim=1).numpy()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Metrics:
    """Accuracy, ROC AUC (binary; macro one-vs-rest for more classes), mean cross-entropy."""
    import torch
    import torch.nn.functional as F

    _check_xy(x, y)
    logits = _logits(model, x).double()
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    if int(yt.min()) < 0 or int(yt.max()) >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got {yt.min()}..{yt.max()}")
    loss = float(F.cross_entropy(logits, yt))
    proba = torch.softmax(logits, dim=1).numpy()
    accuracy = float((proba.argmax(axis=1) == y).mean())
    return Metrics(accuracy=accuracy, auc=roc_auc(y, proba), loss=loss, samples=len(y))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # start of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = int(len(positive) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank (Mann–Whitney) statistic; tied scores count one half.

    ``scores`` is ``(n,)`` (score of class 1) or ``(n, num_classes)`` probabilities. For two
    columns the AUC of class 1; for more, the unweighted mean of one-vs-rest AUCs over the classes
    present in ``y``. NaN when ``y`` holds a single class.
    """
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        return _binary_auc(y == 1, scores)
    if scores.ndim != 2 or scores.shape[0] != y.shape[0]:
        raise ValueError(f"scores of shape {scores.shape} do not match {y.shape[0]} labels")
    if scores.shape[1] == 2:
        return _binary_auc(y == 1, scores[:, 1])
    present = np.unique(y)
    if len(present) < 2:
        return math.nan
    return float(np.mean([_binary_auc(y == c, scores[:, c]) for c in present]))
