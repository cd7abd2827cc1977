"""Masked swarm rounds: real anvil, real contract, real gRPC peer servers, real ciphertexts.

Each member runs the node's own `SwarmRound` in a thread with its own inbox and peer
server. What a curious member (holding the swarm's HE key) sees of another member's update
— on the gRPC stream and in the relay's calldata on chain — must decrypt to noise; only the
aggregate decrypts, to the participants' weighted mean.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import free_port
from apiary.core.coefficients import SLOTS_PER_BLOCK, block_digest, weights_from_sample_counts
from apiary.core.he import HEContext
from apiary.core.masking import Masker, MaskSet
from apiary.core.tasks.config import SwarmConfig, TaskIdentity
from apiary.core.tls import create_self_signed
from apiary.node.contribution import ContributionStore
from apiary.node.founding import found_swarm
from apiary.node.guard import ModelGuard
from apiary.node.identity import Identity
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.node.rounds import RoundOutcome
from apiary.node.swarm import SwarmRound

pytestmark = pytest.mark.chain

PARAMS = 2 * SLOTS_PER_BLOCK + 321
COMMIT_WINDOW_S = 12
MAX_CORRELATION = 0.05
TRAINING = SwarmConfig(TaskIdentity("masked-round", "1", "a" * 64, "b" * 64, PARAMS),
                       {"epochs": 1, "lr": 0.01, "batch_size": 16, "seed": 0})


class RecordingInbox(Inbox):
    """An inbox that also keeps everything it was handed, as a curious member would."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, str, list[bytes]]] = []

    def put(self, round_number: int, attempt: int, sender: str, update) -> bool:  # type: ignore[no-untyped-def]
        self.seen.append((round_number, attempt, sender, list(update.blocks)))
        return super().put(round_number, attempt, sender, update)


@dataclass
class Member:
    identity: Identity
    contract: SwarmContract
    inbox: Inbox
    driver: SwarmRound
    weights: np.ndarray
    samples: int
    outcome: RoundOutcome | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def train(self) -> tuple[np.ndarray, float, int]:
        return self.weights, 0.5, self.samples

    def start(self) -> None:
        def run() -> None:
            try:
                self.outcome = self.driver.run(1, self.train, PARAMS)
            except BaseException as exc:  # reported by the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 90.0) -> RoundOutcome:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.identity.name} did not finish its round"
        assert self.error is None, self.error
        assert self.outcome is not None
        return self.outcome


@pytest.fixture
def swarm(w3: Web3, dev_keys: list[str], he: HEContext) -> Iterator[list[Member]]:
    """Three founded members, each with its peer server up; nobody has started round 1."""
    identities = [Identity.create(f"h{i}", dev_keys[i + 1]) for i in range(3)]
    ports = [free_port() for _ in identities]
    admin = found_swarm(w3, dev_keys[0], he, PARAMS,
                        [ident.public(f"127.0.0.1:{port}",
                                      create_self_signed(ident.name, ["127.0.0.1"]), 1000)
                         for ident, port in zip(identities, ports, strict=True)],
                        min_peers=2, enrol_window_s=30, commit_window_s=COMMIT_WINDOW_S,
                        training=TRAINING)
    rng = np.random.default_rng(5)
    members, servers = [], []
    for ident, port, samples in zip(identities, ports, (120, 45, 300), strict=True):
        contract = admin.as_account(ident.private_key)
        inbox = RecordingInbox()
        servers.append(start_peer_server(
            PeerService(admin.as_account(ident.private_key), inbox, ident.name),
            "127.0.0.1", port))
        driver = SwarmRound(contract, he, inbox, ident.private_key, ident.name,
                            relay_takeover_s=5, round_timeout_s=90,
                            x25519_private=bytes.fromhex(ident.x25519_private))
        members.append(Member(ident, contract, inbox, driver,
                              rng.normal(0, 0.3, PARAMS), samples))
    yield members
    for server in servers:
        server.stop(grace=None)


def weighted_mean(members: list[Member]) -> np.ndarray:
    weights = weights_from_sample_counts([m.samples for m in members])
    return sum(w * m.weights for w, m in zip(weights, members, strict=True)) / sum(weights)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def relay_calldata(contract: SwarmContract, round_number: int) -> dict[int, list[bytes]]:
    """The ciphertexts the relays' aggregateBlocks transactions carried on chain, per block."""
    found = {}
    for block in contract.aggregated_blocks(round_number).values():
        tx = contract.w3.eth.get_transaction(block.transaction_hash)
        function, args = contract.contract.decode_function_input(tx["input"])
        assert function.abi_element_identifier.startswith("aggregateBlocks")
        for index, ciphertexts in zip(args["blockIndices"], args["ciphertexts"], strict=True):
            found[int(index)] = [bytes(c) for c in ciphertexts]
    return found


