"""The short soak: real node processes under chaos and a malicious member (`apiary bench
soak` runs the long one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiary.tools.soak import SoakOptions, run_soak

pytestmark = pytest.mark.slow


def test_the_swarm_survives_kills_pauses_a_devnet_restart_and_a_malicious_member(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    report = run_soak(SoakOptions(nodes=5, rounds=10, chaos_every_s=10, poison_every=5,
                                  out_dir=tmp_path / "soak", timeout_s=900), lines.append)
    # run_soak itself fails on different weights, an adopted poison or a stuck round.
    assert report.identical_weights
    assert report.poisoned and set(report.poisoned) <= set(report.rejected)
    assert report.withheld, "the malicious member withheld its blocks in some round"
    assert report.oversized_refused > 0
    actions = [c["what"].split()[0] for c in report.chaos]
    assert {"kill", "pause", "restart"} <= set(actions), report.chaos
    assert report.recovery_s, "a killed node came back and took part again"
    assert report.finalized + report.abandoned >= report.rounds
    assert report.longest_round_s <= report.round_bound_s
