"""The node's gRPC side: the relay inbox that members stream their ciphertext blocks into.

With a :class:`~apiary.node.trust.MemberTrust` the server is mutual TLS and accepts only the
certificates of the members active on chain; each call that serves or accepts data checks
again that the caller's certificate is the one registered for an active member.

Streams are bounded (:mod:`apiary.core.streamguard`): each has a deadline from its declared
block count, a member holds at most `StreamLimits.per_peer` pushes at a time, messages are
at most one data chunk, and calls beyond the server's capacity are refused, not queued. A
stream cut short is dropped whole; nothing of it is kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import NoReturn

import grpc
from eth_utils import to_checksum_address

from apiary.chain.binding import SwarmContract
from apiary.core.keywrap import UnwrapError, WrappedSecret, unwrap, wrap_context
from apiary.core.streamguard import (
    MAX_CONCURRENT_RPCS,
    PeerSlots,
    StreamDeadline,
    StreamLimits,
    StreamsExhausted,
    server_options,
)
from apiary.core.transport import (
    ReceivedUpdate,
    TransportError,
    receive_update,
    update_chunks,
    verify_update_signature,
)
from apiary.node.keys import KeyMismatch, KeyRing
from apiary.node.metrics import NodeMetrics, PushRefusal
from apiary.node.trust import MemberTrust
from apiary.wire import apiary_pb2, apiary_pb2_grpc

log = logging.getLogger("apiary.node.peer")


MAX_COPIES = 3
"""Distinct updates kept per sender and attempt: a sender that re-sends (after a restart,
say) never hides the copy that matches its commitment, and cannot fill the inbox."""


class Inbox:
    """Updates received for each (round, attempt), by sender address (thread-safe)."""

    def __init__(self) -> None:
        self._updates: dict[tuple[int, int], dict[str, list[ReceivedUpdate]]] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Event()

    def put(self, round_number: int, attempt: int, sender: str, update: ReceivedUpdate) -> bool:
        """Keep `update` unless the same copy, or `MAX_COPIES` others, are held already."""
        digests = list(update.header.block_digests)
        with self._lock:
            held = self._updates.setdefault((round_number, attempt), {}).setdefault(sender, [])
            if any(list(u.header.block_digests) == digests for u in held):
                return False
            if len(held) >= MAX_COPIES:
                return False
            held.append(update)
        self._arrived.set()
        return True

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early when an update arrives (True then):
        the round loop polls the chain, and the last update a relay waits for is a reason to
        look again at once."""
        arrived = self._arrived.wait(timeout)
        self._arrived.clear()
        return arrived

    def copies(self, round_number: int, attempt: int) -> dict[str, list[ReceivedUpdate]]:
        """Every copy held for (round, attempt), by sender."""
        with self._lock:
            return {s: list(u) for s, u in self._updates.get((round_number, attempt), {}).items()}

    def matching(self, round_number: int, attempt: int, sender: str,
                 digests: list[bytes]) -> ReceivedUpdate | None:
        """The sender's update whose block digests are `digests` (its commitment)."""
        with self._lock:
            for update in self._updates.get((round_number, attempt), {}).get(sender, []):
                if list(update.header.block_digests) == digests:
                    return update
        return None

    def prune(self, below_round: int) -> None:
        with self._lock:
            for key in [k for k in self._updates if k[0] < below_round]:
                del self._updates[key]


