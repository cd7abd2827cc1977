"""Stopping child processes: ask politely, wait, then kill whatever is still running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from multiprocessing.process import BaseProcess
from typing import Any

__all__ = ["Child", "stop_process", "stop_processes"]

Child = subprocess.Popen[Any] | BaseProcess
"""A process started with :mod:`subprocess` or :mod:`multiprocessing`."""


def stop_process(process: Child, grace_s: float, *, group: bool = False) -> None:
    """SIGTERM ``process``, wait up to ``grace_s`` seconds for it to exit, SIGKILL it if it
    has not, and reap it. ``group``: signal its whole process group (a Popen started with
    ``start_new_session=True``), so its own children stop too."""
    stop_processes([process], grace_s, group=group)


def stop_processes(processes: Iterable[Child], grace_s: float, *,
                   group: bool = False) -> None:
    """:func:`stop_process` for several at once: all are asked first, in the order given, and
    share one ``grace_s``, so stopping N processes takes ``grace_s`` at most, not N times it."""
    children = list(processes)
    for child in children:
        if _running(child):
            _signal(child, signal.SIGTERM, group)
    deadline = time.monotonic() + grace_s
    for child in children:
        if not _wait(child, max(0.0, deadline - time.monotonic())):
            _signal(child, signal.SIGKILL, group)
            _wait(child, None)


def _running(child: Child) -> bool:
    if isinstance(child, subprocess.Popen):
        return child.poll() is None
    return child.is_alive()


def _signal(child: Child, signum: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group and isinstance(child, subprocess.Popen):
            os.killpg(child.pid, signum)
        elif isinstance(child, subprocess.Popen):
            child.send_signal(signum)
        elif signum == signal.SIGKILL:
            child.kill()
        else:
            child.terminate()


def _wait(child: Child, timeout: float | None) -> bool:
    """Whether ``child`` has exited (and been reaped) within ``timeout`` seconds."""
    if isinstance(child, subprocess.Popen):
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    if child.pid is None:
        return True
    child.join(timeout)
    return not child.is_alive()
