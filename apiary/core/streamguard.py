"""Bounds on what a gRPC server gives one stream and one peer, so slow or endless streams
cannot hold its threads or its memory.

* gRPC itself refuses what it can: `server_options` (largest message one data chunk plus
  its framing, concurrent streams per connection) and `MAX_CONCURRENT_RPCS` (further calls
  are refused RESOURCE_EXHAUSTED at once instead of queueing, with their buffers).
* :class:`StreamDeadline` gives each stream a deadline from its own header: a stream that
  has not completed by then is cancelled with DEADLINE_EXCEEDED, which frees its thread
  and drops what it sent. gRPC has no server-side deadline of its own (only the client's),
  so this cancels the call through the server's call object with that status.
* :class:`PeerSlots` lets each peer hold at most a few streams at a time; more are refused
  RESOURCE_EXHAUSTED before any data is read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from apiary.core.transport import CHUNK_BYTES, MAX_MESSAGE_BYTES, TransportError

MAX_CONCURRENT_RPCS = 48
"""Calls a server runs at once (each on its own worker thread); more are refused."""
MAX_STREAMS_PER_CONNECTION = 8
FRAMING_BYTES = 64 << 10
"""Room for a chunk's protobuf framing, or a header's digests, above `CHUNK_BYTES`."""


def server_options(max_receive_bytes: int = CHUNK_BYTES + FRAMING_BYTES
                   ) -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)]


@dataclass(frozen=True)
class StreamLimits:
    """How long a stream may take and how many one peer may hold."""

    header_s: float = 10.0
    """Until the header has arrived (the block count, hence the deadline, is unknown)."""
    base_s: float = 30.0
    per_block_s: float = 2.0
    """A block is 128 KiB: 2 s each allows a link of 64 KiB/s."""
    per_peer: int = 2

    def deadline_s(self, block_count: int) -> float:
        return self.base_s + self.per_block_s * max(block_count, 0)


class StreamDeadline:
    """Cancels a call with DEADLINE_EXCEEDED once it runs past its deadline (use with
    ``with``; leaving the block stops the clock)."""

    def __init__(self, context: grpc.ServicerContext, seconds: float, what: str) -> None:
        self._context = context
        self._what = what
        self._started = time.monotonic()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self.expired = False
        self._arm(seconds)

    def extend_to(self, seconds: float) -> None:
        """Move the deadline to `seconds` after the stream started."""
        self._arm(seconds)

    def _arm(self, seconds: float) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            remaining = max(self._started + seconds - time.monotonic(), 0.0)
            self._timer = threading.Timer(remaining, self._expire, args=(seconds,))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, seconds: float) -> None:
        self.expired = True
        cancel_with_status(self._context, grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"{self._what} did not complete within its {seconds:.0f} s deadline")

    def __enter__(self) -> StreamDeadline:
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()


def cancel_with_status(context: grpc.ServicerContext, code: grpc.StatusCode,
                       details: str) -> None:
    """End the call now with `code`, from any thread; the handler's next read fails.
    The status needs the server's call object (grpcio's own); without it the call is
    cancelled plainly (the client sees CANCELLED)."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        if call is not None:
            call.cancel(code.value[0], details)
            return
    except (TypeError, AttributeError):
        pass
    context.cancel()


class StreamsExhausted(TransportError):
    """A peer holds all the streams it may open at a time (RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


class PeerSlots:
    """At most `limit` streams at a time per peer (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, peer: str, what: str) -> None:
        """Take a slot for `peer`; StreamsExhausted when it holds all."""
        key = peer.lower()
        with self._lock:
            if self._held.get(key, 0) >= self.limit:
                raise StreamsExhausted(
                    f"{peer} already has {self.limit} {what} streams open here; wait for "
                    "them to finish")
            self._held[key] = self._held.get(key, 0) + 1

    def release(self, peer: str) -> None:
        key = peer.lower()
        with self._lock:
            left = self._held.get(key, 0) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)

    @contextmanager
    def slot(self, peer: str, what: str) -> Iterator[None]:
        self.acquire(peer, what)
        try:
            yield
        finally:
            self.release(peer)

    def held(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)
