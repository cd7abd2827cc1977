"""`aggregateBlocks`: several blocks of a round in one transaction, on a real devnet with real
CKKS ciphertexts; how a relay plans its batches."""

from __future__ import annotations

import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import (
    MAX_BATCH_GAS,
    ContractRejected,
    aggregate_gas_bound,
    batch_gas,
    plan_batches,
)
from apiary.core.coefficients import BLOCK_BYTES, SLOTS_PER_BLOCK, block_from_bytes, weighted_sum
from apiary.core.he import HEContext
from tests.test_contract import enrol_and_commit, make_swarm, state

pytestmark = pytest.mark.chain

PARAMS = 3 * SLOTS_PER_BLOCK
"""Three blocks."""


@pytest.fixture
def committed(w3: Web3, dev_keys: list[str], he: HEContext):
    """Three members committed to round 1 of a three-block model."""
    swarm = make_swarm(w3, dev_keys, he, members=3, params=PARAMS)
    rng = np.random.default_rng(11)
    vectors = [rng.normal(0, 0.5, PARAMS) for _ in range(3)]
    updates = [he.encrypt(v) for v in vectors]
    enrol_and_commit(swarm.members, updates, [30, 50, 20])
    return swarm, updates, vectors


def blocks_of(updates: list[list[bytes]], indices: list[int]) -> dict[int, list[bytes]]:
    return {i: [u[i] for u in updates] for i in indices}


def test_one_batch_aggregates_every_block_as_single_calls_would(committed, he) -> None:
    swarm, updates, vectors = committed
    [result] = swarm.members[0].aggregate_batches(1, blocks_of(updates, [0, 1, 2]))
    assert result.blocks == (0, 1, 2)
    assert not isinstance(result.outcome, ContractRejected)

    emitted = swarm.admin.aggregated_blocks(1)
    assert {b.transaction_hash for b in emitted.values()} == {result.outcome.transaction_hash}
    _, weights, weight_sum = swarm.admin.round_weights(1)
    for index, block in emitted.items():
        reference = weighted_sum([block_from_bytes(u[index], he.modulus) for u in updates],
                                 weights, he.modulus)
        assert np.array_equal(block_from_bytes(block.coefficients, he.modulus), reference)
    assert swarm.admin.aggregate_digests(1) == [emitted[i].digest for i in range(3)]
    assert swarm.admin.round_info(1).finalized
    mean = he.decrypt([emitted[i].coefficients for i in range(3)], PARAMS) / weight_sum
    expected = sum(w * v for w, v in zip(weights, vectors, strict=True)) / weight_sum
    assert np.max(np.abs(mean - expected)) < 1e-6


def test_batches_follow_the_gas_cap_and_finalize_the_round(committed) -> None:
    swarm, updates, _ = committed
    one_block = batch_gas([updates_of_block(updates, 0)])
    results = swarm.members[1].aggregate_batches(1, blocks_of(updates, [0, 1, 2]),
                                                 max_gas=one_block)
    assert [r.blocks for r in results] == [(0,), (1,), (2,)]
    assert all(not isinstance(r.outcome, ContractRejected) for r in results)
    assert swarm.admin.round_info(1).finalized


def updates_of_block(updates: list[list[bytes]], index: int) -> list[bytes]:
    return [u[index] for u in updates]


def test_a_batch_holding_an_aggregated_block_changes_nothing(committed) -> None:
    swarm, updates, _ = committed
    swarm.members[0].aggregate(1, 1, updates_of_block(updates, 1))
    before = state(swarm.admin)
    [result] = swarm.members[2].aggregate_batches(1, blocks_of(updates, [0, 1]))
    assert isinstance(result.outcome, ContractRejected)
    assert result.outcome.error == "BlockAlreadyAggregated"
    assert state(swarm.admin) == before
    assert swarm.admin.aggregate_digests(1)[0] == bytes(32)


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (lambda blocks: {0: blocks[0], 1: blocks[1][:2]}, "WrongContributionCount"),
        (lambda blocks: {0: blocks[0], 1: [blocks[1][1], blocks[1][0], blocks[1][2]]},
         "DigestMismatch"),
        (lambda blocks: {0: blocks[0], 1: [*blocks[1][:2], blocks[1][2][:-8]]},
         "WrongCiphertextLength"),
        (lambda blocks: {0: blocks[0], 5: blocks[1]}, "BlockOutOfRange"),
    ],
    ids=["a-missing-contribution", "swapped-contributions", "short-ciphertext",
         "block-out-of-range"],
)
def test_a_bad_block_anywhere_in_a_batch_changes_nothing(committed, tamper, error) -> None:
    swarm, updates, _ = committed
    before = state(swarm.admin)
    [result] = swarm.members[0].aggregate_batches(1, tamper(blocks_of(updates, [0, 1])))
    assert isinstance(result.outcome, ContractRejected)
    assert result.outcome.error == error
    assert state(swarm.admin) == before


def test_an_outsider_cannot_aggregate_a_batch(committed) -> None:
    swarm, updates, _ = committed
    before = state(swarm.admin)
    [result] = swarm.outsider.aggregate_batches(1, blocks_of(updates, [0, 1, 2]))
    assert isinstance(result.outcome, ContractRejected)
    assert result.outcome.error == "NotMember"
    assert state(swarm.admin) == before


def test_plan_batches_groups_ascending_blocks_within_the_cap() -> None:
    block = [bytes(BLOCK_BYTES)] * 5
    blocks = {i: block for i in (7, 2, 5, 3, 9)}
    one = batch_gas([block])
    assert plan_batches(blocks, 2 * one) == [(2, 3), (5, 7), (9,)]
    assert plan_batches(blocks, 10**12) == [(2, 3, 5, 7, 9)]
    # A block above the cap on its own still goes, alone.
    assert plan_batches(blocks, 1) == [(2,), (3,), (5,), (7,), (9,)]
    assert plan_batches({}, MAX_BATCH_GAS) == []


def test_a_batch_of_one_costs_about_what_a_single_aggregate_is_given() -> None:
    block = [bytes(BLOCK_BYTES)] * 5
    single = aggregate_gas_bound(sum(len(c) + 64 for c in block) + 128, BLOCK_BYTES)
    assert single <= batch_gas([block]) <= 1.05 * single
    # Calldata dominates: a batch of k blocks costs about k times one block.
    assert 3.9 < batch_gas([block] * 4) / batch_gas([block]) < 4.0