def test_only_the_aggregate_decrypts_what_a_member_sees_is_noise(swarm, he) -> None:
    for member in swarm:
        member.start()
    outcomes = [m.result() for m in swarm]
    expected = weighted_mean(swarm)
    for outcome in outcomes:
        assert np.max(np.abs(outcome.weights - expected)) < 1e-6
        assert sorted(outcome.contributors) == sorted(m.identity.address for m in swarm)
    assert sum(o.relay for o in outcomes) >= 1

    # A curious member holds the swarm key and every other member's update: from the
    # gRPC stream (its own inbox) and from the chain (the relay's calldata).
    curious, victim = swarm[0], swarm[1]
    assert isinstance(curious.inbox, RecordingInbox)
    # Pushed, and perhaps fetched as well by a relay that asked before the push arrived.
    copies = [blocks for r, a, sender, blocks in curious.inbox.seen
              if (r, a, sender) == (1, 1, victim.identity.address)]
    assert copies and all(c == copies[0] for c in copies)
    streamed = copies[0]
    on_chain = relay_calldata(curious.contract, 1)
    position = curious.contract.participants(1).index(victim.identity.address)
    from_chain = [on_chain[i][position] for i in sorted(on_chain)]
    assert from_chain == streamed
    for seen in (streamed, from_chain):
        decrypted = he.decrypt(seen, PARAMS)
        assert abs(correlation(decrypted, victim.weights)) < MAX_CORRELATION
        assert np.linalg.norm(decrypted) > 1e6 * np.linalg.norm(victim.weights)

    # The same ciphertext without its mask would have decrypted to the update: the mask is
    # what hides it (re-derived here from the victim's own keys, which no one else holds).
    masker = Masker(victim.identity.address, bytes.fromhex(victim.identity.x25519_private),
                    {m.identity.address: bytes.fromhex(m.identity.x25519_public) for m in swarm},
                    curious.contract.address, he.modulus)
    participants = curious.contract.participants(1)
    counts = [curious.contract.commitment(1, p)[0] for p in participants]
    mask_set = MaskSet.from_sample_counts(participants, counts, 1, 1)
    q = np.uint64(he.modulus)
    unmasked = []
    for index, block in enumerate(streamed):
        coeffs = np.frombuffer(block, dtype=">u8").astype(np.uint64)
        plain = (coeffs + (q - masker.block_mask(mask_set, index))) % q
        unmasked.append(plain.astype(">u8").tobytes())
    assert np.max(np.abs(he.decrypt(unmasked, PARAMS) - victim.weights)) < 1e-6


def run_survivors(swarm: list[Member], gone: Member,
                  misbehave: Callable[[Member], None]) -> list[RoundOutcome]:
    misbehave(gone)
    survivors = [m for m in swarm if m is not gone]
    for member in survivors:
        member.start()
    outcomes = [m.result() for m in survivors]
    expected = weighted_mean(survivors)
    for outcome in outcomes:
        assert np.max(np.abs(outcome.weights - expected)) < 1e-6
        assert gone.identity.address not in outcome.contributors
    info = survivors[0].contract.round_info(1)
    assert info.finalized and info.attempt == 2
    return outcomes


def test_a_member_that_dies_after_the_masks_are_fixed_is_dropped_and_the_rest_remask(
    swarm, he
) -> None:
    """It enrolled (so the masks were fixed with it) and never committed: after the commit
    window the survivors drop it on chain, re-mask for the two of them and finish."""
    run_survivors(swarm, swarm[2], lambda gone: gone.contract.enrol(1, 0, gone.samples))


def test_a_member_that_commits_and_withholds_its_blocks_is_dropped(swarm, he) -> None:
    """It committed masked digests but sent its blocks to nobody: once the round has been
    stuck for twice the commit window, the survivors drop it as withholding."""

    def withhold(gone: Member) -> None:
        gone.contract.enrol(1, 0, gone.samples)
        # Wait until the others enrolled too, then commit digests of blocks nobody gets.
        masker = Masker(gone.identity.address, bytes.fromhex(gone.identity.x25519_private),
                        {m.identity.address: bytes.fromhex(m.identity.x25519_public)
                         for m in swarm}, gone.contract.address, he.modulus)

        def commit_when_fixed() -> None:
            while gone.contract.round_info(1).attempt == 0:
                threading.Event().wait(0.1)
            participants = gone.contract.participants(1)
            counts = [gone.contract.commitment(1, p)[0] for p in participants]
            mask_set = MaskSet.from_sample_counts(participants, counts, 1, 1)
            blocks = masker.mask_bytes(he.encrypt(gone.weights), mask_set)
            gone.contract.commit(1, 1, 0, [block_digest(b) for b in blocks])

        threading.Thread(target=commit_when_fixed, daemon=True).start()

    run_survivors(swarm, swarm[2], withhold)


