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
from apiary.core.tls import MAX_CERTIFICATE_BYTES, create_self_signed

pytestmark = pytest.mark.chain

RAGGED_PARAMS = 2 * SLOTS_PER_BLOCK + 1000
CERT = create_self_signed("candidate", ["127.0.0.1"]).cert
DATASET_SIZE = 10_000
"""What the tests admit members with: above every sample count they enrol with."""


@dataclass
class Swarm:
    admin: SwarmContract
    members: list[SwarmContract]
    outsider: SwarmContract


def make_swarm(
    w3: Web3, keys: list[str], he: HEContext, *, members: int = 3, params: int = RAGGED_PARAMS,
    min_peers: int = 1, membership: str = "admin", enrol_window_s: int = 60,
    commit_window_s: int = 60,
) -> Swarm:
    admin = SwarmContract.deploy(
        w3, keys[0], param_count=params, modulus=he.modulus, min_peers=min_peers,
        context_digest=he.public_digest(), membership=membership,
        enrol_window_s=enrol_window_s, commit_window_s=commit_window_s,
    )
    hospitals = [admin.as_account(k) for k in keys[1 : members + 1]]
    for i, hospital in enumerate(hospitals):
        admin.add_member(hospital.sender, f"127.0.0.1:{50051 + i}", bytes([i + 1]) * 32,
                         create_self_signed(f"h{i}", ["127.0.0.1"]).cert, DATASET_SIZE)
    return Swarm(admin, hospitals, admin.as_account(keys[-1]))


def state(contract: SwarmContract, round_number: int = 1) -> dict[str, Any]:
    """Everything a rejected call must leave as it was."""
    params = contract.he_parameters()
    return {
        "round": contract.current_round(),
        "finalized": contract.last_finalized_round(),
        "info": contract.round_info(round_number),
        "enrolled": contract.enrolled(round_number),
        "participants": contract.participants(round_number),
        "timing": contract.round_timing(round_number),
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
    assert (params.enrol_window_s, params.commit_window_s) == (60, 60)
    assert swarm.admin.current_round() == 1
    assert swarm.admin.admin() == swarm.admin.sender


def test_the_training_digest_is_fixed_at_deployment_and_never_zero(
        w3: Web3, dev_keys: list[str], he: HEContext) -> None:
    digest = bytes(range(32))
    contract = SwarmContract.deploy(w3, dev_keys[0], param_count=10, modulus=he.modulus,
                                    context_digest=he.public_digest(), training_digest=digest)
    assert contract.training_digest() == digest
    with pytest.raises(ContractRejected, match="InvalidParameters"):
        SwarmContract.deploy(w3, dev_keys[0], param_count=10, modulus=he.modulus,
                             context_digest=he.public_digest(), training_digest=bytes(32))


def enrol_and_commit(members: list[SwarmContract], updates: list[list[bytes]],
                     counts: list[int] | tuple[int, ...], round_number: int = 1) -> None:
    """Every member enrols (which fixes the participants), then commits its blocks."""
    for member, count in zip(members, counts, strict=True):
        member.enrol(round_number, 0, count)
    for member, blocks in zip(members, updates, strict=True):
        member.commit(round_number, 1, 0, [block_digest(b) for b in blocks])


def pass_time(w3: Web3, seconds: int) -> None:
    """Move the devnet's clock on and mine a block, so the contract's windows close."""
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


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
    enrol_and_commit(swarm.members, updates, sample_counts)

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
    """A 2-member swarm whose members both committed to round 1 (single-block model), and
    a third ciphertext nobody committed."""
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    rng = np.random.default_rng(7)
    updates = [he.encrypt(rng.normal(0, 1, SLOTS_PER_BLOCK)) for _ in range(3)]
    enrol_and_commit(swarm.members, updates[:2], [50, 50])
    return swarm, updates


@pytest.fixture
def enrolled(w3: Web3, dev_keys: list[str], he: HEContext):
    """A 3-member swarm whose members all enrolled in round 1; nobody committed yet."""
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK)
    for member in swarm.members:
        member.enrol(1, 0, 50)
    block = he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0]
    return swarm, block_digest(block)


