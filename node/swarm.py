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
from dataclasses import dataclass, field

import numpy as np
from eth_utils import keccak

from apiary.coefficients import block_digest
from apiary.he import HEContext
from apiary.transport import TransportError, push_update, sign_update
from contracts.binding import ContractRejected, SwarmContract
from node.peer import Inbox
from node.rounds import RoundFailed, RoundOutcome
from proto import apiary_pb2

log = logging.getLogger("apiary.node.swarm")

POLL_SECONDS = 0.2
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
    _timers: dict[str, float] = field(default_factory=dict)

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
            blocks = self.he.encrypt(weights)
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
        members = self.contract.members()
        with futures.ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
            pushes = {
                pool.submit(push_update, m.endpoint, header, blocks, timeout=PUSH_TIMEOUT_S): m
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
        if delivered == 0:
            raise RoundFailed(f"round {round_number}: no member accepted our update")

    # ------------------------------------------------------------------ relay duty

    def _relay_until_final(self, round_number: int, since: float) -> bool:
        """Wait for the round to finalize, aggregating it ourselves when it is our turn."""
        deadline = since + self.round_deadline_s
        give_up = since + self.round_timeout_s
        ready_since: float | None = None
        relayed = False
        while True:
            if self.contract.current_round() > round_number:
                return relayed
            now = time.monotonic()
            if now > give_up:
                raise RoundFailed(f"round {round_number} did not finalize within "
                                  f"{self.round_timeout_s:.0f} s")
            order = self.contract.relay_order(round_number)
            if self.me in order and self._ready(round_number, now >= deadline):
                ready_since = ready_since or now
                position = order.index(self.me)
                if now >= ready_since + position * self.relay_takeover_s:
                    if position > 0:
                        log.warning("node=%s round=%d taking over as relay (position %d)",
                                    self.node, round_number, position)
                    relayed = self._aggregate(round_number) or relayed
                    continue
            time.sleep(POLL_SECONDS)

    def _ready(self, round_number: int, past_deadline: bool) -> bool:
        """Everyone committed, or the deadline passed with enough; and we hold all blocks."""
        committers = self.contract.committers(round_number)
        info = self.contract.round_info(round_number)
        if not info.sealed:
            active = {m.address for m in self.contract.members()}
            min_peers = self.contract.he_parameters().min_peers
            everyone = active <= set(committers)
            if not everyone and not (past_deadline and len(committers) >= min_peers):
                return False
        held = self.inbox.get(round_number)
        return bool(committers) and all(c in held for c in committers)

    def _aggregate(self, round_number: int) -> bool:
        committers = self.contract.committers(round_number)
        held = self.inbox.get(round_number)
        for sender in committers:
            _, committed = self.contract.commitment(round_number, sender)
            if list(held[sender].header.block_digests) != committed:
                log.error("node=%s round=%d blocks from %s do not match its commitment",
                          self.node, round_number, sender)
                return False
        did_any = False
        blocks = self.contract.he_parameters().block_count
        for index in range(blocks):
            if self.contract.aggregate_digest(round_number, index) != bytes(32):
                continue
            try:
                tx = self.contract.aggregate(
                    round_number, index, [held[c].blocks[index] for c in committers]
                )
                did_any = True
                log.info("node=%s round=%d relay aggregated block %d/%d of %d members "
                         "(gas %d)", self.node, round_number, index + 1, blocks,
                         len(committers), tx.gas_used)
            except ContractRejected as exc:
                if exc.error not in ("BlockAlreadyAggregated", "RoundNotOpen"):
                    raise
        return did_any

    # ------------------------------------------------------------------ result

    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome:
        """Read a finalized round's aggregate from the chain, check it, decrypt it."""
        emitted = self.contract.aggregated_blocks(round_number)
        count = self.contract.he_parameters().block_count
        if sorted(emitted) != list(range(count)):
            raise RoundFailed(f"round {round_number}: the chain holds blocks "
                              f"{sorted(emitted)}, expected 0..{count - 1}")
        ordered = [emitted[i] for i in range(count)]
        for block in ordered:
            on_chain = self.contract.aggregate_digest(round_number, block.block_index)
            if keccak(block.coefficients) != on_chain or block.digest != on_chain:
                raise RoundFailed(f"round {round_number}: aggregate block {block.block_index} "
                                  "does not match its digest on chain")
        contributors, _, weight_sum = self.contract.round_weights(round_number)
        if any(b.weight_sum != weight_sum for b in ordered):
            raise RoundFailed(f"round {round_number}: weight sums disagree")
        total = self.he.decrypt([b.coefficients for b in ordered], param_count)
        return RoundOutcome(
            round=round_number,
            weights=total / weight_sum,
            weight_sum=weight_sum,
            contributors=contributors,
            aggregate_digests=["0x" + b.digest.hex() for b in ordered],
        )
