"""One swarm round as a node sees it: train, encrypt, exchange, commit, relay, decrypt.

Blocks are streamed to every active member *before* the commit: whichever member ends
up relaying then already holds them, so a node that dies after committing cannot stall
the round, and a dead relay is replaced by the next member of ``relayOrder`` without a
second exchange. The contract checks every block against the committed digests, so
nothing a relay does can change a contribution.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
from eth_utils import keccak

from apiary.chain.binding import ContractRejected, RoundInfo, SwarmContract
from apiary.core.coefficients import block_digest
from apiary.core.he import HEContext
from apiary.core.transport import ReceivedUpdate, TransportError, push_update, sign_update
from apiary.node.keys import KeyRing
from apiary.node.peer import Inbox
from apiary.node.rounds import NotAMember, RoundFailed, RoundOutcome
from apiary.wire import apiary_pb2

log = logging.getLogger("apiary.node.swarm")

POLL_SECONDS = 0.2
# Rejections that only mean the chain moved on while we relayed: another relay was
# quicker, or a late member committed before the round was sealed. Re-check and retry.
RELAY_RACES = ("BlockAlreadyAggregated", "RoundNotOpen", "WrongContributionCount")
PUSH_TIMEOUT_S = 30.0


@dataclass
class SwarmRound:
    """Runs rounds for one member against one contract."""

    contract: SwarmContract
    he: HEContext
    inbox: Inbox
    private_key: str
    node: str
    round_deadline_s: float
    relay_takeover_s: float
    round_timeout_s: float
    keys: KeyRing | None = None
    credentials: grpc.ChannelCredentials | None = None

    def __post_init__(self) -> None:
        self.params = self.contract.he_parameters()

    def context_for(self, round_number: int) -> HEContext:
        """The secret context of the key epoch that encrypts `round_number`.

        After a rotation the admin delivers the new key; wait for it rather than encrypt
        under a key the swarm has retired.
        """
        epoch, _ = self.contract.key_epoch_for(round_number)
        if self.keys is None:
            if epoch != 0:
                raise RoundFailed(f"round {round_number} uses key epoch {epoch}; "
                                  "this node only holds the founding key")
            return self.he
        give_up = time.monotonic() + self.round_timeout_s
        while (he := self.keys.get(epoch)) is None:
            if time.monotonic() > give_up:
                raise RoundFailed(f"round {round_number}: key epoch {epoch} never arrived")
            log.info("node=%s round=%d waiting for HE key epoch %d", self.node, round_number,
                     epoch)
            time.sleep(1.0)
        return he

    @property
    def me(self) -> str:
        return self.contract.sender

    def current_round(self) -> int:
        return self.contract.current_round()

    def last_finalized_round(self) -> int:
        return self.contract.last_finalized_round()

    # ------------------------------------------------------------------ one round

    def run(
        self,
        round_number: int,
        train: Callable[[], tuple[np.ndarray, float, int]],
        param_count: int,
    ) -> RoundOutcome:
        """Take part in `round_number`; returns the decrypted global weights."""
        seconds: dict[str, float] = {}
        committed_already, _ = self.contract.commitment(round_number, self.me)
        info = self.contract.round_info(round_number)
        took_part = committed_already > 0
        train_loss: float | None = None
        if not took_part and info.sealed:
            log.info("node=%s round=%d is already sealed without us; waiting for it",
                     self.node, round_number)
        elif not took_part:
            started = time.perf_counter()
            weights, train_loss, samples = train()
            seconds["train"] = time.perf_counter() - started

            started = time.perf_counter()
            blocks = self.context_for(round_number).encrypt(weights)
            digests = [block_digest(b) for b in blocks]
            seconds["encrypt"] = time.perf_counter() - started

            started = time.perf_counter()
            self._exchange(round_number, blocks, digests, samples)
            seconds["exchange"] = time.perf_counter() - started

            started = time.perf_counter()
            try:
                self.contract.commit(round_number, digests, samples)
                took_part = True
            except ContractRejected as exc:
                if exc.error == "NotMember":
                    raise NotAMember(str(exc)) from exc
                if exc.error not in ("RoundSealedAlready", "RoundNotOpen"):
                    raise
                log.warning("node=%s round=%d closed before our commit (%s)", self.node,
                            round_number, exc.error)
            seconds["commit"] = time.perf_counter() - started
            log.info("node=%s round=%d committed %d blocks, %d samples", self.node,
                     round_number, len(blocks), samples)

        started = time.perf_counter()
        relayed = self._relay_until_final(round_number, time.monotonic())
        seconds["aggregate"] = time.perf_counter() - started

        started = time.perf_counter()
        outcome = self.fetch_aggregate(round_number, param_count)
        seconds["decrypt"] = time.perf_counter() - started
        outcome.seconds = seconds
        outcome.train_loss = train_loss
        outcome.committed = took_part
        outcome.relay = relayed
        self.inbox.prune(round_number + 1)
        return outcome

    def _exchange(self, round_number: int, blocks: list[bytes], digests: list[bytes],
                  samples: int) -> None:
        header = apiary_pb2.UpdateHeader(
            round=round_number, sender=self.me, sample_count=samples,
            block_count=len(blocks), block_digests=digests,
        )
        header = sign_update(header, self.contract.address, self.private_key)
        members = [m for m in self.contract.members() if m.address != self.me]
        self.inbox.put(round_number, self.me, ReceivedUpdate(header, list(blocks)))
        with futures.ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
            pushes = {
                pool.submit(push_update, m.endpoint, header, blocks, timeout=PUSH_TIMEOUT_S,
                            credentials=self.credentials): m
                for m in members
            }
            delivered = 0
            for done in futures.as_completed(pushes):
                member = pushes[done]
                try:
                    done.result()
                    delivered += 1
                except TransportError as exc:
                    log.warning("node=%s round=%d push to %s (%s) failed: %s", self.node,
                                round_number, member.address, member.endpoint, exc)
        if members and delivered == 0:
            raise RoundFailed(f"round {round_number}: no other member accepted our update")

    # ------------------------------------------------------------------ relay duty

    def _relay_until_final(self, round_number: int, since: float) -> bool:
        """Wait for the round to finalize, aggregating it ourselves when it is our turn.

        A backup relay waits `position × relay_takeover_s` after the round became ready
        *and* after the last block the chain saw aggregated, so a slow but live relay is
        never raced.
        """
        deadline = since + self.round_deadline_s
        give_up = since + self.round_timeout_s
        ready_since: float | None = None
        progress = (-1, time.monotonic())
        relayed = False
        while True:
            if self.contract.current_round() > round_number:
                return relayed
            now = time.monotonic()
            if now > give_up:
                raise RoundFailed(f"round {round_number} did not finalize within "
                                  f"{self.round_timeout_s:.0f} s")
            info = self.contract.round_info(round_number)
            if info.aggregated_blocks != progress[0]:
                progress = (info.aggregated_blocks, now)
            if not self._ready(round_number, info, now >= deadline):
                ready_since = None
            elif ready_since is None:
                ready_since = now
            if ready_since is not None:
                order = self.contract.relay_order(round_number)
                position = order.index(self.me) if self.me in order else None
                turn = max(ready_since, progress[1]) + (position or 0) * self.relay_takeover_s
                if position is not None and now >= turn:
                    if position > 0:
                        log.warning("node=%s round=%d taking over as relay (position %d)",
                                    self.node, round_number, position)
                    relayed = self._aggregate(round_number) or relayed
                    continue
            time.sleep(POLL_SECONDS)

    def _ready(self, round_number: int, info: RoundInfo, past_deadline: bool) -> bool:
        """Everyone committed, or the deadline passed with enough; and we hold all blocks."""
        if info.contributors == 0:
            return False
        if not info.sealed:
            everyone = info.contributors >= self.contract.active_member_count()
            enough = past_deadline and info.contributors >= self.params.min_peers
            if not (everyone or enough):
                return False
        held = self.inbox.get(round_number)
        return all(c in held for c in self.contract.committers(round_number))

    def _aggregate(self, round_number: int) -> bool:
        committers = self.contract.committers(round_number)
        held = self.inbox.get(round_number)
        if any(c not in held for c in committers):
            return False
        for sender in committers:
            _, committed = self.contract.commitment(round_number, sender)
            if list(held[sender].header.block_digests) != committed:
                log.error("node=%s round=%d blocks from %s do not match its commitment",
                          self.node, round_number, sender)
                return False
        count = self.params.block_count
        todo = [i for i in range(count)
                if self.contract.aggregate_digest(round_number, i) == bytes(32)]
        results = self.contract.aggregate_blocks(
            round_number, {i: [held[c].blocks[i] for c in committers] for i in todo}
        )
        done = [i for i, r in results.items() if not isinstance(r, ContractRejected)]
        for result in results.values():
            if isinstance(result, ContractRejected) and result.error not in RELAY_RACES:
                raise result
        if done:
            gas = sum(r.gas_used for r in results.values() if not isinstance(r, Exception))
            log.info("node=%s round=%d relay aggregated %d of %d blocks of %d members "
                     "(gas %d)", self.node, round_number, len(done), count, len(committers),
                     gas)
        return bool(done)

    # ------------------------------------------------------------------ result

    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome:
        """Read a finalized round's aggregate from the chain, check it, decrypt it."""
        emitted = self.contract.aggregated_blocks(round_number)
        count = self.params.block_count
        if sorted(emitted) != list(range(count)):
            raise RoundFailed(f"round {round_number}: the chain holds blocks "
                              f"{sorted(emitted)}, expected 0..{count - 1}")
        ordered = [emitted[i] for i in range(count)]
        for block in ordered:
            if keccak(block.coefficients) != block.digest:
                raise RoundFailed(f"round {round_number}: aggregate block {block.block_index} "
                                  "does not match its digest")
        root = self.contract.finalized_root(round_number)
        if root != keccak(b"".join(b.digest for b in ordered)):
            raise RoundFailed(f"round {round_number}: the aggregate blocks do not match the "
                              "root the contract finalized")
        contributors, _, weight_sum = self.contract.round_weights(round_number)
        if any(b.weight_sum != weight_sum for b in ordered):
            raise RoundFailed(f"round {round_number}: weight sums disagree")
        he = self.context_for(round_number)
        total = he.decrypt([b.coefficients for b in ordered], param_count)
        return RoundOutcome(
            round=round_number,
            weights=total / weight_sum,
            weight_sum=weight_sum,
            contributors=contributors,
            aggregate_digests=["0x" + b.digest.hex() for b in ordered],
        )