def test_enrolment_of_every_member_fixes_the_participants(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK)
    swarm.members[0].enrol(1, 0, 40)
    swarm.members[1].enrol(1, 0, 60)
    info = swarm.admin.round_info(1)
    assert (info.attempt, info.contributors, info.total_samples) == (0, 2, 100)
    assert swarm.admin.participants(1) == []
    swarm.members[2].enrol(1, 0, 10)
    info = swarm.admin.round_info(1)
    assert (info.attempt, info.contributors, info.committed) == (1, 3, 0)
    assert swarm.admin.participants(1) == [m.sender for m in swarm.members]
    assert swarm.admin.round_weights(1)[1] == [40, 60, 10]
    assert swarm.admin.commitment(1, swarm.members[0].sender) == (40, 0, [])


def test_bad_enrolments_are_rejected(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK)
    swarm.members[0].enrol(1, 0, 40)
    rejects(lambda: swarm.outsider.enrol(1, 0, 10), "NotMember", swarm.admin)
    rejects(lambda: swarm.members[0].enrol(1, 0, 10), "AlreadyEnrolled", swarm.admin)
    rejects(lambda: swarm.members[1].enrol(1, 0, 0), "InvalidSampleCount", swarm.admin)
    rejects(lambda: swarm.members[1].enrol(1, 0, DATASET_SIZE + 1), "SampleCountAboveDataset",
            swarm.admin)
    rejects(lambda: swarm.members[1].enrol(1, 0, 2**32 - 1), "SampleCountAboveDataset",
            swarm.admin)
    rejects(lambda: swarm.members[1].enrol(1, 1, 10), "WrongKeyEpoch", swarm.admin)
    rejects(lambda: swarm.members[1].enrol(2, 0, 10), "RoundNotOpen", swarm.admin)
    rejects(lambda: swarm.members[1].enrol(0, 0, 10), "RoundNotOpen", swarm.admin)
    rejects(lambda: swarm.members[1].commit(1, 1, 0, [bytes(32)]), "ParticipantsNotFixed",
            swarm.admin)


def test_participants_are_fixed_early_only_after_the_enrolment_window(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK, min_peers=2,
                       enrol_window_s=30)
    swarm.members[0].enrol(1, 0, 40)
    rejects(lambda: swarm.members[0].fix_participants(1), "NotEnoughContributors", swarm.admin)
    swarm.members[1].enrol(1, 0, 60)
    rejects(lambda: swarm.members[0].fix_participants(1), "WindowOpen", swarm.admin)
    pass_time(w3, 31)
    rejects(lambda: swarm.outsider.fix_participants(1), "NotMember", swarm.admin)
    swarm.members[2].fix_participants(1)
    assert swarm.admin.participants(1) == [m.sender for m in swarm.members[:2]]
    rejects(lambda: swarm.members[2].enrol(1, 0, 10), "ParticipantsFixedAlready", swarm.admin)
    rejects(lambda: swarm.members[0].fix_participants(1), "ParticipantsFixedAlready",
            swarm.admin)


def test_non_member_and_non_participant_commits_are_rejected(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK, min_peers=2,
                       enrol_window_s=5)
    for member in swarm.members[:2]:
        member.enrol(1, 0, 10)
    pass_time(w3, 6)
    swarm.members[0].fix_participants(1)
    digest = block_digest(he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0])
    rejects(lambda: swarm.outsider.commit(1, 1, 0, [digest]), "NotMember", swarm.admin)
    rejects(lambda: swarm.members[2].commit(1, 1, 0, [digest]), "NotParticipant", swarm.admin)


def test_second_commit_in_an_attempt_is_rejected(committed) -> None:
    swarm, updates = committed
    rejects(lambda: swarm.members[0].commit(1, 1, 0, [block_digest(updates[2][0])]),
            "AlreadyCommitted", swarm.admin)


