"""The cost model of `apiary bench cost`: its fit, its arithmetic, its limits, the table the
README shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from apiary.cli import app
from apiary.core.he import POLY_MODULUS_DEGREE, SLOTS_PER_BLOCK
from apiary.tools.bench import cost
from apiary.tools.bench.cost import (
    BLOCK_BYTES,
    GasModel,
    Measured,
    blocks_for,
    cost_report,
    default_model,
    designs,
    fit_model,
    format_cost_report,
    linear_fit,
    measured_from_round,
    most_members,
    most_params,
    round_gas,
    rounds_per_hour,
)

README = Path(__file__).resolve().parents[1] / "README.md"
EXACT = GasModel(enrol_base=50_000, enrol_per_member=70_000, commit_base=60_000,
                 commit_per_block=45_000, commit_per_participant=2_000,
                 aggregate_per_member_block=5_200_000, aggregate_per_block=100_000)


def _measure(model: GasModel, members: int, params: int) -> Measured:
    gas = round_gas(members, params, model)
    return Measured(members, params, gas.blocks, gas.enrol, gas.commit, gas.aggregate)


def test_block_layout_is_the_he_codec_s() -> None:
    assert cost.SLOTS_PER_BLOCK == SLOTS_PER_BLOCK
    assert BLOCK_BYTES == 2 * POLY_MODULUS_DEGREE * 8
    assert [blocks_for(p) for p in (1, 4096, 4097, 10_000_000)] == [1, 1, 2, 2442]
    with pytest.raises(ValueError):
        blocks_for(0)


def test_linear_fit_recovers_a_line_and_needs_two_distinct_points() -> None:
    assert linear_fit([1, 2, 4], [3, 5, 9]) == pytest.approx((2.0, 1.0))
    with pytest.raises(ValueError):
        linear_fit([3, 3], [1, 2])


def test_fitting_rounds_of_a_known_model_gives_that_model_back() -> None:
    measured = [_measure(EXACT, n, p) for n, p in ((5, 10_000), (10, 10_000), (50, 10_000),
                                                   (5, 100_000), (10, 100_000))]
    fitted = fit_model(measured)
    for name, value in EXACT.__dict__.items():
        assert getattr(fitted, name) == pytest.approx(value, rel=1e-6, abs=1), name


def test_fitting_needs_two_member_counts_and_two_model_sizes() -> None:
    with pytest.raises(ValueError, match="two member counts"):
        fit_model([_measure(EXACT, 5, 10_000), _measure(EXACT, 10, 10_000)])
    with pytest.raises(ValueError, match="three configurations"):
        fit_model([_measure(EXACT, 5, 10_000), _measure(EXACT, 10, 100_000)])


def test_round_gas_adds_its_parts_and_grows_with_members_times_blocks() -> None:
    small, double = round_gas(10, 100_000, EXACT), round_gas(20, 100_000, EXACT)
    assert small.total == small.enrol + small.commit + small.aggregate
    assert small.blocks == 25
    assert small.aggregate == 25 * (10 * 5_200_000 + 100_000)
    assert double.aggregate - small.aggregate == 25 * 10 * 5_200_000
    assert small.calldata_bytes == 10 * 25 * BLOCK_BYTES
    # One block's aggregate of every member is the largest single transaction here.
    assert small.largest_transaction == 10 * 5_200_000 + 100_000
    with pytest.raises(ValueError):
        round_gas(0, 1000, EXACT)


def test_rounds_per_hour_is_capacity_over_gas_or_none_when_a_transaction_cannot_fit() -> None:
    gas = round_gas(5, 10_000, EXACT)
    assert rounds_per_hour(gas, 1_000_000_000, 5.0) == pytest.approx(720 * 1e9 / gas.total)
    assert rounds_per_hour(round_gas(10, 10_000, EXACT), 30_000_000) is None
    with pytest.raises(ValueError):
        rounds_per_hour(gas, 0)


def test_limits_of_one_transaction() -> None:
    assert most_members(30_000_000, EXACT) == 5
    assert most_members(1_000_000_000, EXACT) == 192
    # A member's commit among 64: 60k + 64 · 2k + 45k per block within 60M gas → 1,329.
    assert most_params(60_000_000, EXACT) == 1_329 * SLOTS_PER_BLOCK
    assert most_params(60_000_000, EXACT, members=5) == 1_331 * SLOTS_PER_BLOCK


def test_the_redesigns_take_the_ciphertexts_off_the_chain_at_100_by_10m() -> None:
    built, merkle, blocks, chunks = designs(100, 10_000_000, EXACT)
    assert built.calldata_bytes == 100 * 2442 * BLOCK_BYTES  # 32 GB a round
    assert merkle.gas_per_round < built.gas_per_round
    assert blocks.calldata_bytes == chunks.calldata_bytes == 0
    assert blocks.gas_per_round < 100_000_000 < merkle.gas_per_round
    # A block proof carries 100 whole blocks: more than a 60M block; a 1 KiB proof fits.
    assert blocks.dispute_gas > 60_000_000 > chunks.dispute_gas


def test_the_measured_model_is_calldata_bound() -> None:
    """Aggregation costs what the EIP-7623 floor asks for the ciphertexts, 40 gas per
    non-zero byte (a little less: some coefficient bytes are zero)."""
    model = default_model()
    per_byte = model.aggregate_per_member_block / BLOCK_BYTES
    assert 39.0 < per_byte <= cost.CALLDATA_FLOOR_GAS_PER_BYTE
    for m in cost.MEASURED:
        fitted = round_gas(m.members, m.params, model)
        assert fitted.aggregate == pytest.approx(m.aggregate, rel=0.01)
        assert fitted.commit == pytest.approx(m.commit, rel=0.05)
        assert fitted.enrol == pytest.approx(m.enrol, rel=0.10)


def test_a_bench_round_report_converts_and_anything_else_is_refused() -> None:
    report = {"results": [{"nodes": 5, "params": 10_012, "blocks": 3,
                           "gas_by_kind": {"enrol": 10, "fix": 2, "commit": 30,
                                           "aggregate": 40, "drop": 0, "other": 0}}]}
    assert measured_from_round(report) == [Measured(5, 10_012, 3, 12, 30, 40)]
    with pytest.raises(ValueError, match="bench round report"):
        measured_from_round({"results": [{"nodes": 5}]})


def test_the_command_prints_the_readme_s_table() -> None:
    result = CliRunner().invoke(app, ["bench", "cost"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == format_cost_report(cost_report(default_model())).strip()
    block = re.search(r"<!-- bench cost -->\n```text\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README has no `apiary bench cost` output block"
    assert block.group(1).strip() == result.output.strip()


def test_the_command_refits_from_a_report_and_refuses_one_without_gas(tmp_path: Path) -> None:
    rows = [{"nodes": m.members, "params": m.params, "blocks": m.blocks,
             "gas_by_kind": {"enrol": m.enrol, "fix": 0, "commit": m.commit,
                             "aggregate": m.aggregate}}
            for m in (_measure(EXACT, n, p) for n, p in ((5, 10_000), (10, 100_000),
                                                          (20, 10_000)))]
    good, bad = tmp_path / "round.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"results": rows}))
    bad.write_text(json.dumps({"results": [{"nodes": 5}]}))
    out = tmp_path / "cost.json"
    result = CliRunner().invoke(app, ["bench", "cost", "--fit", str(good), "--members", "5",
                                      "--params", "10000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"]["commit_per_block"] == pytest.approx(45_000)
    refused = CliRunner().invoke(app, ["bench", "cost", "--fit", str(bad)])
    assert refused.exit_code == 2
    assert refused.output.startswith(f"Error: --fit {bad}: not an apiary bench round report")
    assert len(refused.output.strip().splitlines()) == 1
    assert CliRunner().invoke(app, ["bench", "cost", "--members", "0"]).exit_code == 2


def test_the_model_s_constants_are_the_contract_s() -> None:
    from apiary.core.coefficients import MAX_WEIGHT_SUM

    source = (Path(__file__).resolve().parents[1] / "contracts" / "SwarmLearning.sol").read_text()
    assert f"MAX_MEMBERS = {cost.MAX_MEMBERS};" in source
    assert f"MAX_WEIGHT_SUM = {cost.MAX_WEIGHT_SUM};" in source
    assert cost.MAX_WEIGHT_SUM == MAX_WEIGHT_SUM