def test_a_valid_committed_aggregate_of_random_coefficients_is_caught_before_adoption(
    swarm, he
) -> None:
    """A member commits and sends blocks of random coefficients: the contract accepts them
    (they match the digests it committed) and the aggregate decrypts to garbage, which the
    model check refuses on every honest node."""
    attacker = swarm[2]
    rng = np.random.default_rng(9)

    def random_blocks(round_number, attempt, participants, blocks):  # type: ignore[no-untyped-def]
        return [rng.integers(0, he.modulus, len(b) // 8, dtype=np.uint64).astype(">u8").tobytes()
                for b in blocks]

    attacker.driver._masked = random_blocks  # type: ignore[method-assign]
    for member in swarm:
        member.start()
    outcomes = [m.result() for m in swarm[:2]]
    for member, outcome in zip(swarm[:2], outcomes, strict=True):
        assert attacker.identity.address in outcome.contributors
        reason = ModelGuard().verdict(outcome.weights, member.weights, [])
        assert reason is not None and ("exceeds the bound" in reason or "not finite" in reason)
    assert outcomes[0].aggregate_digests == outcomes[1].aggregate_digests


def test_a_member_restarted_after_its_commit_sends_the_blocks_it_committed(
    swarm, he, tmp_path
) -> None:
    """It crashed between its commit and sending its blocks. Restarted, it reuses the update
    it encrypted before (kept in its state directory) instead of encrypting anew, so its
    blocks match its commitment and the round finishes in its first attempt, with it."""
    crashing = swarm[2]
    crashing.driver.store = ContributionStore(tmp_path, crashing.contract.address)

    def crash(*_: object) -> None:
        raise SystemExit("killed after its commit")

    crashing.driver._exchange = crash  # type: ignore[method-assign]
    for member in swarm:
        member.start()
    assert crashing.thread is not None
    crashing.thread.join(60)
    assert isinstance(crashing.error, SystemExit)
    assert crashing.contract.commitment(1, crashing.identity.address)[1] == 1

    crashing.error = None
    crashing.driver = SwarmRound(
        crashing.contract, he, crashing.inbox, crashing.identity.private_key, "restarted",
        relay_takeover_s=5, round_timeout_s=90,
        x25519_private=bytes.fromhex(crashing.identity.x25519_private),
        store=ContributionStore(tmp_path, crashing.contract.address))
    crashing.weights = crashing.weights + 1.0  # retraining would give other weights
    crashing.start()
    outcomes = [m.result() for m in swarm]
    crashing.weights = crashing.weights - 1.0
    expected = weighted_mean(swarm)
    for outcome in outcomes:
        assert np.max(np.abs(outcome.weights - expected)) < 1e-6
    assert swarm[0].contract.round_info(1).attempt == 1, "nobody was dropped"
    assert list((tmp_path / "round-updates").glob("*")) == [], "discarded once the round ended"


def test_the_blocks_are_spread_over_the_relays_and_a_dead_relays_share_is_taken_over(
    swarm,
) -> None:
    """Three blocks, three members: each relays the block its position in the relay order
    names. One member dies right after it sent its update, before it relays: once nothing
    moved for the takeover delay, the member after it in the order aggregates its block, and
    every survivor decrypts the weighted mean of all three updates."""
    order = swarm[0].contract.relay_order(1)
    dead = next(m for m in swarm if m.identity.address == order[1])

    def die(*_: object) -> None:
        raise SystemExit("died before relaying")

    dead.driver._aggregate = die  # type: ignore[method-assign]
    for member in swarm:
        # A takeover delay no live relay exceeds on a loaded machine: only the dead one's
        # block changes hands.
        member.driver.relay_takeover_s = 20
        member.start()
    survivors = [m for m in swarm if m is not dead]
    outcomes = [m.result() for m in survivors]
    assert isinstance(dead.error, SystemExit)
    expected = weighted_mean(swarm)
    for outcome in outcomes:
        assert np.max(np.abs(outcome.weights - expected)) < 1e-6
        assert outcome.summed_locally, "each survivor summed the blocks it received itself"
    emitted = swarm[0].contract.aggregated_blocks(1)
    senders = {i: swarm[0].contract.w3.eth.get_transaction(b.transaction_hash)["from"]
               for i, b in emitted.items()}
    # Block i is relayed by the member at position i mod 3; the dead one's by the next.
    assert senders[0] == order[0]
    assert senders[1] == order[2]
    assert senders[2] == order[2]


def test_a_node_whose_own_sum_differs_from_the_chains_adopts_the_chains(
    swarm, monkeypatch
) -> None:
    """Each node sums the blocks it received and keeps its sum only if every block's digest is
    the one the contract computed. A sum that differs (here: every node's arithmetic is off by
    one in a coefficient) is never adopted: the node reads the aggregate from the chain."""
    import apiary.node.swarm as swarm_module

    exact = swarm_module.weighted_sum

    def off_by_one(blocks, weights, modulus):  # type: ignore[no-untyped-def]
        total = exact(blocks, weights, modulus).copy()
        total[0] = (int(total[0]) + 1) % modulus
        return total

    monkeypatch.setattr(swarm_module, "weighted_sum", off_by_one)
    for member in swarm:
        member.start()
    outcomes = [m.result() for m in swarm]
    expected = weighted_mean(swarm)
    for outcome in outcomes:
        assert not outcome.summed_locally
        assert np.max(np.abs(outcome.weights - expected)) < 1e-6
        assert len(outcome.aggregate_transactions) == 3, "read block by block from the logs"