def test_commit_with_wrong_block_count_attempt_or_key_epoch_is_rejected(enrolled) -> None:
    swarm, digest = enrolled
    member = swarm.members[2]
    rejects(lambda: member.commit(1, 1, 0, [digest, digest]), "WrongBlockCount", swarm.admin)
    rejects(lambda: member.commit(1, 1, 0, []), "WrongBlockCount", swarm.admin)
    rejects(lambda: member.commit(1, 2, 0, [digest]), "WrongAttempt", swarm.admin)
    rejects(lambda: member.commit(1, 0, 0, [digest]), "WrongAttempt", swarm.admin)
    rejects(lambda: member.commit(1, 1, 1, [digest]), "WrongKeyEpoch", swarm.admin)
    with pytest.raises(ValueError, match="32"):
        member.commit(1, 1, 0, [b"short"])


def test_commit_to_unknown_round_is_rejected(enrolled) -> None:
    swarm, digest = enrolled
    rejects(lambda: swarm.members[2].commit(2, 1, 0, [digest]), "RoundNotOpen", swarm.admin)
    rejects(lambda: swarm.members[2].commit(0, 1, 0, [digest]), "RoundNotOpen", swarm.admin)


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
    rejects(lambda: swarm.members[1].commit(1, 1, 0, [digest]), "RoundNotOpen", swarm.admin)
    rejects(lambda: swarm.members[0].aggregate(1, 0, both), "RoundNotOpen", swarm.admin)


def test_commit_after_the_round_is_sealed_is_rejected(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=2 * SLOTS_PER_BLOCK)
    updates = [he.encrypt(np.full(2 * SLOTS_PER_BLOCK, float(i))) for i in range(3)]
    enrol_and_commit(swarm.members, updates[:2], [10, 10])
    swarm.members[0].aggregate(1, 0, [updates[0][0], updates[1][0]])
    assert swarm.admin.round_info(1).sealed
    late = [block_digest(b) for b in updates[2]]
    rejects(lambda: swarm.members[1].commit(1, 1, 0, late), "RoundSealedAlready", swarm.admin)
    rejects(lambda: swarm.members[1].drop_absent(1), "RoundSealedAlready", swarm.admin)
    rejects(lambda: swarm.members[1].aggregate(1, 0, [updates[0][0], updates[1][0]]),
            "BlockAlreadyAggregated", swarm.admin)


def test_aggregate_before_the_participants_are_fixed_is_rejected(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    block = he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0]
    rejects(lambda: swarm.members[0].aggregate(1, 0, [block]), "ParticipantsNotFixed",
            swarm.admin)
    swarm.members[0].enrol(1, 0, 10)
    rejects(lambda: swarm.members[0].aggregate(1, 0, [block]), "ParticipantsNotFixed",
            swarm.admin)


def test_aggregate_before_every_participant_committed_is_rejected(enrolled, he) -> None:
    swarm, _ = enrolled
    blocks = [he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0] for _ in range(3)]
    for member, block in zip(swarm.members[:2], blocks, strict=False):
        member.commit(1, 1, 0, [block_digest(block)])
    rejects(lambda: swarm.members[0].aggregate(1, 0, blocks), "NotEnoughContributors",
            swarm.admin)


