"""Waits that grow while something keeps failing: 1 s, 2 s, 4 s … up to a cap."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    first_s: float = 1.0
    cap_s: float = 30.0
    _next_s: float = field(default=0.0, init=False, repr=False)

    def next(self) -> float:
        """Seconds to wait before the next try."""
        self._next_s = self.first_s if self._next_s == 0 else min(self._next_s * 2, self.cap_s)
        return self._next_s

    def reset(self) -> None:
        """The thing works again: the next failure waits `first_s` again."""
        self._next_s = 0.0
