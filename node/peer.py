"""The node's gRPC side: the relay inbox that members stream their ciphertext blocks into."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

from apiary.transport import (
    ReceivedUpdate,
    TransportError,
    receive_update,
    verify_update_signature,
)
from contracts.binding import SwarmContract
from proto import apiary_pb2, apiary_pb2_grpc

log = logging.getLogger("apiary.node.peer")


class Inbox:
    """Updates received for each round, by sender address (thread-safe)."""

    def __init__(self) -> None:
        self._updates: dict[int, dict[str, ReceivedUpdate]] = {}
        self._lock = threading.Lock()

    def put(self, round_number: int, sender: str, update: ReceivedUpdate) -> bool:
        with self._lock:
            held = self._updates.setdefault(round_number, {})
            if sender in held:
                return False
            held[sender] = update
            return True

    def get(self, round_number: int) -> dict[str, ReceivedUpdate]:
        with self._lock:
            return dict(self._updates.get(round_number, {}))

    def prune(self, below_round: int) -> None:
        with self._lock:
            for r in [r for r in self._updates if r < below_round]:
                del self._updates[r]


class PeerService(apiary_pb2_grpc.PeerServicer):
    """Accepts a member's blocks for the open round; anything else is refused unchanged."""

    def __init__(self, contract: SwarmContract, inbox: Inbox, node: str) -> None:
        self.contract = contract
        self.inbox = inbox
        self.node = node
        params = contract.he_parameters()
        self.block_count = params.block_count
        self.modulus = params.modulus
        self._chain_lock = threading.Lock()

    def PushUpdate(
        self, request_iterator: Iterator[apiary_pb2.UpdateChunk], context: grpc.ServicerContext
    ) -> apiary_pb2.PushReply:
        try:
            update = receive_update(
                request_iterator, expected_blocks=self.block_count, modulus=self.modulus
            )
        except TransportError as exc:
            log.warning("node=%s refused a push: %s", self.node, exc)
            context.abort(exc.code, str(exc))
        header = update.header
        if not verify_update_signature(header, self.contract.address):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"the update is not signed by its sender {header.sender}")
        with self._chain_lock:
            member = self.contract.member(header.sender)
            current = self.contract.current_round()
        if not member.active:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{header.sender} is not an active member of the swarm")
        if header.round != current:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"round {header.round} is not open; the chain is at round {current}")
        if not self.inbox.put(header.round, member.address, update):
            context.abort(grpc.StatusCode.ALREADY_EXISTS,
                          f"round {header.round}: {member.address} already pushed its update")
        log.info("node=%s round=%d received %d blocks from %s", self.node, header.round,
                 len(update.blocks), member.address)
        return apiary_pb2.PushReply(round=header.round, blocks_received=len(update.blocks))


def start_peer_server(service: PeerService, host: str, port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    apiary_pb2_grpc.add_PeerServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot listen for gRPC on {host}:{port}: is the port in use?")
    server.start()
    return server
