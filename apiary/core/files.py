"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every write goes to a temporary file in the target's directory, is flushed to disk, then
renamed over the target. A private file (a key, an identity) gets mode 0600 when the
temporary file is created, before the first byte is written, so it is never readable by
others, not even for an instant; other files get 0644 (both less whatever the umask removes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["PRIVATE_MODE", "PUBLIC_MODE", "replacing", "write_atomic", "write_json",
           "write_private", "write_private_json"]

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def replacing(path: Path, *, private: bool = False) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content to; it replaces ``path`` when the block
    ends without an error, and is removed (leaving ``path`` as it was) when it raises."""
    path = Path(path)
    mode = PRIVATE_MODE if private else PUBLIC_MODE
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, _FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_directory(path.parent)


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> Path:
    with replacing(path, private=private) as fh:
        fh.write(data)
    return path


def write_private(path: Path, data: bytes) -> Path:
    """Write a secret (a key, an HE secret context): mode 0600 from the start."""
    return write_atomic(path, data, private=True)


def write_json(path: Path, obj: Any, *, indent: int = 1, private: bool = False) -> Path:
    """``obj`` as indented JSON with a final newline."""
    return write_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode(), private=private)


def write_private_json(path: Path, obj: Any) -> Path:
    """JSON holding a secret (a node's identity with its private keys): mode 0600."""
    return write_json(path, obj, private=True)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (where the platform lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
