"""`make test`'s long tests announce themselves with about how long the long tier has left.

Before each test marked ``slow`` or ``chain`` one line, on a terminal and in a CI log alike
(also with ``-q``)::

    [12/40 slow] tests/test_soak.py::test_x — ~6 min left (from the last run's durations)

The time left is the sum of the estimates of this test and the long ones after it: each
one's duration in the last run that ran it (kept in pytest's cache under
``apiary/durations``), or a default per tier where none is saved (a fresh clone, a new
test). Which tests run and how is left alone.
"""

from __future__ import annotations

import pytest

from apiary.tools.progress import about

DURATIONS_KEY = "apiary/durations"
TIERS = ("slow", "chain")
"""The long tiers, by marker; a test marked both counts as ``slow``."""
DEFAULT_ESTIMATE_S = {"slow": 90.0, "chain": 15.0}
"""A long test's estimate before any run has saved its duration."""


class LongTierProgress:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        cache = getattr(config, "cache", None)
        saved = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
        self.saved: dict[str, float] = {
            str(k): float(v) for k, v in (saved.items() if isinstance(saved, dict) else ())
            if isinstance(v, (int, float))}
        self.order: list[str] = []
        self.tier: dict[str, str] = {}
        self.measured: dict[str, float] = {}
        self.completed: set[str] = set()

    def estimate_s(self, nodeid: str) -> float:
        return self.saved.get(nodeid, DEFAULT_ESTIMATE_S[self.tier[nodeid]])

    def line(self, nodeid: str) -> str:
        index = self.order.index(nodeid)
        ahead = self.order[index:]
        left = sum(self.estimate_s(n) for n in ahead)
        guessed = sum(1 for n in ahead if n not in self.saved)
        if guessed == 0:
            source = "from the last run's durations"
        elif not self.saved:
            source = "default estimates: no durations saved yet"
        else:
            source = f"from the last run's durations, {guessed} estimated"
        return (f"[{index + 1}/{len(self.order)} {self.tier[nodeid]}] {nodeid} — "
                f"{about(left)} left ({source})")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            tier = next((t for t in TIERS if item.get_closest_marker(t)), None)
            if tier is not None:
                self.order.append(item.nodeid)
                self.tier[item.nodeid] = tier

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if nodeid not in self.tier or reporter is None:
            return
        writer = getattr(reporter, "_tw", None)
        if writer is not None and writer.width_of_current_line:
            reporter.write("\n")
        if getattr(reporter, "showfspath", False) or getattr(reporter, "showlongtestinfo", False):
            # The reporter starts its next line itself: leave this one open for it to end.
            reporter.write(self.line(nodeid))
            reporter.currentfspath = None
        else:
            reporter.write_line(self.line(nodeid))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.tier:
            return
        self.measured[report.nodeid] = self.measured.get(report.nodeid, 0.0) + report.duration
        if report.when == "call" and not report.skipped:
            self.completed.add(report.nodeid)

    def pytest_sessionfinish(self) -> None:
        cache = getattr(self.config, "cache", None)
        if cache is None or not self.completed:
            return
        durations = {**self.saved,
                     **{n: round(self.measured[n], 2) for n in sorted(self.completed)}}
        cache.set(DURATIONS_KEY, durations)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LongTierProgress(config), "apiary-long-tier-progress")
