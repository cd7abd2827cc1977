"""`apiary bench cost`: gas per round as a function of members × parameters, and what it
means on a consortium chain.

A round's gas has three parts (``apiary bench round`` measures each, by transaction kind):

* enrol — one `enrol` per member; the one that completes the set also fixes the
  participants (a storage write per member): ``enrol_base + enrol_per_member · n``.
* commit — one `commit` per member with one digest per ciphertext block, each kept in a
  fresh storage slot (~22k gas), and a scan of the participant list (a storage read per
  participant):
  ``n · (commit_base + commit_per_block · B + commit_per_participant · n)``.
* aggregate — every participant's every block as calldata, n · B · 131,072 bytes. The
  contract's work per byte (hash, two-lane multiply-add) costs less than the EIP-7623 floor
  (10 gas per token, 4 tokens per non-zero byte: 40 gas per byte), so the floor is what a
  round pays: ``aggregate_per_member_block · n · B + aggregate_per_block · B``.

B = ceil(params / 4,096): CKKS at N = 8,192 packs 4,096 parameters into a block of
2 · 8,192 coefficients of 8 bytes, 32 bytes per parameter. The coefficients are fitted by
least squares to the figures ``apiary bench round`` measured (`MEASURED`); gas does not depend
on the machine or its load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apiary.tools.bench.report import table

GAS_KINDS = ("enrol", "fix", "commit", "aggregate", "drop", "other")
"""Kinds of transaction a round's gas is counted under."""
SLOTS_PER_BLOCK = 4_096
BLOCK_BYTES = 131_072
"""One ciphertext block: 2 · N coefficients of 8 bytes (N = 8,192)."""
CALLDATA_FLOOR_GAS_PER_BYTE = 40
"""EIP-7623: 10 gas per calldata token, a non-zero byte counts 4 tokens."""
MAX_MEMBERS = 64
"""SwarmLearning.MAX_MEMBERS."""
MAX_WEIGHT_SUM = 1_024
"""SwarmLearning.MAX_WEIGHT_SUM."""
OSAKA_TX_GAS_CAP = 2**24
"""EIP-7825 (Fusaka): the most gas one transaction may use on a chain with that fork."""
BLOCK_TIME_S = 5.0
GAS_LIMITS = (30_000_000, 60_000_000, 1_000_000_000)
MEMBER_COUNTS = (5, 10, 20, 50, 100)
PARAM_COUNTS = (10_000, 100_000, 1_000_000, 10_000_000)


@dataclass(frozen=True)
class Measured:
    """One configuration's gas per round, by kind, as `apiary bench round` reported it."""

    members: int
    params: int
    blocks: int
    enrol: int
    commit: int
    aggregate: int


MEASURED: tuple[Measured, ...] = (
    # apiary bench round --nodes 5 --nodes 10 --nodes 20 --nodes 50 --params 10000 (median
    # of 3 rounds) and --nodes 5 --nodes 10 --params 100000 --rounds 1, on the devnet.
    Measured(5, 10_012, 3, 736_734, 944_041, 78_061_530),
    Measured(10, 10_012, 3, 1_352_199, 1_933_481, 156_057_510),
    Measured(20, 10_012, 3, 2_583_130, 4_099_726, 312_039_300),
    Measured(50, 10_012, 3, 6_275_925, 12_097_945, 779_982_360),
    Measured(5, 100_084, 25, 736_734, 3_440_584, 650_051_980),
    Measured(10, 100_084, 25, 1_352_199, 6_926_483, 1_300_118_150),
)
"""Gas per round, by kind, measured with `apiary bench round` on the devnet (anvil)."""


@dataclass(frozen=True)
class GasModel:
    enrol_base: float
    enrol_per_member: float
    commit_base: float
    commit_per_block: float
    commit_per_participant: float
    aggregate_per_member_block: float
    aggregate_per_block: float