def test_absent_participants_are_dropped_only_after_the_commit_window(w3, dev_keys, he):
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK, min_peers=2,
                       commit_window_s=30)
    rng = np.random.default_rng(3)
    vectors = [rng.normal(0, 0.5, SLOTS_PER_BLOCK) for _ in range(3)]
    updates = [he.encrypt(v) for v in vectors]
    for member, count in zip(swarm.members, (30, 50, 70), strict=True):
        member.enrol(1, 0, count)
    rejects(lambda: swarm.members[0].drop_absent(1), "WindowOpen", swarm.admin)
    for member, blocks in zip(swarm.members[:2], updates, strict=False):
        member.commit(1, 1, 0, [block_digest(blocks[0])])
    rejects(lambda: swarm.members[0].drop_absent(1), "WindowOpen", swarm.admin)
    pass_time(w3, 31)
    rejects(lambda: swarm.outsider.drop_absent(1), "NotMember", swarm.admin)
    swarm.members[0].drop_absent(1)
    info = swarm.admin.round_info(1)
    assert (info.attempt, info.contributors, info.committed, info.total_samples) == (2, 2, 0, 80)
    assert swarm.admin.participants(1) == [m.sender for m in swarm.members[:2]]
    rejects(lambda: swarm.members[2].commit(1, 2, 0, [block_digest(updates[2][0])]),
            "NotParticipant", swarm.admin)
    rejects(lambda: swarm.members[0].commit(1, 1, 0, [block_digest(updates[0][0])]),
            "WrongAttempt", swarm.admin)
    for member, blocks in zip(swarm.members[:2], updates, strict=False):
        member.commit(1, 2, 0, [block_digest(blocks[0])])
    rejects(lambda: swarm.members[0].drop_absent(1), "NobodyAbsent", swarm.admin)
    swarm.members[1].aggregate(1, 0, [updates[0][0], updates[1][0]])
    _, weights, weight_sum = swarm.admin.round_weights(1)
    assert weights == [30, 50]
    block = swarm.admin.aggregated_blocks(1)[0]
    mean = he.decrypt([block.coefficients], SLOTS_PER_BLOCK) / weight_sum
    assert np.max(np.abs(mean - (30 * vectors[0] + 50 * vectors[1]) / 80)) < 1e-6


def test_a_round_left_with_too_few_participants_is_abandoned(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK, min_peers=2,
                       commit_window_s=10)
    for member in swarm.members:
        member.enrol(1, 0, 10)
    swarm.members[0].commit(1, 1, 0, [block_digest(he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0])])
    pass_time(w3, 11)
    swarm.members[0].drop_absent(1)
    info = swarm.admin.round_info(1)
    assert info.sealed and not info.finalized
    assert swarm.admin.current_round() == 2 and swarm.admin.last_finalized_round() == 0
    swarm.members[1].enrol(2, 0, 10)


