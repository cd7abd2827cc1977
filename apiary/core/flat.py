"""A model's weights as one flat vector, and back — the form that is encrypted and averaged.

Order and content: ``model.state_dict()`` order, **floating-point entries only**, each tensor
flattened in row-major order. That includes floating *buffers* that are part of the state dict
(e.g. BatchNorm's ``running_mean``/``running_var``): they are model state that every member
must share, and averaging them is what FedAvg does. Integer buffers (e.g. BatchNorm's
``num_batches_tracked``) and non-persistent buffers are left out and left alone by
:func:`load_flat`. The registry's models (``apiary.core.models``) have no buffers at all, so
for them the vector is exactly their parameters.

Vectors are float64 so that weighted sums stay exact enough; the model itself is float32, so a
vector means exactly what it is once cast to float32, which is what :func:`weights_digest`
hashes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

__all__ = ["flat_entries", "flatten", "load_flat", "param_count", "weights_digest"]


def flat_entries(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, tensor)`` state-dict entries that make up the flat vector, in order."""
    return [
        (name, tensor)
        for name, tensor in model.state_dict(keep_vars=True).items()
        if tensor.is_floating_point()
    ]


def param_count(model: nn.Module) -> int:
    """Length of the flat vector (floating state-dict entries, see the module docstring)."""
    return sum(t.numel() for _, t in flat_entries(model))


def flatten(model: nn.Module) -> np.ndarray:
    """All floating state-dict entries, concatenated as a new float64 1-D array."""
    entries = flat_entries(model)
    if not entries:
        return np.zeros(0, dtype=np.float64)
    with torch.no_grad():
        parts = [t.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for _, t in entries]
        return torch.cat(parts).numpy().copy()


def load_flat(model: nn.Module, vector: np.ndarray) -> None:
    """Write ``vector`` into ``model`` in place (cast to each tensor's dtype).

    ``ValueError`` — and the model unchanged — when the vector is not 1-D, has the wrong length
    (message gives expected vs got) or holds NaN/infinity.
    """
    vec = np.asarray(vector)
    if vec.ndim != 1:
        raise ValueError(f"weight vector must be 1-D, got shape {vec.shape}")
    if vec.dtype.kind not in "fiu":
        raise ValueError(f"weight vector must be numeric, got dtype {vec.dtype}")
    entries = flat_entries(model)
    expected = sum(t.numel() for _, t in entries)
    if vec.shape[0] != expected:
        raise ValueError(
            f"weight vector has the wrong length: expected {expected} values for this model, "
            f"got {vec.shape[0]}"
        )
    if not np.isfinite(vec).all():
        raise ValueError("weight vector contains NaN or infinite values")
    source = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float64))
    offset = 0
    with torch.no_grad():
        for _, tensor in entries:
            n = tensor.numel()
            chunk = source[offset : offset + n].reshape(tensor.shape)
            tensor.copy_(chunk.to(dtype=tensor.dtype, device=tensor.device))
            offset += n


def weights_digest(vector: np.ndarray) -> str:
    """Hex SHA-256 of the vector as float32 little-endian bytes, i.e. as loaded into a float32
    model, so "bitwise identical weights" can be compared across processes and machines."""
    vec = np.asarray(vector)
    if vec.ndim != 1:
        raise ValueError(f"weight vector must be 1-D, got shape {vec.shape}")
    return hashlib.sha256(np.ascontiguousarray(vec, dtype="<f4").tobytes()).hexdigest()
