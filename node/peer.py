"""The node's gRPC side: the relay inbox that members stream their ciphertext blocks into."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

from apiary.chain.binding import SwarmContract
from apiary.core.keywrap import UnwrapError, WrappedSecret, unwrap, wrap_context
from apiary.core.tls import TlsFiles
from apiary.core.transport import (
    ReceivedUpdate,
    TransportError,
    receive_update,
    verify_update_signature,
)
from apiary.node.keys import KeyMismatch, KeyRing
from apiary.wire import apiary_pb2, apiary_pb2_grpc

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
    """Accepts a member's blocks for the open round, and rotated keys; anything else is
    refused and changes nothing."""

    def __init__(self, contract: SwarmContract, inbox: Inbox, node: str,
                 keys: KeyRing | None = None, x25519_private: bytes | None = None) -> None:
        self.contract = contract
        self.inbox = inbox
        self.node = node
        self.keys = keys
        self.x25519_private = x25519_private
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


    def DeliverKey(
        self, request: apiary_pb2.KeyDelivery, context: grpc.ServicerContext
    ) -> apiary_pb2.KeyReceipt:
        if self.keys is None or self.x25519_private is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node holds no X25519 identity")
        epoch = int(request.epoch)
        with self._chain_lock:
            count = self.contract.key_epoch_count()
            if not 0 < epoch < count:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"key epoch {epoch} is not on chain (epochs 1..{count - 1})")
            _, digest = self.contract.key_epoch(epoch)
        wrapped = WrappedSecret(request.ephemeral_public, request.nonce, request.ciphertext)
        aad = wrap_context(self.contract.address, self.contract.sender, epoch)
        try:
            secret = unwrap(wrapped, self.x25519_private, aad)
            self.keys.put(epoch, secret, digest)
        except (UnwrapError, KeyMismatch, ValueError) as exc:
            log.warning("node=%s refused key epoch %d: %s", self.node, epoch, exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"key epoch {epoch}: {exc}")
        log.info("node=%s stored HE key epoch %d", self.node, epoch)
        return apiary_pb2.KeyReceipt(epoch=epoch)


def start_peer_server(service: PeerService, host: str, port: int,
                      tls: TlsFiles | None = None) -> grpc.Server:
    """gRPC server for the peer service; with `tls`, clients need a swarm certificate."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    apiary_pb2_grpc.add_PeerServicer_to_server(service, server)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, tls.server_credentials())
    if bound == 0:
        raise RuntimeError(f"cannot listen for gRPC on {host}:{port}: is the port in use?")
    server.start()
    return server
