"""The check a node makes before it adopts a global model.

The contract checks that every ciphertext is the one its member committed to, but it
cannot see inside them: a member that encrypts huge or random values, or a mask that does
not cancel, yields a valid aggregate that decrypts to garbage. Adopting it would wreck the
model on every node (and the next encryption of weights near ±1e5 fails outright), so each
node checks the decrypted model first: every weight finite and within `max_weight`, and the
change from the model it holds no larger than `change_ratio` times that model's norm or
`change_factor` times the largest change it adopted in its last `window` rounds, whichever
is larger. Every honest node decrypts the same aggregate and holds the same model, so every
honest node reaches the same verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelGuard:
    max_weight: float = 1e3
    change_ratio: float = 2.0
    change_factor: float = 5.0
    window: int = 5

    def verdict(self, new: np.ndarray, held: np.ndarray, recent_changes: Sequence[float], *,
                consecutive: bool = True) -> str | None:
        """Why `new` must not replace `held` (None: adopt it).

        A node catching up over several rounds (`consecutive` False) checks only that the
        weights are finite and bounded: the swarm's model may have moved far meanwhile.
        """
        if new.shape != held.shape:
            return f"it has {new.size} parameters, the model held has {held.size}"
        if not np.all(np.isfinite(new)):
            return f"{int(np.count_nonzero(~np.isfinite(new)))} weights are not finite"
        largest = float(np.max(np.abs(new))) if new.size else 0.0
        if largest > self.max_weight:
            return f"a weight of magnitude {largest:.3g} exceeds the bound {self.max_weight:g}"
        if not consecutive:
            return None
        change = self.change(new, held)
        bound = self.change_bound(held, recent_changes)
        if change > bound:
            return (f"it moves the model by {change:.3g} (norm), more than the bound {bound:.3g} "
                    "derived from the model held and the recent rounds")
        return None

    def change_bound(self, held: np.ndarray, recent_changes: Sequence[float]) -> float:
        recent = [c for c in recent_changes[-self.window:] if np.isfinite(c)]
        by_history = self.change_factor * max(recent) if recent else 0.0
        return max(self.change_ratio * float(np.linalg.norm(held)), by_history)

    @staticmethod
    def change(new: np.ndarray, held: np.ndarray) -> float:
        return float(np.linalg.norm(new - held))