def test_only_the_admin_manages_members(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    newcomer = swarm.outsider.sender
    key = b"\x09" * 32
    rejects(lambda: swarm.members[0].add_member(newcomer, "127.0.0.1:1", key, CERT, DATASET_SIZE),
            "NotAdmin",
            swarm.admin)
    rejects(lambda: swarm.outsider.add_member(newcomer, "127.0.0.1:1", key, CERT, DATASET_SIZE),
            "NotAdmin",
            swarm.admin)
    rejects(lambda: swarm.members[0].remove_member(swarm.members[1].sender, b"\x01" * 32),
            "NotAdmin", swarm.admin)
    rejects(lambda: swarm.admin.add_member(swarm.members[0].sender, "x:1", key, CERT, DATASET_SIZE),
            "MemberExists", swarm.admin)
    rejects(lambda: swarm.admin.add_member(newcomer, "", key, CERT, DATASET_SIZE), "InvalidMember",
            swarm.admin)
    rejects(lambda: swarm.admin.add_member(newcomer, "h:1", b"\0" * 32, CERT, DATASET_SIZE),
            "InvalidMember",
            swarm.admin)
    rejects(lambda: swarm.admin.add_member(newcomer, "h:1", key, b"", DATASET_SIZE),
            "InvalidCertificate",
            swarm.admin)
    too_long = b"x" * (MAX_CERTIFICATE_BYTES + 1)
    rejects(lambda: swarm.admin.add_member(newcomer, "h:1", key, too_long, DATASET_SIZE),
            "InvalidCertificate", swarm.admin)
    for size in (0, 2**32):
        rejects(lambda size=size: swarm.admin.add_member(newcomer, "h:1", key, CERT, size),
                "InvalidSampleCount", swarm.admin)


def test_a_member_record_holds_its_tls_certificate(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    newcomer = swarm.outsider.sender
    swarm.admin.add_member(newcomer, "h:1", b"\x09" * 32, CERT, DATASET_SIZE)
    record = swarm.admin.member(newcomer)
    assert record.active and record.tls_certificate == CERT
    assert record.dataset_size == DATASET_SIZE
    assert record.x25519_public_key == b"\x09" * 32 and record.endpoint == "h:1"
    certificates = [m.tls_certificate for m in swarm.admin.members()]
    assert len(set(certificates)) == 3 and all(c.startswith(b"-----BEGIN CERTIFICATE")
                                               for c in certificates)
    assert swarm.admin.member("0x" + "77" * 20).tls_certificate == b""


def test_removal_rotates_the_key_in_the_same_call(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK)
    gone, fresh = swarm.members[2], HEContext.create()
    rejects(lambda: swarm.admin.remove_member(gone.sender, bytes(32)), "InvalidKeyEpoch",
            swarm.admin)
    swarm.admin.remove_member(gone.sender, fresh.public_digest())
    assert gone.sender not in [m.address for m in swarm.admin.members()]
    assert not swarm.admin.member(gone.sender).active
    assert swarm.admin.key_epoch_for(1) == (1, fresh.public_digest())
    rejects(lambda: gone.enrol(1, 1, 10), "NotMember", swarm.admin)
    rejects(lambda: swarm.admin.remove_member(gone.sender, fresh.public_digest()), "NotMember",
            swarm.admin)
    rejects(lambda: swarm.members[0].enrol(1, 0, 10), "WrongKeyEpoch", swarm.admin)
    swarm.members[0].enrol(1, 1, 10)
    swarm.members[1].enrol(1, 1, 10)
    assert swarm.admin.round_info(1).attempt == 1


@pytest.mark.parametrize("moment", ["enrolling", "fixed", "committed"])
def test_removal_during_a_round_abandons_it_and_the_next_round_uses_the_new_key(
    w3, dev_keys, he, moment: str
) -> None:
    """Nobody ever encrypts a round under a key its removed member holds: a round whose key
    epoch is fixed already is abandoned, and the new epoch starts with the next round."""
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK)
    gone, fresh = swarm.members[2], HEContext.create()
    digest = block_digest(he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0])
    swarm.members[0].enrol(1, 0, 10)
    if moment != "enrolling":
        swarm.members[1].enrol(1, 0, 10)
        gone.enrol(1, 0, 10)
    if moment == "committed":
        for i, member in enumerate(swarm.members):
            member.commit(1, 1, 0, [bytes([i + 1]) * 32])
    swarm.admin.remove_member(gone.sender, fresh.public_digest())
    info = swarm.admin.round_info(1)
    assert info.sealed and not info.finalized
    assert swarm.admin.current_round() == 2
    assert swarm.admin.key_epoch_for(1) == (0, he.public_digest())
    assert swarm.admin.key_epoch_for(2) == (1, fresh.public_digest())
    assert swarm.admin.round_timing(2).key_epoch == 1
    rejects(lambda: swarm.members[0].aggregate(1, 0, [digest]), "RoundNotOpen", swarm.admin,
            round_number=2)
    swarm.members[0].enrol(2, 1, 10)


