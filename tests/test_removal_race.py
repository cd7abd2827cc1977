"""Removing a member at every moment around a round boundary: real anvil, real contract,
real gRPC peer servers, real ciphertexts, the node's own `SwarmRound` per member.

Whenever the removal lands — before anyone enrolled, while members enrol, after the
participants are fixed, after the commits, while the relay aggregates, between rounds — no
member ever decrypts a round under the wrong key or crashes, every finished round decrypts
to its participants' weighted mean, and the removed member never holds the new key and is
refused from then on.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import free_port
from apiary.core.coefficients import SLOTS_PER_BLOCK, block_digest, weights_from_sample_counts
from apiary.core.he import HEContext
from apiary.core.tasks.config import SwarmConfig, TaskIdentity
from apiary.core.tls import create_self_signed
from apiary.core.transport import TransportError, push_update, sign_update
from apiary.node.founding import found_swarm
from apiary.node.identity import Identity
from apiary.node.keys import SECRET_CONTEXT_FILE, KeyRing
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.node.rounds import NotAMember, RoundAbandoned, RoundOutcome
from apiary.node.swarm import SwarmRound
from apiary.wire import apiary_pb2

pytestmark = pytest.mark.chain

PARAMS = SLOTS_PER_BLOCK + 100
NAMES = ("a", "b", "c", "gone")
SAMPLES = {"a": 40, "b": 70, "c": 25, "gone": 90}
TRAINING = SwarmConfig(TaskIdentity("removal-race", "1", "a" * 64, "b" * 64, PARAMS),
                       {"epochs": 1, "lr": 0.01, "batch_size": 16, "seed": 0})
DELAYS_S = (0.0, 0.15, 0.4, 0.8, 1.5, 3.0)
"""When the removal lands after the members start round 1: before or during enrolment,
around the commits, while the relay aggregates, and after round 1 finished."""


class Member:
    """One member: its own key ring, inbox, peer server and round driver, run in a thread
    until it finished a round from `until_round` on (or the chain says it is no longer a
    member)."""

    def __init__(self, name: str, identity: Identity, contract: SwarmContract, he: HEContext,
                 state_dir: Path, port: int) -> None:
        self.name, self.identity, self.contract = name, identity, contract
        state_dir.mkdir(parents=True)
        (state_dir / SECRET_CONTEXT_FILE).write_bytes(he.secret_bytes())
        self.keys = KeyRing(state_dir)
        self.inbox = Inbox()
        self.server = start_peer_server(PeerService(contract, self.inbox, name), "127.0.0.1",
                                        port)
        self.driver = SwarmRound(contract, he, self.inbox, identity.private_key, name,
                                 relay_takeover_s=3, round_timeout_s=60,
                                 keys=self.keys,
                                 x25519_private=bytes.fromhex(identity.x25519_private))
        self.weights = np.random.default_rng(len(name) * 7 + SAMPLES[name]).normal(
            0, 0.3, PARAMS)
        self.finished: list[RoundOutcome] = []
        self.abandoned: list[int] = []
        self.removed = False
        self.until_round: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def train(self) -> tuple[np.ndarray, float, int]:
        return self.weights, 0.1, SAMPLES[self.name]

    def _run(self) -> None:
        try:
            while not self._done():
                round_number = self.contract.current_round()
                try:
                    self.finished.append(self.driver.run(round_number, self.train, PARAMS))
                except RoundAbandoned:
                    self.abandoned.append(round_number)
        except NotAMember:
            self.removed = True
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _done(self) -> bool:
        until = self.until_round
        return until is not None and any(o.round >= until for o in self.finished)


def expected_mean(contract: SwarmContract, round_number: int,
                  members: dict[str, Member]) -> np.ndarray:
    by_address = {m.identity.address: m for m in members.values()}
    participants = contract.participants(round_number)
    counts = [SAMPLES[by_address[p].name] for p in participants]
    weights = weights_from_sample_counts(counts)
    return sum(w * by_address[p].weights for w, p in zip(weights, participants, strict=True)
               ) / sum(weights)


@pytest.mark.parametrize("delay_s", DELAYS_S)
def test_removal_at_any_moment_never_mixes_keys(w3: Web3, dev_keys: list[str], he: HEContext,
                                                tmp_path: Path, delay_s: float) -> None:
    identities = {n: Identity.create(n, dev_keys[i + 1]) for i, n in enumerate(NAMES)}
    ports = {n: free_port() for n in NAMES}
    founders = [identities[n].public(f"127.0.0.1:{ports[n]}",
                                     create_self_signed(n, ["127.0.0.1"]), 1000)
                for n in NAMES]
    admin = found_swarm(w3, dev_keys[0], he, PARAMS, founders, min_peers=2,
                        enrol_window_s=10, commit_window_s=5, training=TRAINING)
    members = {n: Member(n, identities[n], admin.as_account(identities[n].private_key), he,
                         tmp_path / n, ports[n]) for n in NAMES}
    try:
        for member in members.values():
            member.thread.start()
        time.sleep(delay_s)
        fresh = HEContext.create()
        gone = members["gone"]
        admin.remove_member(gone.identity.address, fresh.public_digest())
        epoch = admin.key_epoch_count() - 1
        from_round, _ = admin.key_epoch(epoch)
        stayers = [m for n, m in members.items() if n != "gone"]
        for member in stayers:
            member.keys.put(epoch, fresh.secret_bytes(), fresh.public_digest())
        for member in members.values():
            member.until_round = from_round
        for member in members.values():
            member.thread.join(90)
            assert not member.thread.is_alive(), f"{member.name} is stuck"
            assert member.error is None, f"{member.name}: {member.error!r}"

        assert not gone.keys.has(epoch), "the removed member never receives the new key"
        assert gone.removed, "the chain told the removed member so"
        for outcome in gone.finished:
            assert outcome.round < from_round, "it finishes no round under the new key"
        keys = {0: he, epoch: fresh}
        for member in stayers:
            assert any(o.round >= from_round for o in member.finished)
            for outcome in member.finished:
                round_epoch = admin.round_timing(outcome.round).key_epoch
                assert round_epoch == (epoch if outcome.round >= from_round else 0)
                assert keys[round_epoch] is not None
                mean = expected_mean(admin, outcome.round, members)
                assert np.max(np.abs(outcome.weights - mean)) < 1e-6, (member.name, outcome.round)
                if outcome.round >= from_round:
                    assert gone.identity.address not in outcome.contributors
        rounds = {o.round for m in stayers for o in m.finished}
        for round_number in rounds:
            digests = {o.aggregate_digests[0] for m in stayers for o in m.finished
                       if o.round == round_number}
            assert len(digests) == 1

        # The removed member's updates are refused by every peer from now on.
        current = admin.current_round()
        blocks = he.encrypt(gone.weights)
        header = sign_update(apiary_pb2.UpdateHeader(
            round=current, attempt=max(1, admin.round_info(current).attempt),
            sender=gone.identity.address, sample_count=5, block_count=len(blocks),
            block_digests=[block_digest(b) for b in blocks]),
            admin.address, gone.identity.private_key)
        with pytest.raises(TransportError) as refused:
            push_update(f"127.0.0.1:{ports['a']}", header, blocks, timeout=10)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for member in members.values():
            member.server.stop(grace=None)
