"""One federated round: the same encrypted blocks, pushed to the coordinator instead."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from apiary.core.coefficients import block_digest
from apiary.core.he import HEContext
from apiary.core.transport import TransportError, fetch_aggregate, push_update
from apiary.node.rounds import RoundFailed, RoundOutcome
from apiary.wire import apiary_pb2, apiary_pb2_grpc

log = logging.getLogger("apiary.node.federated")


@dataclass
class FederatedRound:
    coordinator: str
    he: HEContext
    node: str
    round_timeout_s: float

    def __post_init__(self) -> None:
        self._channel = grpc.insecure_channel(self.coordinator)
        self._stub = apiary_pb2_grpc.CoordinatorStub(self._channel)

    def current_round(self) -> int:
        # The coordinator may start after the nodes (it needs the founding's public key).
        status = self._stub.Status(apiary_pb2.CoordinatorStatusRequest(), timeout=30,
                                   wait_for_ready=True)
        return int(status.round)

    def last_finalized_round(self) -> int:
        return self.current_round() - 1

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
        header = apiary_pb2.UpdateHeader(round=round_number, sender=self.node,
                                         sample_count=samples, block_count=len(blocks),
                                         block_digests=digests)
        try:
            push_update(self.coordinator, header, blocks, timeout=60, service="coordinator")
        except TransportError as exc:
            raise RoundFailed(f"round {round_number}: {exc}") from exc
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

    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome:
        try:
            header, blocks = fetch_aggregate(
                self.coordinator, round_number, self.node, modulus=self.he.modulus,
                timeout=self.round_timeout_s,
            )
        except TransportError as exc:
            raise RoundFailed(f"round {round_number}: {exc}") from exc
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