@dataclass(frozen=True)
class RoundGas:
    members: int
    params: int
    blocks: int
    enrol: int
    commit: int
    aggregate: int
    largest_transaction: int
    """One block's aggregate of every member, or one member's commit, whichever is larger:
    the contract cannot split either, so it must fit in one chain block."""
    calldata_bytes: int

    @property
    def total(self) -> int:
        return self.enrol + self.commit + self.aggregate


def blocks_for(params: int) -> int:
    if params < 1:
        raise ValueError("a model has at least one parameter")
    return math.ceil(params / SLOTS_PER_BLOCK)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of ys against xs (at least two distinct xs)."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError("a line needs at least two points with distinct x")
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def fit_model(measured: Sequence[Measured]) -> GasModel:
    """The model's coefficients from measured rounds: enrol against members, one member's
    commit against blocks and members, aggregate against member-blocks and blocks (no
    intercept)."""
    if (len({m.members for m in measured}) < 2 or len({m.blocks for m in measured}) < 2
            or len({(m.members, m.blocks) for m in measured}) < 3):
        raise ValueError("fitting needs rounds with at least two member counts and two "
                         "model sizes, in three configurations")
    enrol_slope, enrol_base = linear_fit([m.members for m in measured],
                                         [m.enrol for m in measured])
    commit_design = np.array([[1.0, m.blocks, m.members] for m in measured])
    (commit_base, per_block, per_participant), *_ = np.linalg.lstsq(
        commit_design, np.array([m.commit / m.members for m in measured]), rcond=None)
    design = np.array([[m.members * m.blocks, m.blocks] for m in measured], float)
    (per_member_block, per_block_aggregate), *_ = np.linalg.lstsq(
        design, np.array([m.aggregate for m in measured], float), rcond=None)
    return GasModel(enrol_base, enrol_slope, float(commit_base), float(per_block),
                    float(per_participant), float(per_member_block),
                    float(per_block_aggregate))


def round_gas(members: int, params: int, model: GasModel) -> RoundGas:
    """Gas of one round of `members` members training a model of `params` parameters."""
    if members < 1:
        raise ValueError("a round has at least one member")
    blocks = blocks_for(params)
    commit_one = _commit_one(model, blocks, members)
    one_block = model.aggregate_per_member_block * members + model.aggregate_per_block
    return RoundGas(
        members=members, params=params, blocks=blocks,
        enrol=round(model.enrol_base + model.enrol_per_member * members),
        commit=round(members * commit_one),
        aggregate=round(one_block * blocks),
        largest_transaction=round(max(one_block, commit_one)),
        calldata_bytes=members * blocks * BLOCK_BYTES,
    )  # fmt: skip


def _commit_one(model: GasModel, blocks: int, members: int) -> float:
    return (model.commit_base + model.commit_per_block * blocks
            + model.commit_per_participant * members)


def rounds_per_hour(gas: RoundGas, gas_limit: int, block_time_s: float = BLOCK_TIME_S
                    ) -> float | None:
    """Rounds an hour of a chain's blocks hold when the swarm has them to itself; None when
    the round's largest transaction does not fit in one block."""
    if gas_limit < 1 or block_time_s <= 0:
        raise ValueError("the gas limit and block time must be positive")
    if gas.largest_transaction > gas_limit:
        return None
    return 3600 / block_time_s * gas_limit / gas.total


def most_members(gas_limit: int, model: GasModel) -> int:
    """The most members one block's aggregate transaction fits in `gas_limit` with."""
    return max(0, math.floor((gas_limit - model.aggregate_per_block)
                             / model.aggregate_per_member_block))


def most_params(gas_limit: int, model: GasModel, members: int = MAX_MEMBERS) -> int:
    """The largest model one member's commit transaction fits in `gas_limit` with, in a
    swarm of `members`."""
    blocks = math.floor((gas_limit - _commit_one(model, 0, members)) / model.commit_per_block)
    return max(0, blocks) * SLOTS_PER_BLOCK


def default_model() -> GasModel:
    return fit_model(MEASURED)


CHUNK_BYTES = 1_024
"""A fraud proof's unit in the chunked redesign: 1 KiB of one member's ciphertext."""
HASH_BYTES = 32


