"""The small model registry: every node of a swarm builds the same architecture from its name.

Initialisation is seeded and deterministic (same name, shape, classes and seed → bitwise the same
weights in any process), and it does not disturb torch's global random state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from apiary.core.errors import InvalidInput

__all__ = ["MODEL_NAMES", "build_mlp_with_params", "build_model", "mlp_param_count"]

MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "mlp-wide", "mlp-1m")

MLP_HIDDEN: tuple[int, ...] = (32, 16)
MLP_WIDE_HIDDEN: tuple[int, ...] = (384, 256)
MLP_1M_PARAMS = 1_000_000


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build model ``name`` for samples of ``input_shape`` and ``num_classes`` outputs (logits).

    ``"mlp"``: flatten → d→32→16→classes with ReLU (tabular data; d = prod(input_shape)).
    ``"cnn"``: for ``(channels, height, width)`` images, e.g. 1×28×28: two 3×3 conv (8, 16
    channels) + 2×2 max-pool blocks, then 32 hidden units → classes (26,698 parameters for
    1×28×28 and 10 classes).
    ``"mlp-wide"``: flatten → d→384→256→classes with ReLU (111,770 parameters for 16 inputs and
    26 classes: the letters data set).
    ``"mlp-1m"``: flatten → d→h→h→classes with ReLU, h chosen for about a million parameters
    (1,000,912 for the heart data's 15 features and 2 classes): a model of a real size, to see
    what a round costs with it.
    """
    if name not in MODEL_NAMES:
        raise InvalidInput(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s <= 0 for s in input_shape):
        raise ValueError(f"input_shape must be non-empty and positive, got {input_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            return _mlp(math.prod(input_shape), MLP_HIDDEN, num_classes)
        if name == "mlp-wide":
            return _mlp(math.prod(input_shape), MLP_WIDE_HIDDEN, num_classes)
        if name == "mlp-1m":
            width = _hidden_for(MLP_1M_PARAMS, math.prod(input_shape), num_classes)
            return _mlp(math.prod(input_shape), (width, width), num_classes)
        return _cnn(input_shape, num_classes)


def _mlp(input_dim: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    if len(input_shape) != 3:
        raise InvalidInput(f"cnn needs (channels, height, width) input, got {input_shape}")
    channels, height, width = input_shape
    if height < 4 or width < 4:
        raise InvalidInput(f"cnn needs images of at least 4×4 pixels, got {height}×{width}")
    flat = 16 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def mlp_param_count(input_dim: int, hidden: int, num_classes: int) -> int:
    """Parameters of input_dim→hidden→hidden→num_classes (weights and biases)."""
    return (input_dim + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * num_classes


def build_mlp_with_params(
    target_params: int, input_dim: int, num_classes: int, seed: int
) -> nn.Module:
    """An MLP input_dim→h→h→num_classes (ReLU) with h chosen so that its parameter count is the
    closest to ``target_params``; ``ValueError`` if that is not within 10 %.

    For 15 features and 2 classes: 10k → h=91 (10,012), 100k → h=307 (100,084),
    1M → h=991 (1,000,912).
    """
    if target_params <= 0 or input_dim <= 0 or num_classes < 2:
        raise ValueError(
            f"need target_params > 0, input_dim > 0, num_classes >= 2; got "
            f"{target_params}, {input_dim}, {num_classes}"
        )
    hidden = _hidden_for(target_params, input_dim, num_classes)
    got = mlp_param_count(input_dim, hidden, num_classes)
    if abs(got - target_params) > 0.1 * target_params:
        raise ValueError(
            f"no input_dim={input_dim}→h→h→{num_classes} MLP has about {target_params} "
            f"parameters (closest: h={hidden}, {got})"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _mlp(input_dim, (hidden, hidden), num_classes)


def _hidden_for(target_params: int, input_dim: int, num_classes: int) -> int:
    """The width h of input_dim→h→h→num_classes whose parameter count is closest to the
    target: h² + (input_dim + 2 + num_classes)·h + num_classes = target."""
    b = input_dim + 2 + num_classes
    root = (-b + math.sqrt(b * b + 4 * max(target_params - num_classes, 0))) / 2
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(candidates,
               key=lambda h: abs(mlp_param_count(input_dim, h, num_classes) - target_params))
