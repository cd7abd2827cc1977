"""How far a long command is, what it waits for, and about how long is left.

A command reports through one :class:`Progress`: messages (``progress("…")``, the callback
protocol the tools have always taken) and tasks of a known number of steps
(``progress.task(total, what)``). On a terminal a rich progress bar on stderr redraws in
place; anywhere else (a CI log, a pipe, a test's callback) the same progress arrives as
plain lines, ``[k/N] what — 2 min elapsed, ~6 min left``, at most one every few seconds
per task. Tables a command prints on stdout are never drawn into the bar: on a terminal
rich prints them above it; a redirected stdout is left alone.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.progress import Task as RichTask
from rich.text import Text

__all__ = ["LiveProgress", "Progress", "Remaining", "Task", "about", "as_progress",
           "format_duration", "progress_on_stderr"]

Say = Callable[[str], None]
Clock = Callable[[], float]

LINE_INTERVAL_S = 10.0
"""Plain mode: the fewest seconds between two lines of one task (its first and last
lines always show)."""
PACE_WINDOW = 10
"""Steps the pace is measured over: recent enough to follow a command whose steps change
in cost, long enough to smooth one slow step."""


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: ``45 s``, ``6 min``, ``1 h 05 min``."""
    if seconds < 0.5:
        return "<1 s"
    if seconds < 59.5:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def about(seconds: float) -> str:
    """An estimate: ``~6 min``, or ``<1 s``."""
    shown = format_duration(seconds)
    return shown if shown.startswith("<") else f"~{shown}"


class Remaining:
    """The time left of a task of ``total`` steps, from the pace of its recent steps.

    The pace is the time per step over the last :data:`PACE_WINDOW` steps (over all of them
    while there are fewer: elapsed / done). Between two steps the estimate counts down; once
    the current step runs later than the pace, it counts as nearly done and the rest at the
    usual pace.
    """

    def __init__(self, total: int, started: float, window: int = PACE_WINDOW) -> None:
        self.total = total
        self.window = window
        self._samples: list[tuple[float, int]] = [(started, 0)]

    def record(self, done: int, now: float) -> None:
        if done != self._samples[-1][1]:
            self._samples.append((now, done))
            del self._samples[:-(self.window + 1)]

    def seconds_left(self, now: float) -> float | None:
        """None until a step is done: there is no pace to go by yet."""
        last_at, done = self._samples[-1]
        first_at, first_done = self._samples[0]
        if done <= first_done:
            return None
        left = self.total - done
        if left <= 0:
            return 0.0
        per_step = (last_at - first_at) / (done - first_done)
        return max(per_step * left - (now - last_at), per_step * (left - 1), 0.0)


class Task:
    """One piece of work of ``total`` steps that a :class:`Progress` shows.

    ``describe(what)`` says what it waits for now; ``advance(steps, what)`` marks steps done
    (and optionally says what comes next).
    """

    def __init__(self, owner: Progress, total: int, what: str, clock: Clock) -> None:
        self.total = max(int(total), 1)
        self.done = 0
        self.what = what
        self._owner = owner
        self._clock = clock
        self.started = clock()
        self._remaining = Remaining(self.total, self.started)
        self.line_shown_at: float | None = None
        """When a plain line last showed this task; +inf once its final line has."""

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def describe(self, what: str) -> None:
        if what != self.what:
            self.what = what
            self._owner._changed(self)

    def advance(self, steps: int = 1, what: str | None = None) -> None:
        self.done = min(self.done + steps, self.total)
        self._remaining.record(self.done, self._clock())
        if what is not None:
            self.what = what
        self._owner._changed(self)

    def finish(self) -> None:
        """All steps done, however many were counted (a run that ended early)."""
        if not self.finished:
            self.advance(self.total - self.done)

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def seconds_left(self) -> float | None:
        return self._remaining.seconds_left(self._clock())

    def line(self) -> str:
        """The task as one plain line: ``[3/10] what — 2 min elapsed, ~6 min left``, at the
        end ``[10/10] done in 9 min``."""
        elapsed = format_duration(self.elapsed_s())
        if self.finished:
            return f"[{self.done}/{self.total}] done in {elapsed}"
        left = self.seconds_left()
        state = f"{elapsed} elapsed" if left is None else f"{elapsed} elapsed, {about(left)} left"
        return f"[{self.done}/{self.total}] {self.what} — {state}"


