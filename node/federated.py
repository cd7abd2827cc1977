"""One federated round: the same encrypted blocks, pushed to the coordinator instead.

The node talks to the coordinator as to a member's peer: mutual TLS with its own node
certificate (the one registered on chain), the coordinator's certificate pinned from the
file it publishes, and every update header signed by the node's Ethereum key. An
unreachable coordinator is waited out with backoff (one log line per outage), and a node
whose saved round is ahead of the coordinator's waits rather than run a round again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np

from apiary.core.backoff import Backoff
from apiary.core.coefficients import block_digest
from apiary.core.he import HEContext
from apiary.core.tls import COORDINATOR_TLS_NAME, TlsFiles
from apiary.core.transport import (
    DEFAULT_CHANNEL_OPTIONS,
    TransportError,
    fetch_aggregate,
    push_update,
    sign_update,
)
from apiary.node.metrics import NodeMetrics
from apiary.node.rounds import NotAMember, RoundFailed, RoundOutcome
from apiary.wire import apiary_pb2, apiary_pb2_grpc

log = logging.getLogger("apiary.node.federated")

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
"""Backoff between attempts while the coordinator is unreachable: doubling, capped."""
STATUS_TIMEOUT_S = 10.0
PUSH_TIMEOUT_S = 60.0
AHEAD_POLL_S = 5.0
"""How often a node whose history is ahead of the coordinator asks it again."""
CHANNEL_OPTIONS = (*DEFAULT_CHANNEL_OPTIONS,
                   ("grpc.ssl_target_name_override", COORDINATOR_TLS_NAME))
_RETRIED = (grpc.StatusCode.UNAVAILABLE,)

T = TypeVar("T")


class CoordinatorUnreachable(TransportError):
    """The coordinator cannot be reached now (down, restarting, or its certificate missing)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