class PeerService(apiary_pb2_grpc.PeerServicer):
    """Accepts a member's blocks for the open round, and rotated keys; anything else is
    refused and changes nothing."""

    def __init__(self, contract: SwarmContract, inbox: Inbox, node: str,
                 keys: KeyRing | None = None, x25519_private: bytes | None = None,
                 trust: MemberTrust | None = None, limits: StreamLimits | None = None,
                 metrics: NodeMetrics | None = None) -> None:
        self.contract = contract
        self.inbox = inbox
        self.node = node
        self.keys = keys
        self.x25519_private = x25519_private
        self.trust = trust
        """None on a plaintext server (benchmarks and tests): callers are not identified."""
        params = contract.he_parameters()
        self.block_count = params.block_count
        self.modulus = params.modulus
        self._chain_lock = threading.Lock()
        self.limits = limits or StreamLimits()
        self.pushes = PeerSlots(self.limits.per_peer)
        """Open pushes per member (by its certificate's address; by the header's sender on
        a plaintext server, which identifies nobody)."""
        self.metrics = metrics or NodeMetrics(node)

    def _abort(self, context: grpc.ServicerContext, code: grpc.StatusCode, details: str,
               refused: PushRefusal | None = None) -> NoReturn:
        """End the call with `code`; a refused push is counted by its reason."""
        if refused is not None:
            self.metrics.push_refused(refused)
        context.abort(code, details)

    def _check_caller(self, context: grpc.ServicerContext, *, push: bool = False) -> str | None:
        """The caller's member address; aborts unless the TLS client certificate is an
        active member's, on chain now. None on a plaintext server."""
        if self.trust is None:
            return None
        presented = context.auth_context().get("x509_pem_cert") or []
        if not presented:
            self._abort(context, grpc.StatusCode.UNAUTHENTICATED, "no TLS client certificate",
                        "no_certificate" if push else None)
        member = self.trust.member_for(presented[0])
        if member is None:
            log.warning("node=%s refused a call from a certificate no active member holds",
                        self.node)
            self._abort(context, grpc.StatusCode.PERMISSION_DENIED,
                        "the caller's TLS certificate is not registered for an active member",
                        "unknown_member" if push else None)
        return member

    def _receive(self, request_iterator: Iterator[apiary_pb2.UpdateChunk],
                 context: grpc.ServicerContext, caller: str | None) -> ReceivedUpdate | None:
        """The whole update, within its deadline and the caller's stream slots; None when
        the deadline (or the client) cancelled it."""
        peers: list[str] = []
        with StreamDeadline(context, self.limits.header_s, "the push") as deadline:

            def on_header(header: apiary_pb2.UpdateHeader) -> None:
                if caller is None:
                    self.pushes.acquire(header.sender, "push")
                    peers.append(header.sender)
                deadline.extend_to(self.limits.deadline_s(header.block_count))

            try:
                if caller is not None:
                    self.pushes.acquire(caller, "push")
                    peers.append(caller)
                return receive_update(request_iterator, expected_blocks=self.block_count,
                                      modulus=self.modulus, on_header=on_header)
            except grpc.RpcError:
                self.metrics.push_refused("deadline" if deadline.expired else "cancelled")
                log.warning("node=%s dropped a push from %s: %s", self.node,
                            caller or "a plaintext peer",
                            "past its deadline" if deadline.expired else "cancelled",
                            extra={"peer_address": caller})
                return None
            finally:
                for peer in peers:
                    self.pushes.release(peer)

    def PushUpdate(
        self, request_iterator: Iterator[apiary_pb2.UpdateChunk], context: grpc.ServicerContext
    ) -> apiary_pb2.PushReply:
        caller = self._check_caller(context, push=True)
        try:
            update = self._receive(request_iterator, context, caller)
        except TransportError as exc:
            log.warning("node=%s refused a push from %s: %s", self.node,
                        caller or "a plaintext peer", exc, extra={"peer_address": caller})
            self._abort(context, exc.code, str(exc), "too_many_streams"
                        if isinstance(exc, StreamsExhausted) else "malformed")
        if update is None:
            return apiary_pb2.PushReply()  # the call is over: nobody reads this
        header = update.header
        if not verify_update_signature(header, self.contract.address):
            self._abort(context, grpc.StatusCode.UNAUTHENTICATED,
                        f"the update is not signed by its sender {header.sender}",
                        "bad_signature")
        with self._chain_lock:
            member = self.contract.member(header.sender)
            current = self.contract.current_round()
            info = self.contract.round_info(current)
            participants = self.contract.participants(current) if info.attempt else []
        if not member.active:
            self._abort(context, grpc.StatusCode.PERMISSION_DENIED,
                        f"{header.sender} is not an active member of the swarm",
                        "unknown_member")
        if header.round != current:
            self._abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                        f"round {header.round} is not open; the chain is at round {current}",
                        "wrong_round")
        if header.attempt != info.attempt:
            self._abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                        f"round {header.round}: attempt {header.attempt} is not the open "
                        f"attempt ({info.attempt or 'participants not fixed yet'})",
                        "wrong_round")
        if member.address not in participants:
            self._abort(context, grpc.StatusCode.PERMISSION_DENIED,
                        f"round {header.round}: {member.address} is not a participant of "
                        f"attempt {header.attempt}", "not_participant")
        if not self.inbox.put(header.round, header.attempt, member.address, update):
            self._abort(context, grpc.StatusCode.ALREADY_EXISTS,
                        f"round {header.round} attempt {header.attempt}: {member.address} "
                        "already pushed this update", "duplicate")
        self.metrics.received(update.blocks)
        log.info("node=%s round=%d attempt=%d received %d blocks from %s", self.node,
                 header.round, header.attempt, len(update.blocks), member.address,
                 extra={"peer": member.name, "peer_address": member.address})
        return apiary_pb2.PushReply(round=header.round, blocks_received=len(update.blocks))


    def FetchUpdate(
        self, request: apiary_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[apiary_pb2.UpdateChunk]:
        """The copy of a participant's update that matches its commitment on chain."""
        self._check_caller(context)
        try:
            sender = to_checksum_address(request.sender)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{request.sender!r} is not an Ethereum address")
        with self._chain_lock:
            _, attempt, digests = self.contract.commitment(request.round, sender)
        if attempt != request.attempt or not digests:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"round {request.round}: {sender} has no commitment for attempt "
                          f"{request.attempt}")
        update = self.inbox.matching(request.round, request.attempt, sender, digests)
        if update is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"round {request.round} attempt {request.attempt}: this node holds "
                          f"no update of {sender} that matches its commitment")
        with StreamDeadline(context, self.limits.deadline_s(len(update.blocks)), "the fetch"):
            yield from update_chunks(update.header, update.blocks)
        self.metrics.sent(update.blocks)

    def DeliverKey(
        self, request: apiary_pb2.KeyDelivery, context: grpc.ServicerContext
    ) -> apiary_pb2.KeyReceipt:
        self._check_caller(context)
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
                      trust: MemberTrust | None = None) -> grpc.Server:
    """gRPC server for the peer service; with `trust`, mutual TLS that accepts only the
    certificates of active members."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_CONCURRENT_RPCS),
                         options=server_options(), maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
    apiary_pb2_grpc.add_PeerServicer_to_server(service, server)
    address = f"{host}:{port}"
    if trust is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, trust.server_credentials())
    if bound == 0:
        raise RuntimeError(f"cannot listen for gRPC on {host}:{port}: is the port in use?")
    server.start()
    return server
