"""`apiary bench round` end to end: a real 3-node round through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from apiary.cli import app
from apiary.tools.bench.round import PHASES

pytestmark = pytest.mark.chain


@pytest.mark.timeout(120)
def test_bench_round_times_every_phase_of_a_finalized_round(tmp_path: Path) -> None:
    out = tmp_path / "round.json"
    result = CliRunner().invoke(
        app, ["bench", "round", "--nodes", "3", "--params", "5000", "--rounds", "2",
              "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "all but train" in result.stdout

    report = json.loads(out.read_text())
    assert report["benchmark"] == "round"
    assert {"machine", "processor", "cpus", "python", "system"} <= report.keys()
    [row] = report["results"]
    assert row["nodes"] == 3
    assert abs(row["params"] - 5000) <= 500
    assert len(row["per_round"]) == 2
    # The blocks were spread over the relays, and every node summed them itself.
    assert row["relays"] >= 1 and row["summed_locally"] == 3
    assert row["gas_per_round"] > 0 and row["cpu_seconds"] > 0
    assert 0 < row["peak_rss_mib"]["median"] <= row["peak_rss_mib"]["max"]
    assert set(row["seconds"]) == set(PHASES)
    for phase in PHASES:
        for figure in (row["seconds"][phase], row["seconds_max"][phase]):
            assert isinstance(figure, float) and math.isfinite(figure) and figure > 0, phase
        assert row["seconds"][phase] <= row["seconds_max"][phase]
    assert 0 < row["relay_aggregate_seconds"] <= row["seconds_max"]["aggregate"]
    assert 0 < row["seconds_excluding_train"] <= row["seconds_excluding_train_max"]
    # Figures are medians over the rounds; the slowest node's round fits in the run's wall.
    assert row["seconds_excluding_train_max"] <= row["round_wall_seconds"] * report["rounds"]
    # Every node decrypted the plain weighted mean of what the three nodes trained.
    assert row["max_abs_error"] < 1e-6