@dataclass(frozen=True)
class Design:
    """One way to run a round's chain part, priced for one swarm size."""

    name: str
    gas_per_round: int
    largest_transaction: int
    calldata_bytes: int
    dispute_gas: int
    """Gas of one fraud proof, paid only when a member disputes the relay's result (0: the
    chain checks every block itself)."""


def designs(members: int, params: int, model: GasModel) -> list[Design]:
    """The design as built and three changes, for `members` × `params`.

    * merkle commits — a member commits one Merkle root of its block digests instead of one
      storage slot pair per block; aggregation unchanged.
    * digests only, block proofs — no ciphertext on chain: members commit roots, every node
      sums locally (as it does now) and the relay posts the result's root, which each member
      confirms; a member whose own sum differs proves one block on chain (that block's
      ciphertexts, checked against the roots, summed as today).
    * digests only, 1 KiB proofs — the same with roots over 1 KiB chunks, so a proof carries
      n KiB and its Merkle paths instead of n whole blocks.
    """
    built = round_gas(members, params, model)
    blocks = built.blocks
    one_block = model.aggregate_per_member_block * members + model.aggregate_per_block
    commit_root = _commit_one(model, 1, members)
    merkle_commit = built.enrol + members * commit_root + built.aggregate
    digests_only = built.enrol + (2 * members + 1) * commit_root
    block_path = math.ceil(math.log2(max(2, blocks))) * HASH_BYTES * CALLDATA_FLOOR_GAS_PER_BYTE
    chunks = blocks * BLOCK_BYTES // CHUNK_BYTES
    chunk_path = math.ceil(math.log2(max(2, chunks))) * HASH_BYTES * CALLDATA_FLOOR_GAS_PER_BYTE
    chunk_share = CHUNK_BYTES / BLOCK_BYTES
    chunk_proof = members * (model.aggregate_per_member_block * chunk_share + chunk_path)
    return [
        Design("as built", built.total, built.largest_transaction, built.calldata_bytes, 0),
        Design("merkle commits", round(merkle_commit), round(one_block),
               built.calldata_bytes, 0),
        Design("digests only, block proofs", round(digests_only), round(commit_root),
               0, round(one_block + members * block_path)),
        Design("digests only, 1 KiB proofs", round(digests_only), round(commit_root),
               0, round(chunk_proof + model.aggregate_per_block)),
    ]  # fmt: skip


def cost_report(
    model: GasModel,
    members: Sequence[int] = MEMBER_COUNTS,
    params: Sequence[int] = PARAM_COUNTS,
    gas_limits: Sequence[int] = GAS_LIMITS,
    block_time_s: float = BLOCK_TIME_S,
    redesign: tuple[int, int] = (100, 10_000_000),
) -> dict[str, Any]:
    """Every figure `apiary bench cost` prints, as JSON-ready data."""
    if not members or not params or not gas_limits:
        raise ValueError("need at least one member count, model size and gas limit")
    rows = []
    for n in members:
        for p in params:
            gas = round_gas(n, p, model)
            rows.append({
                "members": n, "params": p, "blocks": gas.blocks, "enrol": gas.enrol,
                "commit": gas.commit, "aggregate": gas.aggregate, "total": gas.total,
                "largest_transaction": gas.largest_transaction,
                "calldata_bytes": gas.calldata_bytes,
                "rounds_per_hour": {str(limit): rounds_per_hour(gas, limit, block_time_s)
                                    for limit in gas_limits},
            })
    n, p = redesign
    return {
        "benchmark": "cost",
        "model": model.__dict__,
        "measured": [m.__dict__ for m in MEASURED],
        "block_time_s": block_time_s,
        "gas_limits": list(gas_limits),
        "rows": rows,
        "limits": {str(limit): {"most_members": most_members(limit, model),
                                "most_params": most_params(limit, model)}
                   for limit in (*gas_limits, OSAKA_TX_GAS_CAP)},
        "redesign": {
            "members": n, "params": p,
            "designs": [
                {**d.__dict__,
                 "rounds_per_hour": {str(limit): _design_rate(d, limit, block_time_s)
                                     for limit in gas_limits}}
                for d in designs(n, p, model)
            ],
        },
    }