def test_removal_while_the_round_is_aggregated_starts_the_key_at_the_next_round(
    w3, dev_keys, he
) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=2 * SLOTS_PER_BLOCK)
    updates = [he.encrypt(np.zeros(2 * SLOTS_PER_BLOCK)) for _ in range(3)]
    enrol_and_commit(swarm.members, updates, [10, 10, 10])
    swarm.members[0].aggregate(1, 0, [u[0] for u in updates])
    fresh = HEContext.create()
    swarm.admin.remove_member(swarm.members[2].sender, fresh.public_digest())
    assert swarm.admin.key_epoch_for(1) == (0, he.public_digest())
    assert swarm.admin.key_epoch_for(2) == (1, fresh.public_digest())
    swarm.members[1].aggregate(1, 1, [u[1] for u in updates])
    assert swarm.admin.round_info(1).finalized


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
    rejects(lambda: swarm.outsider.propose_member(candidate, "127.0.0.1:9", key, CERT,
                                                  DATASET_SIZE),
            "NotMember", swarm.admin)
    rejects(lambda: swarm.members[0].propose_member(candidate, "127.0.0.1:9", key, b"",
                                                    DATASET_SIZE),
            "InvalidCertificate", swarm.admin)
    rejects(lambda: swarm.members[0].approve_member(candidate), "NoProposal", swarm.admin)
    swarm.members[0].propose_member(candidate, "127.0.0.1:9", key, CERT, DATASET_SIZE)
    assert swarm.admin.proposal_approvals(candidate) == 1
    rejects(lambda: swarm.members[0].approve_member(candidate), "AlreadyApproved", swarm.admin)
    swarm.members[1].approve_member(candidate)
    assert not swarm.admin.member(candidate).active, "2 of 4 is not a majority"
    swarm.members[2].approve_member(candidate)
    assert swarm.admin.member(candidate).active
    assert swarm.admin.member(candidate).endpoint == "127.0.0.1:9"
    assert swarm.admin.member(candidate).tls_certificate == CERT
    rejects(lambda: swarm.members[3].approve_member(candidate), "NoProposal", swarm.admin)


def test_majority_rule_closes_admin_admission_after_founding(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK,
                       membership="majority")
    swarm.members[0].enrol(1, 0, 10)
    rejects(lambda: swarm.admin.add_member(swarm.outsider.sender, "h:1", b"\x05" * 32, CERT,
                                           DATASET_SIZE),
            "WrongMembershipRule", swarm.admin)


