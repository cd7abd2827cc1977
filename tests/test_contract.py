"""SwarmLearning on a real anvil devnet with real CKKS ciphertexts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from eth_utils import keccak
from web3 import Web3

from apiary.chain.binding import ContractRejected, SwarmContract, aggregate_gas_bound
from apiary.chain.compiler import compile_contract, load_artifact
from apiary.core.coefficients import (
    MAX_WEIGHT_SUM,
    SLOTS_PER_BLOCK,
    block_digest,
    block_from_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.he import HEContext

pytestmark = pytest.mark.chain

RAGGED_PARAMS = 2 * SLOTS_PER_BLOCK + 1000


@dataclass
class Swarm:
    admin: SwarmContract
    members: list[SwarmContract]
    outsider: SwarmContract


def make_swarm(
    w3: Web3, keys: list[str], he: HEContext, *, members: int = 3, params: int = RAGGED_PARAMS,
    min_peers: int = 1, membership: str = "admin",
) -> Swarm:
    admin = SwarmContract.deploy(
        w3, keys[0], param_count=params, modulus=he.modulus, min_peers=min_peers,
        context_digest=he.public_digest(), membership=membership,
    )
    hospitals = [admin.as_account(k) for k in keys[1 : members + 1]]
    for i, hospital in enumerate(hospitals):
        admin.add_member(hospital.sender, f"127.0.0.1:{50051 + i}", bytes([i + 1]) * 32)
    return Swarm(admin, hospitals, admin.as_account(keys[-1]))


def state(contract: SwarmContract, round_number: int = 1) -> dict[str, Any]:
    """Everything a rejected call must leave as it was."""
    params = contract.he_parameters()
    return {
        "round": contract.current_round(),
        "finalized": contract.last_finalized_round(),
        "info": contract.round_info(round_number),
        "committers": contract.committers(round_number),
        "commitments": [contract.commitment(round_number, m.address) for m in contract.members()],
        "members": contract.members(active_only=False),
        "aggregates": [
            contract.aggregate_digest(round_number, b) for b in range(params.block_count)
        ],
    }


def rejects(call: Any, error: str, contract: SwarmContract, round_number: int = 1) -> None:
    before = state(contract, round_number)
    with pytest.raises(ContractRejected, match=error) as caught:
        call()
    assert caught.value.error == error
    assert error in str(caught.value)
    assert state(contract, round_number) == before


def test_committed_artifact_matches_the_source() -> None:
    fresh = compile_contract()
    committed = load_artifact()
    assert fresh["bytecode"] == committed["bytecode"], "run `apiary compile` and commit"
    assert fresh["abi"] == committed["abi"]
    assert fresh["sourceSha256"] == committed["sourceSha256"]


def test_he_parameters_are_fixed_at_deployment(w3: Web3, dev_keys: list[str], he: HEContext):
    swarm = make_swarm(w3, dev_keys, he, members=1, min_peers=1)
    params = swarm.admin.he_parameters()
    assert params.poly_modulus_degree == 8192
    assert params.modulus == he.modulus
    assert params.slots_per_block == SLOTS_PER_BLOCK
    assert params.param_count == RAGGED_PARAMS
    assert params.block_count == 3
    assert params.block_bytes == 2 * 8192 * 8
    assert swarm.admin.current_round() == 1
    assert swarm.admin.admin() == swarm.admin.sender


@pytest.mark.parametrize(
    "sample_counts",
    [(120, 45, 300), (900, 3000, 64, 1500)],
    ids=["counts-as-weights", "scaled-weights"],
)
def test_onchain_aggregate_matches_reference_and_decrypts_to_weighted_mean(
    w3: Web3, dev_keys: list[str], he: HEContext, sample_counts: tuple[int, ...]
) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=len(sample_counts))
    rng = np.random.default_rng(len(sample_counts))
    vectors = [rng.normal(0, 0.5, RAGGED_PARAMS) for _ in sample_counts]
    updates = [he.encrypt(v) for v in vectors]
    assert all(len(u) == 3 for u in updates)
    for member, blocks, count in zip(swarm.members, updates, sample_counts, strict=True):
        member.commit(1, [block_digest(b) for b in blocks], count)

    _, weights, weight_sum = swarm.admin.round_weights(1)
    assert weights == weights_from_sample_counts(list(sample_counts))
    assert weight_sum == sum(weights) <= MAX_WEIGHT_SUM

    relay = swarm.members[1]
    for index in range(3):
        relay.aggregate(1, index, [u[index] for u in updates])
    emitted = swarm.admin.aggregated_blocks(1)
    assert sorted(emitted) == [0, 1, 2]

    for index, block in emitted.items():
        reference = weighted_sum(
            [block_from_bytes(u[index], he.modulus) for u in updates], weights, he.modulus
        )
        assert np.array_equal(block_from_bytes(block.coefficients, he.modulus), reference)
        assert block.weight_sum == weight_sum
        assert block.digest == keccak(block.coefficients)
        assert swarm.admin.aggregate_digest(1, index) == block.digest

    ordered = [emitted[i].coefficients for i in range(3)]
    mean = he.decrypt(ordered, RAGGED_PARAMS) / weight_sum
    expected = sum(w * v for w, v in zip(weights, vectors, strict=True)) / weight_sum
    assert np.max(np.abs(mean - expected)) < 1e-6

    info = swarm.admin.round_info(1)
    assert info.finalized and info.sealed and info.aggregated_blocks == 3
    assert swarm.admin.current_round() == 2
    assert swarm.admin.last_finalized_round() == 1
    assert swarm.admin.finalized_root(1) == keccak(b"".join(emitted[i].digest for i in range(3)))


@pytest.fixture
def committed(w3: Web3, dev_keys: list[str], he: HEContext):
    """A 3-member swarm, 2 of whom committed to round 1 (single-block model)."""
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK)
    rng = np.random.default_rng(7)
    updates = [he.encrypt(rng.normal(0, 1, SLOTS_PER_BLOCK)) for _ in range(3)]
    for member, blocks in zip(swarm.members[:2], updates, strict=False):
        member.commit(1, [block_digest(blocks[0])], 50)
    return swarm, updates


def test_non_member_commit_is_rejected(committed) -> None:
    swarm, updates = committed
    rejects(lambda: swarm.outsider.commit(1, [block_digest(updates[2][0])], 10),
            "NotMember", swarm.admin)


def test_second_commit_in_a_round_is_rejected(committed) -> None:
    swarm, updates = committed
    rejects(lambda: swarm.members[0].commit(1, [block_digest(updates[2][0])], 10),
            "AlreadyCommitted", swarm.admin)


def test_commit_with_wrong_block_count_or_sample_count_is_rejected(committed) -> None:
    swarm, updates = committed
    digest = block_digest(updates[2][0])
    rejects(lambda: swarm.members[2].commit(1, [digest, digest], 10), "WrongBlockCount",
            swarm.admin)
    rejects(lambda: swarm.members[2].commit(1, [], 10), "WrongBlockCount", swarm.admin)
    rejects(lambda: swarm.members[2].commit(1, [digest], 0), "InvalidSampleCount", swarm.admin)
    rejects(lambda: swarm.members[2].commit(1, [digest], 2**32), "InvalidSampleCount",
            swarm.admin)
    with pytest.raises(ValueError, match="32"):
        swarm.members[2].commit(1, [b"short"], 10)


def test_commit_to_unknown_round_is_rejected(committed) -> None:
    swarm, updates = committed
    digest = block_digest(updates[2][0])
    rejects(lambda: swarm.members[2].commit(2, [digest], 10), "RoundNotOpen", swarm.admin)
    rejects(lambda: swarm.members[2].commit(0, [digest], 10), "RoundNotOpen", swarm.admin)


def test_ciphertext_not_matching_its_digest_is_rejected(committed) -> None:
    swarm, updates = committed
    tampered = bytearray(updates[1][0])
    tampered[100] ^= 1
    rejects(lambda: swarm.members[0].aggregate(1, 0, [updates[0][0], bytes(tampered)]),
            "DigestMismatch", swarm.admin)
    swapped = [updates[1][0], updates[0][0]]
    rejects(lambda: swarm.members[0].aggregate(1, 0, swapped), "DigestMismatch", swarm.admin)


def test_ciphertext_of_wrong_length_is_rejected(committed) -> None:
    swarm, updates = committed
    rejects(lambda: swarm.members[0].aggregate(1, 0, [updates[0][0], updates[1][0][:-8]]),
            "WrongCiphertextLength", swarm.admin)
    rejects(lambda: swarm.members[0].aggregate(1, 0, [updates[0][0], b""]),
            "WrongCiphertextLength", swarm.admin)


def test_wrong_number_of_contributions_is_rejected(committed) -> None:
    swarm, updates = committed
    rejects(lambda: swarm.members[0].aggregate(1, 0, [updates[0][0]]),
            "WrongContributionCount", swarm.admin)
    three = [updates[0][0], updates[1][0], updates[2][0]]
    rejects(lambda: swarm.members[0].aggregate(1, 0, three), "WrongContributionCount",
            swarm.admin)


def test_block_out_of_range_and_non_member_aggregate_are_rejected(committed) -> None:
    swarm, updates = committed
    both = [updates[0][0], updates[1][0]]
    rejects(lambda: swarm.members[0].aggregate(1, 1, both), "BlockOutOfRange", swarm.admin)
    rejects(lambda: swarm.outsider.aggregate(1, 0, both), "NotMember", swarm.admin)


def test_rejection_holds_on_chain_without_the_client_side_simulation(committed) -> None:
    """Send a tampered aggregate straight to the chain: the contract itself reverts."""
    swarm, updates = committed
    relay = swarm.members[0]
    tampered = bytearray(updates[1][0])
    tampered[-1] ^= 1
    before = state(swarm.admin)
    call = relay.contract.functions.aggregate(1, 0, [updates[0][0], bytes(tampered)])
    tx = call.build_transaction({
        "from": relay.sender,
        "nonce": relay.w3.eth.get_transaction_count(relay.sender),
        "gas": aggregate_gas_bound(2 * len(tampered) + 256, len(tampered)),
        "chainId": relay.w3.eth.chain_id,
    })
    tx_hash = relay.w3.eth.send_raw_transaction(relay.account.sign_transaction(tx).raw_transaction)
    assert relay.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 0
    assert state(swarm.admin) == before


def test_closed_round_rejects_commits_and_aggregates(committed) -> None:
    swarm, updates = committed
    both = [updates[0][0], updates[1][0]]
    swarm.members[0].aggregate(1, 0, both)
    assert swarm.admin.current_round() == 2
    digest = block_digest(updates[2][0])
    rejects(lambda: swarm.members[2].commit(1, [digest], 10), "RoundNotOpen", swarm.admin)
    rejects(lambda: swarm.members[0].aggregate(1, 0, both), "RoundNotOpen", swarm.admin)


def test_commit_after_the_round_is_sealed_is_rejected(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=2 * SLOTS_PER_BLOCK)
    updates = [he.encrypt(np.full(2 * SLOTS_PER_BLOCK, float(i))) for i in range(3)]
    for member, blocks in zip(swarm.members[:2], updates, strict=False):
        member.commit(1, [block_digest(b) for b in blocks], 10)
    swarm.members[0].aggregate(1, 0, [updates[0][0], updates[1][0]])
    assert swarm.admin.round_info(1).sealed
    late = [block_digest(b) for b in updates[2]]
    rejects(lambda: swarm.members[2].commit(1, late, 10), "RoundSealedAlready", swarm.admin)
    rejects(lambda: swarm.members[1].aggregate(1, 0, [updates[0][0], updates[1][0]]),
            "BlockAlreadyAggregated", swarm.admin)


def test_aggregate_before_any_commit_is_rejected(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    block = he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0]
    rejects(lambda: swarm.members[0].aggregate(1, 0, [block]), "NothingCommitted", swarm.admin)


def test_too_few_contributors_is_rejected(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK, min_peers=2)
    block = he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0]
    swarm.members[0].commit(1, [block_digest(block)], 10)
    rejects(lambda: swarm.members[0].aggregate(1, 0, [block]), "NotEnoughContributors",
            swarm.admin)


def test_only_the_admin_manages_members(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    newcomer = swarm.outsider.sender
    key = b"\x09" * 32
    rejects(lambda: swarm.members[0].add_member(newcomer, "127.0.0.1:1", key), "NotAdmin",
            swarm.admin)
    rejects(lambda: swarm.outsider.add_member(newcomer, "127.0.0.1:1", key), "NotAdmin",
            swarm.admin)
    rejects(lambda: swarm.members[0].remove_member(swarm.members[1].sender), "NotAdmin",
            swarm.admin)
    rejects(lambda: swarm.admin.add_member(swarm.members[0].sender, "x:1", key),
            "MemberExists", swarm.admin)
    rejects(lambda: swarm.admin.add_member(newcomer, "", key), "InvalidMember", swarm.admin)
    rejects(lambda: swarm.admin.add_member(newcomer, "h:1", b"\0" * 32), "InvalidMember",
            swarm.admin)


def test_removed_member_can_no_longer_commit(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK)
    gone = swarm.members[2]
    swarm.admin.remove_member(gone.sender)
    assert gone.sender not in [m.address for m in swarm.admin.members()]
    assert not swarm.admin.member(gone.sender).active
    block = he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0]
    rejects(lambda: gone.commit(1, [block_digest(block)], 10), "NotMember", swarm.admin)
    rejects(lambda: swarm.admin.remove_member(gone.sender), "NotMember", swarm.admin)


def test_relay_order_is_a_rotation_of_the_active_members(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=4, params=SLOTS_PER_BLOCK)
    active = [m.address for m in swarm.admin.members()]
    orders = [swarm.admin.relay_order(r) for r in range(1, 9)]
    for order in orders:
        start = active.index(order[0])
        assert order == active[start:] + active[:start]
    assert len({o[0] for o in orders}) > 1, "the relay should move between rounds"


def test_majority_rule_admits_a_member_only_with_more_than_half(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=4, params=SLOTS_PER_BLOCK,
                       membership="majority")
    assert swarm.admin.membership_rule() == "majority"
    candidate, key = swarm.outsider.sender, b"\x07" * 32
    rejects(lambda: swarm.outsider.propose_member(candidate, "127.0.0.1:9", key), "NotMember",
            swarm.admin)
    rejects(lambda: swarm.members[0].approve_member(candidate), "NoProposal", swarm.admin)
    swarm.members[0].propose_member(candidate, "127.0.0.1:9", key)
    assert swarm.admin.proposal_approvals(candidate) == 1
    rejects(lambda: swarm.members[0].approve_member(candidate), "AlreadyApproved", swarm.admin)
    swarm.members[1].approve_member(candidate)
    assert not swarm.admin.member(candidate).active, "2 of 4 is not a majority"
    swarm.members[2].approve_member(candidate)
    assert swarm.admin.member(candidate).active
    assert swarm.admin.member(candidate).endpoint == "127.0.0.1:9"
    rejects(lambda: swarm.members[3].approve_member(candidate), "NoProposal", swarm.admin)


def test_majority_rule_closes_admin_admission_after_founding(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK,
                       membership="majority")
    block = he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0]
    swarm.members[0].commit(1, [block_digest(block)], 10)
    rejects(lambda: swarm.admin.add_member(swarm.outsider.sender, "h:1", b"\x05" * 32),
            "WrongMembershipRule", swarm.admin)


def test_admin_rule_has_no_proposals(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    rejects(lambda: swarm.members[0].propose_member(swarm.outsider.sender, "h:1", b"\x05" * 32),
            "WrongMembershipRule", swarm.admin)


def test_key_rotation_starts_a_new_epoch_from_a_future_round(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    assert swarm.admin.key_epoch_for(1) == (0, he.public_digest())
    fresh = HEContext.create()
    block = he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0]
    swarm.members[0].commit(1, [block_digest(block)], 10)
    rejects(lambda: swarm.admin.rotate_key(1, fresh.public_digest()), "InvalidKeyEpoch",
            swarm.admin)
    rejects(lambda: swarm.members[0].rotate_key(2, fresh.public_digest()), "NotAdmin",
            swarm.admin)
    rejects(lambda: swarm.admin.rotate_key(2, bytes(32)), "InvalidKeyEpoch", swarm.admin)
    swarm.admin.rotate_key(2, fresh.public_digest())
    assert swarm.admin.key_epoch_count() == 2
    assert swarm.admin.key_epoch_for(1) == (0, he.public_digest())
    assert swarm.admin.key_epoch_for(2) == (1, fresh.public_digest())
    assert swarm.admin.key_epoch_for(9) == (1, fresh.public_digest())
    rejects(lambda: swarm.admin.rotate_key(2, he.public_digest()), "InvalidKeyEpoch",
            swarm.admin)
    assert swarm.admin.key_epoch(1) == (2, fresh.public_digest())
    assert swarm.admin.key_epoch(0) == (1, he.public_digest())
