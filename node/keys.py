"""The node's HE secret contexts, one per key epoch, on disk in its state directory.

Epoch 0 is the founding key (``he-secret.ctx``); a rotation after a member leaves adds
``keys/epoch-<n>.ctx``. Rounds are encrypted under the epoch the contract records for them,
and a context is only stored after its public digest matches that record.
"""

from __future__ import annotations

import threading
from pathlib import Path

from apiary.core.errors import ApiaryError
from apiary.core.files import write_private
from apiary.core.he import HEContext

SECRET_CONTEXT_FILE = "he-secret.ctx"


class KeyMismatch(ApiaryError, ValueError):
    """A context whose public digest differs from the one on chain."""


class KeyRing:
    def __init__(self, state_dir: Path, epoch0: Path | None = None) -> None:
        self.state_dir = state_dir
        self.epoch0 = epoch0 or state_dir / SECRET_CONTEXT_FILE
        self._cache: dict[int, HEContext] = {}
        self._lock = threading.Lock()

    def path(self, epoch: int) -> Path:
        return self.epoch0 if epoch == 0 else self.state_dir / "keys" / f"epoch-{epoch}.ctx"

    def has(self, epoch: int) -> bool:
        return epoch in self._cache or self.path(epoch).exists()

    def get(self, epoch: int) -> HEContext | None:
        with self._lock:
            if epoch not in self._cache:
                path = self.path(epoch)
                if not path.exists():
                    return None
                self._cache[epoch] = HEContext.from_bytes(path.read_bytes())
            return self._cache[epoch]

    def put(self, epoch: int, secret_context: bytes, expected_digest: bytes) -> HEContext:
        """Store an epoch's secret context after checking it against the chain's digest."""
        he = HEContext.from_bytes(secret_context)
        if not he.has_secret_key:
            raise KeyMismatch(f"the context for key epoch {epoch} has no secret key")
        if he.public_digest() != expected_digest:
            raise KeyMismatch(f"the context for key epoch {epoch} does not match the chain")
        path = self.path(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secret_context)
        with self._lock:
            self._cache[epoch] = he
        return he
