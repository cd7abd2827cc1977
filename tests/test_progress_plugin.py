"""The long tiers' progress lines (tests/progress_plugin.py), on a tiny suite run twice."""

from __future__ import annotations

import pytest

from tests.progress_plugin import DEFAULT_ESTIMATE_S, DURATIONS_KEY

pytest_plugins = ["pytester"]

SUITE = """
import pytest

def test_quick():
    pass

@pytest.mark.slow
def test_long():
    pass

@pytest.mark.chain
def test_on_chain():
    pass

@pytest.mark.slow
def test_skipped():
    pytest.skip("not here")
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nmarkers =\n    slow: long\n    chain: needs a devnet\n")
    pytester.makepyfile(test_tiny=SUITE)
    return pytester


def progress_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("[")]


def test_the_second_run_announces_the_long_tests_from_the_durations_the_first_saved(
    suite: pytest.Pytester,
) -> None:
    first = suite.runpytest("-p", "tests.progress_plugin", "-q")
    first.assert_outcomes(passed=3, skipped=1)
    assert progress_lines(first) == [
        "[1/3 slow] test_tiny.py::test_long — ~3 min left (default estimates: no durations "
        "saved yet)",
        "[2/3 chain] test_tiny.py::test_on_chain — ~2 min left (default estimates: no "
        "durations saved yet)",
        "[3/3 slow] test_tiny.py::test_skipped — ~2 min left (default estimates: no "
        "durations saved yet)",
    ]
    assert DEFAULT_ESTIMATE_S == {"slow": 90.0, "chain": 15.0}, "the lines above assume these"

    cache = suite.parseconfigure().cache
    assert cache is not None
    saved = cache.get(DURATIONS_KEY, None)
    # The long tests that ran are saved; the quick one and the skipped one are not.
    assert set(saved) == {"test_tiny.py::test_long", "test_tiny.py::test_on_chain"}
    assert all(isinstance(s, float) and s >= 0 for s in saved.values())
    # As if the last run had been slow: the next run's lines must follow these figures.
    cache.set(DURATIONS_KEY, {"test_tiny.py::test_long": 300.0,
                              "test_tiny.py::test_on_chain": 60.0})

    second = suite.runpytest("-p", "tests.progress_plugin", "-q")
    second.assert_outcomes(passed=3, skipped=1)
    assert progress_lines(second) == [
        # 300 + 60 + the skipped test's default 90 s
        "[1/3 slow] test_tiny.py::test_long — ~8 min left (from the last run's durations, "
        "1 estimated)",
        "[2/3 chain] test_tiny.py::test_on_chain — ~2 min left (from the last run's "
        "durations, 1 estimated)",
        "[3/3 slow] test_tiny.py::test_skipped — ~2 min left (from the last run's "
        "durations, 1 estimated)",
    ]
    assert suite.parseconfigure().cache.get(DURATIONS_KEY, None)["test_tiny.py::test_long"] < 300


def test_only_the_long_tests_that_run_are_counted(suite: pytest.Pytester) -> None:
    quick = suite.runpytest("-p", "tests.progress_plugin", "-m", "not slow and not chain")
    quick.assert_outcomes(passed=1, deselected=3)
    assert progress_lines(quick) == []
    chain = suite.runpytest("-p", "tests.progress_plugin", "-m", "chain", "-v")
    assert progress_lines(chain) == [
        "[1/1 chain] test_tiny.py::test_on_chain — ~15 s left (default estimates: no "
        "durations saved yet)",
    ]
    # In verbose mode the test's own line follows on a line of its own.
    assert any(line.startswith("test_tiny.py::test_on_chain PASSED") for line in chain.outlines)
