"""Stopping child processes: SIGTERM first, SIGKILL after the grace period, always reaped."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time

from apiary.core.processes import stop_process, stop_processes

SLEEP = "import time; time.sleep(60)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


def python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_a_process_that_honours_sigterm_is_terminated() -> None:
    process = python(SLEEP)
    stop_process(process, grace_s=10)
    assert process.returncode == -signal.SIGTERM


def test_one_that_ignores_it_is_killed_after_the_grace_period() -> None:
    process = python(STUBBORN)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    started = time.monotonic()
    stop_process(process, grace_s=0.5)
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_several_share_one_grace_period_and_exited_ones_are_fine() -> None:
    stubborn = [python(STUBBORN) for _ in range(3)]
    for process in stubborn:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    done = python("pass")
    done.wait()
    started = time.monotonic()
    stop_processes([*stubborn, done], grace_s=1.0)
    assert time.monotonic() - started < 2.5
    assert [p.returncode for p in stubborn] == [-signal.SIGKILL] * 3 and done.returncode == 0


def test_a_process_group_stops_with_its_leader() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                             start_new_session=True)
    assert shell.stdout is not None
    child = int(shell.stdout.readline())
    stop_process(shell, grace_s=10, group=True)
    assert shell.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_multiprocessing_children_too() -> None:
    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    process.start()
    stop_process(process, grace_s=10)
    assert process.exitcode == -signal.SIGTERM
    never_started = multiprocessing.get_context("fork").Process(target=time.sleep, args=(1,))
    stop_process(never_started, grace_s=1)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, reaped by init later, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
