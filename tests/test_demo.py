"""`apiary demo --onboard` end to end: the JSON a user gets, the onboarded hospital in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiary.tools.demo import DemoOptions, run_demo, summary_lines

pytestmark = [pytest.mark.chain, pytest.mark.slow]


def test_demo_onboards_the_held_back_hospital_through_the_api(tmp_path: Path) -> None:
    lines: list[str] = []
    # Onboarded after round 2, the newcomer surely takes part from the round after next of
    # the model it is handed (round 2 or 3): round 5 at the latest.
    result = run_demo(DemoOptions(rounds=5, out_dir=tmp_path, onboard=True), lines.append)
    assert result["mode"] == "swarm"
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3, 4, 5]
    assert 0 < result["onboarding_seconds"] < 120
    early = [set(r["node_accuracy"]) for r in result["rounds"][:2]]
    assert all("switzerland" not in names for names in early)
    assert "switzerland" in result["rounds"][-1]["node_accuracy"]
    assert all(r["identical_weights"] for r in result["rounds"])
    assert all(0.0 <= a <= 1.0 for r in result["rounds"] for a in r["node_accuracy"].values())
    assert any("/v1/invites" in line for line in lines)
    assert any("/v1/join" in line for line in lines)
    assert any("founded: contract" in line for line in lines)
    assert "identical weights after every round: yes" in summary_lines(result)[-1]
