"""The coordinator's rounds: who has pushed in the open round, and the closed rounds' sums.

No background thread closes a round at its deadline. Every observer (a push, a waiting
`GetAggregate`, a status query) first closes the round if it is due, and waiters sleep
until the deadline, so from the outside a round closes exactly when it becomes due and
a stopped server leaves no timer behind.

Members are identified by their Ethereum address (the server authenticated the caller
before anything reaches this class); who is a member is asked of `members` each time, so
a member removed on chain no longer counts towards a complete round. With a `RoundStore`
every acknowledged update and every closed round is on disk before anyone hears of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import grpc
import numpy as np

from apiary.coordinator.store import Aggregate, RoundStore
from apiary.core.coefficients import (
    block_digest,
    block_from_bytes,
    block_to_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.transport import ReceivedUpdate, TransportError
from apiary.wire import apiary_pb2

__all__ = ["KEEP_ROUNDS", "Aggregate", "Rounds"]

log = logging.getLogger("apiary.coordinator")

KEEP_ROUNDS = 16
"""Closed rounds whose aggregate stays available to late or catching-up nodes."""

POLL_S = 0.5
"""How often a waiting `GetAggregate` checks that its caller is still there."""


class Rounds:
    """Thread-safe round state; every refusal raises `TransportError` and changes nothing."""

    def __init__(
        self,
        members: Callable[[], Sequence[str]],
        *,
        modulus: int,
        min_peers: int,
        round_deadline_s: float,
        keep_rounds: int = KEEP_ROUNDS,
        store: RoundStore | None = None,
        name_of: Callable[[str], str] = str,
        on_close: Callable[[float | None], None] = lambda _seconds: None,
    ) -> None:
        if min_peers < 1:
            raise ValueError(f"min_peers is {min_peers}; it must be at least 1")
        if round_deadline_s <= 0:
            raise ValueError(f"round_deadline_s is {round_deadline_s}; it must be positive")
        self._members = members
        self._on_close = on_close
        """Told of each closed round: seconds since its first update (None if unknown)."""
        self.name_of = name_of
        """The name a member goes by in logs and aggregates (its address if it has none)."""
        self.modulus = modulus
        self.min_peers = min_peers
        self.round_deadline_s = round_deadline_s
        self._keep = keep_rounds
        self._store = store
        self._cond = threading.Condition()
        self._round = 1
        self._pending: dict[str, ReceivedUpdate] = {}
        self._opened_at: float | None = None
        self._closed: OrderedDict[int, Aggregate] = OrderedDict()
        self._stopped = False
        if store is not None:
            self._resume(store)

    def _resume(self, store: RoundStore) -> None:
        saved = store.load()
        self._round = saved.round
        for aggregate in sorted(saved.closed, key=lambda a: a.round)[-self._keep:]:
            self._closed[aggregate.round] = aggregate
        self._pending = {u.header.sender: u for u in saved.pending}
        if self._pending:
            self._opened_at = time.monotonic()
        if saved.round > 1 or self._pending:
            log.info("resuming at round %d with %d update(s) of it and the aggregates of "
                     "rounds %s", self._round, len(self._pending),
                     ", ".join(map(str, self._closed)) or "none")

    @property
    def members(self) -> tuple[str, ...]:
        """The members' addresses, as `members` lists them now."""
        return tuple(sorted(self._members()))

    # ------------------------------------------------------------------ observers

    @property
    def current_round(self) -> int:
        with self._cond:
            self._close_if_due()
            return self._round

    def pending_senders(self) -> list[str]:
        """Members whose update the open round holds."""
        with self._cond:
            self._close_if_due()
            return sorted(self._pending)

    # ------------------------------------------------------------------ pushes

    def admit(self, header: apiary_pb2.UpdateHeader) -> None:
        """Refuse a push before its blocks are read: closed round, duplicate."""
        with self._cond:
            self._close_if_due()
            self._check_open(header)

    def accept(self, update: ReceivedUpdate) -> int:
        """Record a validated update; close the round if it is now complete or due.
        Returns how many members the round holds after this one."""
        header = update.header
        with self._cond:
            self._close_if_due()
            self._check_open(header)
            if self._store is not None:
                self._store.save_pending(update)
            if not self._pending:
                self._opened_at = time.monotonic()
            self._pending[header.sender] = update
            held = len(self._pending)
            log.info(
                "round %d: accepted the update of %s (%d samples, %d blocks); %d of %d members in",
                header.round,
                self.name_of(header.sender),
                header.sample_count,
                len(update.blocks),
                held,
                len(self.members),
            )
            self._close_if_due()
            self._cond.notify_all()
            return held

    def _check_open(self, header: apiary_pb2.UpdateHeader) -> None:
        if self._stopped:
            raise TransportError(grpc.StatusCode.UNAVAILABLE, "the coordinator is shutting down")
        if header.round != self._round:
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"round {header.round} is not open; the coordinator is at round {self._round}",
            )
        if header.sender in self._pending:
            raise TransportError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"round {header.round}: {self.name_of(header.sender)} has already pushed its "
                "update",
            )

    # ------------------------------------------------------------------ aggregates

    def wait_for(
        self,
        round_number: int,
        *,
        timeout: float | None,
        is_active: Callable[[], bool] = lambda: True,
    ) -> Aggregate:
        """The aggregate of ``round_number``, waiting up to ``timeout`` s for it to close."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._close_if_due()
                aggregate = self._lookup(round_number)
                if aggregate is not None:
                    return aggregate
                if self._stopped:
                    raise TransportError(
                        grpc.StatusCode.UNAVAILABLE, "the coordinator is shutting down"
                    )
                if not is_active():
                    raise TransportError(grpc.StatusCode.CANCELLED, "the caller went away")
                now = time.monotonic()
                waits = [POLL_S]
                if end is not None:
                    if now >= end:
                        raise TransportError(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"round {round_number} is not aggregated yet: {len(self._pending)} "
                            f"of {len(self.members)} members have pushed "
                            f"(it closes with all, or with {self.min_peers} after the deadline)",
                        )
                    waits.append(end - now)
                if self._opened_at is not None:
                    waits.append(max(0.0, self._opened_at + self.round_deadline_s - now))
                self._cond.wait(min(waits))

    def _lookup(self, round_number: int) -> Aggregate | None:
        if round_number < 1 or round_number > self._round:
            raise TransportError(
                grpc.StatusCode.NOT_FOUND,
                f"round {round_number} has never been opened; "
                f"the coordinator is at round {self._round}",
            )
        if round_number == self._round:
            return None
        aggregate = self._closed.get(round_number)
        if aggregate is None:
            raise TransportError(
                grpc.StatusCode.NOT_FOUND,
                f"the aggregate of round {round_number} is no longer held; "
                f"the coordinator keeps the last {self._keep} rounds",
            )
        return aggregate

    def stop(self) -> None:
        """Refuse new pushes and release every waiter."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ closing

    def _close_if_due(self) -> None:
        held = len(self._pending)
        if not held:
            return
        everyone = set(self._pending) >= set(self._members())
        late = (
            self._opened_at is not None
            and time.monotonic() >= self._opened_at + self.round_deadline_s
        )
        if everyone or (late and held >= self.min_peers):
            self._close()

    def _close(self) -> None:
        senders = sorted(self._pending, key=self.name_of)
        updates = [self._pending[s] for s in senders]
        weights = weights_from_sample_counts([u.header.sample_count for u in updates])
        blocks = []
        for i in range(len(updates[0].blocks)):
            matrix = np.stack([block_from_bytes(u.blocks[i], self.modulus) for u in updates])
            blocks.append(block_to_bytes(weighted_sum(matrix, weights, self.modulus)))
        names = [self.name_of(s) for s in senders]
        aggregate = Aggregate(
            round=self._round,
            weight_sum=sum(weights),
            contributors=tuple(names),
            blocks=tuple(blocks),
            digests=tuple(block_digest(b) for b in blocks),
        )
        held = sorted({*self._closed, self._round})[-self._keep:]
        if self._store is not None:
            self._store.save_closed(aggregate, held)
        self._closed[self._round] = aggregate
        while len(self._closed) > self._keep:
            self._closed.popitem(last=False)
        log.info(
            "round %d: aggregated %d of %d members (%s), weights %s, weight sum %d",
            self._round,
            len(senders),
            len(self.members),
            ", ".join(names),
            weights,
            aggregate.weight_sum,
        )
        self._on_close(None if self._opened_at is None else time.monotonic() - self._opened_at)
        self._round += 1
        self._pending = {}
        self._opened_at = None
        self._cond.notify_all()