def test_admin_rule_has_no_proposals(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    rejects(lambda: swarm.members[0].propose_member(swarm.outsider.sender, "h:1",
                                                    b"\x05" * 32, CERT, DATASET_SIZE),
            "WrongMembershipRule", swarm.admin)


def test_key_rotation_starts_at_the_first_round_nobody_encrypted(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    assert swarm.admin.key_epoch_for(1) == (0, he.public_digest())
    first, second = HEContext.create(), HEContext.create()
    rejects(lambda: swarm.members[0].rotate_key(first.public_digest()), "NotAdmin",
            swarm.admin)
    rejects(lambda: swarm.admin.rotate_key(bytes(32)), "InvalidKeyEpoch", swarm.admin)
    swarm.admin.rotate_key(first.public_digest())
    assert swarm.admin.key_epoch_for(1) == (1, first.public_digest())
    swarm.admin.rotate_key(second.public_digest())
    assert swarm.admin.key_epoch_for(1) == (2, second.public_digest()), "a retry supersedes"
    swarm.members[0].enrol(1, 2, 10)
    swarm.admin.rotate_key(first.public_digest())
    assert swarm.admin.key_epoch_for(1) == (2, second.public_digest())
    assert swarm.admin.key_epoch_for(2) == (3, first.public_digest())
    assert swarm.admin.key_epoch_count() == 4
    assert swarm.admin.key_epoch(3) == (2, first.public_digest())
    assert swarm.admin.key_epoch(0) == (1, he.public_digest())


def test_admin_role_moves_in_two_steps(w3, dev_keys, he) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    heir = swarm.members[0]
    rejects(lambda: heir.transfer_admin(heir.sender), "NotAdmin", swarm.admin)
    rejects(lambda: heir.accept_admin(), "NotPendingAdmin", swarm.admin)
    swarm.admin.transfer_admin(heir.sender)
    assert swarm.admin.pending_admin() == heir.sender
    assert swarm.admin.admin() == swarm.admin.sender, "the old admin keeps it until accepted"
    rejects(lambda: swarm.members[1].accept_admin(), "NotPendingAdmin", swarm.admin)
    heir.accept_admin()
    assert swarm.admin.admin() == heir.sender and swarm.admin.pending_admin() is None
    rejects(lambda: swarm.admin.rotate_key(he.public_digest()), "NotAdmin", swarm.admin)
    rejects(lambda: swarm.admin.add_member(swarm.outsider.sender, "h:1", b"\x05" * 32, CERT,
                                           DATASET_SIZE),
            "NotAdmin", swarm.admin)
    heir.add_member(swarm.outsider.sender, "h:1", b"\x05" * 32, CERT, DATASET_SIZE)
    assert swarm.admin.member(swarm.outsider.sender).active


def test_withheld_blocks_drop_committed_participants_only_when_the_round_is_stuck(
    w3, dev_keys, he
) -> None:
    swarm = make_swarm(w3, dev_keys, he, members=3, params=SLOTS_PER_BLOCK, min_peers=2,
                       commit_window_s=10)
    for member in swarm.members:
        member.enrol(1, 0, 10)
    withholder = swarm.members[2].sender
    rejects(lambda: swarm.members[0].drop_withheld(1, [withholder]), "NotEnoughContributors",
            swarm.admin)
    for i, member in enumerate(swarm.members):
        member.commit(1, 1, 0, [bytes([i + 1]) * 32])
    pass_time(w3, 11)
    rejects(lambda: swarm.members[0].drop_withheld(1, [withholder]), "WindowOpen", swarm.admin)
    pass_time(w3, 10)
    rejects(lambda: swarm.members[0].drop_withheld(1, []), "NobodyAbsent", swarm.admin)
    rejects(lambda: swarm.members[0].drop_withheld(1, [swarm.outsider.sender]),
            "NotParticipant", swarm.admin)
    rejects(lambda: swarm.members[0].drop_withheld(1, [withholder, withholder]),
            "NotParticipant", swarm.admin)
    rejects(lambda: swarm.outsider.drop_withheld(1, [withholder]), "NotMember", swarm.admin)
    swarm.members[0].drop_withheld(1, [withholder])
    info = swarm.admin.round_info(1)
    assert (info.attempt, info.contributors, info.committed) == (2, 2, 0)
    assert swarm.admin.participants(1) == [m.sender for m in swarm.members[:2]]


def test_a_member_enrols_with_at_most_the_dataset_size_it_was_admitted_with(w3, dev_keys,
                                                                            he) -> None:
    """One member with 31 real samples once declared 2^32 - 1 and took 99.7 % of the weight."""
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    small = swarm.outsider
    swarm.admin.add_member(small.sender, "h:9", b"\x09" * 32, CERT, 31)
    rejects(lambda: small.enrol(1, 0, 2**32 - 1), "SampleCountAboveDataset", swarm.admin)
    rejects(lambda: small.enrol(1, 0, 32), "SampleCountAboveDataset", swarm.admin)
    small.enrol(1, 0, 31)
    assert swarm.admin.commitment(1, small.sender)[0] == 31


def test_a_member_cannot_commit_another_members_digests(w3, dev_keys, he) -> None:
    """Free-riding: committing a captured update's digests as one's own is refused."""
    swarm = make_swarm(w3, dev_keys, he, members=2, params=SLOTS_PER_BLOCK)
    for member in swarm.members:
        member.enrol(1, 0, 10)
    digests = [block_digest(he.encrypt(np.ones(SLOTS_PER_BLOCK))[0])]
    swarm.members[0].commit(1, 1, 0, digests)
    rejects(lambda: swarm.members[1].commit(1, 1, 0, digests), "DuplicateCommitment",
            swarm.admin)
    swarm.members[1].commit(1, 1, 0, [block_digest(he.encrypt(np.zeros(SLOTS_PER_BLOCK))[0])])
    assert swarm.admin.round_info(1).committed == 2
