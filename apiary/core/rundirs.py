"""Run directories: the only directories a command may clear are ones it made itself.

`apiary demo --out DIR` (and compare, soak) replace an earlier run's
files. ``DIR/data`` and ``DIR/state`` are also the default paths of `apiary node`, so a
command pointed at a node's directory must not delete that node's identity and keys. A
command that makes a run directory writes a marker file (``.apiary-run``, naming what made
it) into it; one that clears a directory first checks the marker, and refuses a directory
that exists, holds anything and has no marker.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from apiary.core.errors import ConfigError

RUN_MARKER = ".apiary-run"


class NotARunDirectory(ConfigError):
    """A directory to clear holds files and was not made by an Apiary command."""


def is_run_directory(directory: Path) -> bool:
    return (Path(directory) / RUN_MARKER).is_file()


def claim_run_directory(directory: Path, maker: str, *, option: str = "--out") -> Path:
    """Make `directory` a run directory of `maker` (e.g. "apiary demo"): create it, or take
    an empty one, writing the marker; accept one that already has a marker. Refuse
    (NotARunDirectory, nothing touched) one that holds anything and has no marker."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotARunDirectory(f"{directory} is a file, not a directory: choose another "
                               f"{option}")
    if is_run_directory(directory):
        return directory
    if directory.exists() and any(directory.iterdir()):
        raise NotARunDirectory(
            f"{directory} was not made by {maker} (no {RUN_MARKER} marker); choose another "
            f"{option} or empty it yourself")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_MARKER).write_text(f"made by {maker}; its contents are replaced by the "
                                        "next run\n")
    return directory


def clear_run_directory(directory: Path, maker: str, parts: Iterable[str] | None = None, *,
                        option: str = "--out") -> Path:
    """Claim `directory` (see :func:`claim_run_directory`), then delete the earlier run's
    `parts` in it (names directly inside it), or everything but the marker."""
    directory = claim_run_directory(directory, maker, option=option)
    names = list(parts) if parts is not None else [p.name for p in directory.iterdir()
                                                     if p.name != RUN_MARKER]
    for name in names:
        if "/" in name or name in ("", ".", "..", RUN_MARKER):
            raise ValueError(f"not a part of a run directory: {name!r}")
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return directory
