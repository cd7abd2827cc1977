"""`apiary bench round` with many members: several members per process, flags refused
before anything starts, and the slope against the number of members."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from apiary.cli import app
from apiary.core.errors import ConfigError
from apiary.tools.bench.round import (
    MAX_MEMBERS,
    MAX_PROCESSES,
    auto_members_per_process,
    bench_round,
    check_round_flags,
    process_groups,
    scaling,
)


def test_members_are_grouped_consecutively_and_every_one_is_placed_once() -> None:
    assert process_groups(6, 3) == [range(0, 3), range(3, 6)]
    assert process_groups(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert process_groups(2, 5) == [range(0, 2)]
    groups = process_groups(50, auto_members_per_process(50))
    assert len(groups) == MAX_PROCESSES
    assert sorted(i for g in groups for i in g) == list(range(50))


def test_one_member_per_process_until_the_processes_would_not_fit() -> None:
    assert [auto_members_per_process(n) for n in (1, 5, MAX_PROCESSES)] == [1, 1, 1]
    assert auto_members_per_process(MAX_PROCESSES + 1) == 2
    assert auto_members_per_process(MAX_MEMBERS) == 7


@pytest.mark.parametrize(
    ("nodes", "params", "rows", "rounds", "per_process", "message"),
    [
        ((0,), (1000,), 256, 1, None, "--nodes 0: a swarm needs at least 1 member"),
        ((5, MAX_MEMBERS + 1), (1000,), 256, 1, None, "at most 64 members (MAX_MEMBERS)"),
        ((5,), (0,), 256, 1, None, "--params 0"),
        ((5,), (1000,), 0, 1, None, "--rows and --rounds"),
        ((5,), (1000,), 256, 1, 0, "--members-per-process 0"),
        ((), (1000,), 256, 1, None, "at least one node count"),
    ],
)
def test_a_configuration_no_swarm_can_run_is_refused(
    nodes: tuple[int, ...], params: tuple[int, ...], rows: int, rounds: int,
    per_process: int | None, message: str,
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_round_flags(nodes, params, rows, rounds, per_process)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nodes", "0"], "Error: --nodes 0: a swarm needs at least 1 member"),
        (["--nodes", "5", "--nodes", "65"],
         "Error: --nodes 65: the contract admits at most 64 members (MAX_MEMBERS)"),
        (["--nodes", "6", "--members-per-process", "0"],
         "Error: --members-per-process 0: must be at least 1"),
    ],
)
def test_the_command_refuses_bad_flags_in_one_line(flags: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "round", *flags])
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert "Traceback" not in result.output


def _row(nodes: int, gas: float, seconds: float, params: int = 10_012) -> dict[str, float]:
    return {"nodes": nodes, "params": params, "gas_per_round": gas,
            "seconds_excluding_train": seconds, "round_wall_seconds": seconds + 1}


def test_scaling_is_the_least_squares_line_per_model_size() -> None:
    rows = [_row(n, 1e6 + 16e6 * n, 0.5 + 0.2 * n) for n in (5, 10, 20, 50)]
    rows.append(_row(5, 123.0, 1.0, params=100_000))  # one member count: no line
    [line] = scaling(rows)
    assert line["params"] == 10_012
    assert line["members"] == [5, 10, 20, 50]
    assert line["gas_per_member"] == pytest.approx(16e6)
    assert line["gas_intercept"] == pytest.approx(1e6)
    assert line["seconds_per_member"] == pytest.approx(0.2)
    assert line["seconds_intercept"] == pytest.approx(0.5)
    assert line["wall_seconds_per_member"] == pytest.approx(0.2)


@pytest.mark.chain
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_six_members_in_two_processes_finalize_and_all_decrypt_the_average() -> None:
    """Real members sharing processes: each with its own gRPC server, binding and keys,
    real ciphertexts and masks against the real contract on anvil."""
    result = bench_round(node_counts=(6,), param_targets=(1_000,), rounds=1,
                         members_per_process=3)
    [row] = result["results"]
    assert row["nodes"] == 6
    assert (row["processes"], row["members_per_process"]) == (2, 3)
    assert row["finalized"] is True
    # The largest deviation of any of the six members' decrypted model from the plain
    # weighted mean of what the six trained.
    assert row["max_abs_error"] < 1e-6
    assert row["relays"] >= 1
    kinds = row["gas_by_kind"]
    assert kinds["enrol"] > 0 and kinds["commit"] > 0 and kinds["aggregate"] > 0
    assert sum(kinds.values()) == row["gas_per_round"]
    assert row["peak_rss_mib"]["per"] == "process"