class Progress:
    """Messages and tasks as plain lines to ``say``: a log, a pipe, a test's list.

    Callable with a message, so it is what a tool taking a ``Callable[[str], None]`` expects.
    A task's lines are rate limited to one per ``interval_s`` (its first and last always
    show), so a log stays readable however often a command reports.
    """

    redraws = False
    """Whether this redraws a terminal in place (then other processes should stay quiet)."""

    def __init__(self, say: Say, *, interval_s: float = LINE_INTERVAL_S,
                 clock: Clock = time.monotonic) -> None:
        self._say = say
        self._interval_s = interval_s
        self._clock = clock

    def __call__(self, message: str) -> None:
        self._say(message)

    def task(self, total: int, what: str) -> Task:
        task = Task(self, total, what, self._clock)
        self._opened(task)
        return task

    def _opened(self, task: Task) -> None:
        self._show(task)

    def _changed(self, task: Task) -> None:
        last = task.line_shown_at
        if last is None or task.finished or self._clock() - last >= self._interval_s:
            self._show(task)

    def _show(self, task: Task) -> None:
        if task.line_shown_at == math.inf:
            return
        task.line_shown_at = math.inf if task.finished else self._clock()
        self._say(task.line())


def as_progress(progress: Say | None) -> Progress:
    """The :class:`Progress` behind a tool's ``progress`` argument: itself, a plain
    callback's lines, or silence."""
    if isinstance(progress, Progress):
        return progress
    return Progress(progress or _quiet)


def _quiet(_message: str) -> None:
    pass


class _LeftColumn(ProgressColumn):
    """``~6 min left``, by :class:`Remaining` rather than rich's speed over 30 s, which
    knows nothing of steps minutes apart."""

    max_refresh = 1.0

    def render(self, task: RichTask) -> Text:
        tracked: Task = task.fields["tracked"]
        if tracked.finished:
            return Text(f"done in {format_duration(tracked.elapsed_s())}",
                        style="progress.elapsed")
        left = tracked.seconds_left()
        shown = "estimating…" if left is None else f"{about(left)} left"
        return Text(shown, style="progress.remaining")


class _ElapsedColumn(ProgressColumn):
    max_refresh = 1.0

    def render(self, task: RichTask) -> Text:
        tracked: Task = task.fields["tracked"]
        if tracked.finished:
            return Text("")
        return Text(f"{format_duration(tracked.elapsed_s())} elapsed", style="progress.elapsed")


class LiveProgress(Progress):
    """A rich progress bar per task on a terminal's stderr, messages printed above it.

    stdout is routed above the bar too while stdout is this terminal (a table row printed
    mid-run would otherwise be drawn over); a redirected stdout is never touched.
    """

    redraws = True

    def __init__(self, console: Console, clock: Clock = time.monotonic) -> None:
        super().__init__(self._print, clock=clock)
        self._bars = RichProgress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            _ElapsedColumn(), _LeftColumn(), console=console, refresh_per_second=2,
            redirect_stdout=_isatty(sys.stdout), redirect_stderr=True,
        )
        self._ids: dict[int, Any] = {}

    def __enter__(self) -> LiveProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def _print(self, line: str) -> None:
        self._bars.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, message: str) -> None:
        self._print(f"  … {message}")

    def _opened(self, task: Task) -> None:
        self._ids[id(task)] = self._bars.add_task(task.what, total=task.total, tracked=task)

    def _changed(self, task: Task) -> None:
        self._bars.update(self._ids[id(task)], completed=task.done, description=task.what)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _to_stderr(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


@contextmanager
def progress_on_stderr(interval_s: float = LINE_INTERVAL_S) -> Iterator[Progress]:
    """A command's progress on stderr: redrawn on an interactive terminal (rich's
    ``TTY_INTERACTIVE=0`` turns that off), plain rate-limited lines anywhere else."""
    console = Console(stderr=True)
    if console.is_interactive and _isatty(sys.stderr):
        with LiveProgress(console) as live:
            yield live
    else:
        yield Progress(_to_stderr, interval_s=interval_s)
