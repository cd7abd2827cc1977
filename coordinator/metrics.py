"""Prometheus metrics of the coordinator, recorded where things happen, and the HTTP
endpoint that serves them (``coordinator_metrics_port``).

The registry is the coordinator's own (tests run several in one process). A refused push
is counted by its gRPC status, named as a small fixed set of reasons.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from apiary.core.errors import ConfigError

UpdateRefusal = Literal[
    "not_permitted", "malformed", "too_large", "wrong_round", "duplicate", "unavailable",
    "storage", "broken_off", "other",
]
UPDATE_REFUSALS: tuple[UpdateRefusal, ...] = (
    "not_permitted", "malformed", "too_large", "wrong_round", "duplicate", "unavailable",
    "storage", "broken_off", "other",
)
"""Why a push was refused: a caller or header that is no active member's or not signed by
it; a stream that breaks the wire protocol; more data than announced; a round that is not
open; an update already held; the chain unreadable or the coordinator stopping; its state
not writable; a stream that broke off; anything else."""
_BY_CODE: dict[grpc.StatusCode, UpdateRefusal] = {
    grpc.StatusCode.PERMISSION_DENIED: "not_permitted",
    grpc.StatusCode.UNAUTHENTICATED: "not_permitted",
    grpc.StatusCode.INVALID_ARGUMENT: "malformed",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "too_large",
    grpc.StatusCode.FAILED_PRECONDITION: "wrong_round",
    grpc.StatusCode.ALREADY_EXISTS: "duplicate",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
}
ROUND_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


class MetricsPortInUse(ConfigError):
    """The metrics endpoint cannot listen where it is told to."""


class CoordinatorMetrics:
    """The coordinator's counters, histograms and gauges, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._received = Counter("apiary_coordinator_updates_received",
                                 "members' updates the coordinator accepted",
                                 registry=registry)
        refused = Counter("apiary_coordinator_updates_refused",
                          "pushes the coordinator refused, by reason", ["reason"],
                          registry=registry)
        self._refused = {reason: refused.labels(reason) for reason in UPDATE_REFUSALS}
        self._bytes = Counter("apiary_coordinator_bytes_received",
                              "ciphertext bytes of the updates the coordinator accepted",
                              registry=registry)
        self._closed = Counter("apiary_coordinator_rounds_closed",
                               "rounds the coordinator closed with an aggregate",
                               registry=registry)
        self._round_seconds = Histogram("apiary_coordinator_round_seconds",
                                        "seconds from a round's first update to its close",
                                        buckets=ROUND_BUCKETS, registry=registry)
        self._members = Gauge("apiary_coordinator_members",
                              "active members of the swarm, as the chain lists them",
                              registry=registry)
        self._round = Gauge("apiary_coordinator_round", "the round open at the coordinator",
                            registry=registry)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def watch(self, members: Callable[[], int], current_round: Callable[[], int]) -> None:
        """Read the member count (cached trust, no chain wait) and the round at each scrape."""
        self._members.set_function(members)
        self._round.set_function(current_round)

    def update_accepted(self, blocks: tuple[bytes, ...] | list[bytes]) -> None:
        self._received.inc()
        self._bytes.inc(sum(len(b) for b in blocks))

    def update_refused(self, reason: UpdateRefusal) -> None:
        self._refused[reason].inc()

    def refused_with(self, code: grpc.StatusCode) -> None:
        self.update_refused(_BY_CODE.get(code, "other"))

    def round_closed(self, seconds: float | None) -> None:
        """A round closed; `seconds` from its first update, None when unknown."""
        self._closed.inc()
        if seconds is not None:
            self._round_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class MetricsServer:
    """The running endpoint; `stop()` closes it."""

    server: WSGIServer
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(metrics: CoordinatorMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (0 picks a free port)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise MetricsPortInUse(
            f"cannot serve the coordinator's metrics on {host}:{port} ({exc.strerror or exc}): "
            "choose another --coordinator-metrics-port, or 0 to serve none") from None
    return MetricsServer(server, thread, int(server.server_address[1]))