def _design_rate(design: Design, gas_limit: int, block_time_s: float) -> float | None:
    if max(design.largest_transaction, design.dispute_gas) > gas_limit:
        return None
    return 3600 / block_time_s * gas_limit / design.gas_per_round


def _gas(value: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "does not fit"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _bytes(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def format_cost_report(report: dict[str, Any]) -> str:
    model = report["model"]
    limits: list[int] = report["gas_limits"]
    block_time = report["block_time_s"]
    limit_names = [f"/h at {_gas(limit)}" for limit in limits]
    rows = [(r["members"], f"{r['params']:,}", r["blocks"], _gas(r["enrol"]), _gas(r["commit"]),
             _gas(r["aggregate"]), _gas(r["total"]), _gas(r["largest_transaction"]),
             _bytes(r["calldata_bytes"]), *(_rate(v) for v in r["rounds_per_hour"].values()))
            for r in report["rows"]]
    lines = [
        "gas per round = enrol + commit + aggregate, n members, B = ceil(params / 4096) blocks:",
        f"  enrol     = {model['enrol_base']:,.0f} + {model['enrol_per_member']:,.0f} · n",
        f"  commit    = n · ({model['commit_base']:,.0f} + {model['commit_per_block']:,.0f} · B"
        f" + {model['commit_per_participant']:,.0f} · n)",
        f"  aggregate = B · ({model['aggregate_per_member_block']:,.0f} · n + "
        f"{model['aggregate_per_block']:,.0f})   "
        f"({model['aggregate_per_member_block'] / BLOCK_BYTES:.2f} gas per ciphertext byte)",
        f"(fitted to {len(report['measured'])} rounds measured with apiary bench round)",
        "",
        table(("members", "params", "blocks", "enrol", "commit", "aggregate", "total",
               "largest tx", "calldata", *limit_names), rows),
        f"(rounds per hour: the chain's whole capacity, one block every {block_time:g} s, "
        "given to the swarm; 'does not fit': the largest transaction, one block's aggregate "
        "or one member's commit, exceeds the block gas limit)",
        "",
        "what one transaction of the round bounds (block gas limit → most members for one "
        f"block's aggregate, largest model for one member's commit among {MAX_MEMBERS}):",
    ]
    for limit, bound in report["limits"].items():
        cap = " (EIP-7825 per-transaction cap)" if int(limit) == OSAKA_TX_GAS_CAP else ""
        lines.append(f"  {_gas(int(limit))} gas{cap}: {bound['most_members']} members, "
                     f"{bound['most_params']:,} parameters")
    redesign = report["redesign"]
    lines += ["", f"{redesign['members']} members × {redesign['params']:,} parameters:"]
    design_rows = [(d["name"], _gas(d["gas_per_round"]), _gas(d["largest_transaction"]),
                    _bytes(d["calldata_bytes"]), _gas(d["dispute_gas"]) if d["dispute_gas"]
                    else "-", *(_rate(v) for v in d["rounds_per_hour"].values()))
                   for d in redesign["designs"]]
    lines.append(table(("design", "gas/round", "largest tx", "ciphertext on chain",
                        "fraud proof", *limit_names), design_rows))
    lines.append("(fraud proof: gas of one dispute, paid only when a member's own sum differs "
                 "from the relay's; a design does not fit a limit its largest transaction or "
                 "its fraud proof exceeds)")
    return "\n".join(lines)


def measured_from_round(result: dict[str, Any]) -> list[Measured]:
    """The gas figures of an `apiary bench round --json` report, one per configuration."""
    try:
        return [Measured(members=r["nodes"], params=r["params"], blocks=r["blocks"],
                         enrol=r["gas_by_kind"]["enrol"] + r["gas_by_kind"]["fix"],
                         commit=r["gas_by_kind"]["commit"],
                         aggregate=r["gas_by_kind"]["aggregate"])
                for r in result["results"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an apiary bench round report with gas by kind "
                         f"(missing {exc})") from None