@dataclass
class FederatedRound:
    coordinator: str
    he: HEContext
    node: str
    round_timeout_s: float
    private_key: str
    """The node's Ethereum key: it signs every update header."""
    address: str
    contract_address: str
    tls: TlsFiles
    certificate: Path
    """The coordinator's certificate PEM, as the coordinator publishes it."""
    saved_round: Callable[[], int] = lambda: 0
    """The last round in this node's saved history."""
    stop: threading.Event = field(default_factory=threading.Event)
    metrics: NodeMetrics | None = None
    """Where the bytes exchanged with the coordinator are counted."""

    def __post_init__(self) -> None:
        self._metrics = self.metrics or NodeMetrics(self.node)

    # ------------------------------------------------------------------ connection

    def credentials(self) -> grpc.ChannelCredentials:
        """This node's certificate, and the coordinator's pinned, read afresh (a recreated
        coordinator publishes a new one)."""
        try:
            pinned = self.certificate.read_bytes()
        except OSError:
            raise CoordinatorUnreachable(
                f"the coordinator's certificate {self.certificate} is not there yet (the "
                "coordinator writes it when it starts; --coordinator-cert points at it)"
            ) from None
        return self.tls.channel_credentials(pinned)

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, again with backoff for as long as the coordinator is unreachable."""
        backoff, down_since = Backoff(RETRY_FIRST_S, RETRY_MAX_S), None
        while True:
            try:
                result = call()
            except TransportError as exc:
                if exc.code not in _RETRIED:
                    raise
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("node=%s coordinator %s unreachable for the %s (%s); retrying "
                                "with backoff up to %g s until it is back", self.node,
                                self.coordinator, what, exc.message, RETRY_MAX_S)
                if self.stop.wait(backoff.next()):
                    raise RoundFailed(f"stopped while the coordinator was unreachable: "
                                      f"{exc.message}") from None
                continue
            if down_since is not None:
                log.info("node=%s coordinator %s is back after %.1f s; continuing", self.node,
                         self.coordinator, time.monotonic() - down_since)
            return result

    def _status(self) -> apiary_pb2.CoordinatorStatus:
        def ask() -> apiary_pb2.CoordinatorStatus:
            credentials = self.credentials()
            with grpc.secure_channel(self.coordinator, credentials,
                                     options=list(CHANNEL_OPTIONS)) as channel:
                stub = apiary_pb2_grpc.CoordinatorStub(channel)
                try:
                    status: apiary_pb2.CoordinatorStatus = stub.Status(
                        apiary_pb2.CoordinatorStatusRequest(), timeout=STATUS_TIMEOUT_S)
                except grpc.RpcError as exc:
                    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        code = grpc.StatusCode.UNAVAILABLE
                    raise TransportError(code, f"status of coordinator {self.coordinator} "
                                               f"failed with {code.name}: {details}") from None
            return status

        try:
            return self._retrying("round status", ask)
        except TransportError as exc:
            if exc.code == grpc.StatusCode.PERMISSION_DENIED:
                raise NotAMember(f"the coordinator refuses this node: {exc.message}") from None
            raise RoundFailed(exc.message) from None

    # ------------------------------------------------------------------ rounds

    def current_round(self) -> int:
        """The coordinator's open round; while this node's saved history already holds it
        (the coordinator lost its state), wait rather than run a round again."""
        current = int(self._status().round)
        saved = self.saved_round()
        if saved < current:
            return current
        log.warning("node=%s saved round %d is ahead of coordinator %s (at round %d): not "
                    "re-running rounds; waiting for it to reach round %d (restore its "
                    "--coordinator-state to resume at once)", self.node, saved,
                    self.coordinator, current, saved + 1)
        while saved >= current:
            if self.stop.wait(AHEAD_POLL_S):
                raise RoundFailed(f"stopped while waiting for the coordinator to reach round "
                                  f"{saved + 1}")
            current, saved = int(self._status().round), self.saved_round()
        log.info("node=%s coordinator %s reached round %d; continuing", self.node,
                 self.coordinator, current)
        return current

    def last_finalized_round(self) -> int:
        return int(self._status().round) - 1

    def run(self, round_number: int, train: Callable[[], tuple[np.ndarray, float, int]],
            param_count: int) -> RoundOutcome:
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        weights, train_loss, samples = train()
        seconds["train"] = time.perf_counter() - started

        started = time.perf_counter()
        blocks = self.he.encrypt(weights)
        digests = [block_digest(b) for b in blocks]
        seconds["encrypt"] = time.perf_counter() - started

        started = time.perf_counter()
        header = sign_update(
            apiary_pb2.UpdateHeader(round=round_number, sender=self.address,
                                    sample_count=samples, block_count=len(blocks),
                                    block_digests=digests),
            self.contract_address, self.private_key)
        self._push(header, blocks)
        seconds["exchange"] = time.perf_counter() - started
        log.info("node=%s round=%d pushed %d blocks to the coordinator", self.node,
                 round_number, len(blocks))

        started = time.perf_counter()
        outcome = self.fetch_aggregate(round_number, param_count)
        seconds["aggregate"] = time.perf_counter() - started - outcome.seconds["decrypt"]
        seconds["decrypt"] = outcome.seconds["decrypt"]
        outcome.seconds = seconds
        outcome.train_loss = train_loss
        return outcome

    def _push(self, header: apiary_pb2.UpdateHeader, blocks: list[bytes]) -> None:
        def push() -> None:
            push_update(self.coordinator, header, blocks, timeout=PUSH_TIMEOUT_S,
                        service="coordinator", channel_options=CHANNEL_OPTIONS,
                        credentials=self.credentials())
            self._metrics.sent(blocks)

        try:
            self._retrying(f"push of round {header.round}", push)
        except TransportError as exc:
            if exc.code == grpc.StatusCode.ALREADY_EXISTS:
                # A push that reached it before an outage (or before this node restarted).
                log.info("node=%s round=%d the coordinator already holds this node's update",
                         self.node, header.round)
                return
            raise RoundFailed(f"round {header.round}: {exc}") from exc

    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome:
        def fetch() -> tuple[apiary_pb2.AggregateHeader, list[bytes]]:
            return fetch_aggregate(
                self.coordinator, round_number, self.address, modulus=self.he.modulus,
                timeout=self.round_timeout_s, channel_options=CHANNEL_OPTIONS,
                credentials=self.credentials(),
            )

        try:
            header, blocks = self._retrying(f"aggregate of round {round_number}", fetch)
        except TransportError as exc:
            raise RoundFailed(f"round {round_number}: {exc}") from exc
        self._metrics.received(blocks)
        started = time.perf_counter()
        total = self.he.decrypt(blocks, param_count)
        return RoundOutcome(
            round=round_number,
            weights=total / header.weight_sum,
            weight_sum=int(header.weight_sum),
            contributors=list(header.contributors),
            aggregate_digests=["0x" + d.hex() for d in header.block_digests],
            seconds={"decrypt": time.perf_counter() - started},
        )
