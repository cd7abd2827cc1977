"""Progress of long commands: the time left, plain lines off a terminal, their rate."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from apiary.tools.progress import (
    LiveProgress,
    Progress,
    Remaining,
    as_progress,
    format_duration,
    progress_on_stderr,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "shown"), [
    (0.2, "<1 s"), (1.4, "1 s"), (45, "45 s"), (59.6, "1 min"), (6 * 60 + 10, "6 min"),
    (3600 + 5 * 60, "1 h 05 min"), (3 * 3600, "3 h 00 min"),
])
def test_durations_read_as_a_person_says_them(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_time_left_is_elapsed_over_done_times_the_steps_left() -> None:
    remaining = Remaining(total=10, started=0.0)
    assert remaining.seconds_left(5.0) is None, "no pace before the first step"
    remaining.record(2, 30.0)
    assert remaining.seconds_left(30.0) == pytest.approx(120.0)
    # Between steps it counts down...
    assert remaining.seconds_left(40.0) == pytest.approx(110.0)
    # ...and a step running late counts as nearly done, the rest at the usual pace.
    assert remaining.seconds_left(500.0) == pytest.approx(7 * 15.0)
    remaining.record(10, 60.0)
    assert remaining.seconds_left(61.0) == 0.0


def test_the_pace_follows_the_recent_steps() -> None:
    remaining = Remaining(total=6, started=0.0, window=2)
    for done, at in ((1, 1.0), (2, 2.0), (3, 12.0), (4, 22.0)):
        remaining.record(done, at)
    # The last two steps took 10 s each; the two quick first ones no longer count.
    assert remaining.seconds_left(22.0) == pytest.approx(20.0)


def test_a_task_line_says_how_far_what_it_waits_for_and_the_time_left() -> None:
    clock, lines = Clock(), []
    progress = Progress(lines.append, clock=clock)
    task = progress.task(4, "seed 1/2: swarm round 1/2")
    clock.now = 60.0
    task.advance(what="seed 1/2: swarm round 2/2")
    clock.now = 120.0
    task.advance(what="seed 2/2: swarm round 1/2")
    assert lines == [
        "[0/4] seed 1/2: swarm round 1/2 — <1 s elapsed",
        "[1/4] seed 1/2: swarm round 2/2 — 1 min elapsed, ~3 min left",
        "[2/4] seed 2/2: swarm round 1/2 — 2 min elapsed, ~2 min left",
    ]
    clock.now = 150.0
    task.finish()
    assert lines[-1] == "[4/4] done in 2 min"


def test_plain_lines_are_rate_limited_but_the_first_and_last_always_show() -> None:
    clock, lines = Clock(), []
    progress = Progress(lines.append, interval_s=10.0, clock=clock)
    task = progress.task(25, "steps")
    for step in range(1, 26):
        clock.now = float(step)
        task.advance()
        task.describe(f"step {step + 1}")
    shown = [line.split("]")[0] + "]" for line in lines]
    assert shown == ["[0/25]", "[10/25]", "[20/25]", "[25/25]"]
    assert lines[-1] == "[25/25] done in 25 s"


def test_an_unchanged_description_prints_nothing() -> None:
    clock, lines = Clock(), []
    progress = Progress(lines.append, interval_s=0.0, clock=clock)
    task = progress.task(3, "waiting for 5 nodes to answer")
    task.describe("waiting for 5 nodes to answer")
    assert len(lines) == 1
    task.describe("waiting for 4 nodes to answer")
    assert lines[-1] == "[0/3] waiting for 4 nodes to answer — <1 s elapsed"


def test_a_plain_callback_still_gets_every_message_as_it_was() -> None:
    messages: list[str] = []
    progress = as_progress(messages.append)
    progress("encrypting 5 updates")
    assert messages == ["encrypting 5 updates"]
    assert as_progress(progress) is progress
    as_progress(None)("goes nowhere")
    as_progress(None).task(2, "nothing shown").advance(2)


def test_off_a_terminal_progress_is_plain_lines_on_stderr_and_stdout_stays_clean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with progress_on_stderr() as progress:
        assert not progress.redraws and not isinstance(progress, LiveProgress)
        progress("starting 5 node processes")
        task = progress.task(2, "round 1/2: waiting for 5 nodes")
        print("round  held-out")
        task.advance(2)
    out, err = capsys.readouterr()
    assert out == "round  held-out\n"
    lines = err.splitlines()
    assert lines[0] == "  … starting 5 node processes"
    assert lines[1].startswith("  … [0/2] round 1/2: waiting for 5 nodes — ")
    assert lines[2].startswith("  … [2/2] done in ")
    assert "\x1b" not in err, "no terminal control codes in a log"


def test_on_a_terminal_the_bar_shows_the_steps_and_the_time_left() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, force_interactive=True, width=120,
                      color_system=None)
    clock = Clock()
    with LiveProgress(console, clock=clock) as progress:
        assert progress.redraws
        progress("founding the swarm")
        task = progress.task(4, "seed 1/1: swarm round 1/4")
        clock.now = 60.0
        task.advance(what="seed 1/1: swarm round 2/4")
    text = screen.getvalue()
    assert "  … founding the swarm" in text
    assert "seed 1/1: swarm round 2/4" in text and "1/4" in text
    assert "1 min elapsed" in text and "~3 min left" in text
