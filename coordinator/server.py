"""The federated-mode coordinator's gRPC service (`apiary coordinator`).

It holds only the public HE context: it can check and add ciphertexts but never read
them. The weighted sum is `apiary.core.coefficients.weighted_sum`, the same arithmetic the
contract performs in swarm mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc

from apiary.coordinator.rounds import Rounds
from apiary.core.coefficients import block_count
from apiary.core.errors import ConfigError
from apiary.core.he import HEContext
from apiary.core.settings import CoordinatorSettings
from apiary.core.transport import TransportError, aggregate_chunks, receive_update
from apiary.wire import apiary_pb2, apiary_pb2_grpc

log = logging.getLogger("apiary.coordinator")

DEADLINE_MARGIN_S = 0.1
"""A waiting `GetAggregate` gives up this much before the caller's deadline, so that the
caller gets the coordinator's explanation rather than a bare DEADLINE_EXCEEDED."""


class CoordinatorConfigError(ConfigError, ValueError):
    """The coordinator cannot start with these settings."""


class CoordinatorService(apiary_pb2_grpc.CoordinatorServicer):
    """Collects members' encrypted updates per round and serves their weighted sum."""

    def __init__(
        self,
        context: HEContext,
        param_count: int,
        members: Sequence[str],
        *,
        min_peers: int = 2,
        round_deadline_s: float = 60.0,
    ) -> None:
        if context.has_secret_key:
            raise CoordinatorConfigError(
                "the coordinator must hold only the public HE context, and this one contains "
                "the secret key; give it the output of HEContext.public_bytes() instead"
            )
        if param_count < 1:
            raise CoordinatorConfigError(f"param_count is {param_count}; it must be at least 1")
        self.param_count = param_count
        self.block_count = block_count(param_count)
        self.modulus = context.modulus
        try:
            self.rounds = Rounds(
                members,
                modulus=self.modulus,
                min_peers=min_peers,
                round_deadline_s=round_deadline_s,
            )
        except ValueError as exc:
            raise CoordinatorConfigError(str(exc)) from None

    def PushUpdate(
        self, request_iterator: Iterator[apiary_pb2.UpdateChunk], context: grpc.ServicerContext
    ) -> apiary_pb2.PushReply:
        seen: list[apiary_pb2.UpdateHeader] = []

        def admit(header: apiary_pb2.UpdateHeader) -> None:
            seen.append(header)
            self.rounds.admit(header)

        try:
            update = receive_update(
                request_iterator,
                expected_blocks=self.block_count,
                modulus=self.modulus,
                on_header=admit,
            )
            self.rounds.accept(update)
        except TransportError as exc:
            log.warning("%s: refused %s: %s %s", *_describe(seen), exc.code.name, exc)
            context.abort(exc.code, exc.message)
        except grpc.RpcError:
            log.warning(
                "%s: %s broke off before it was complete; nothing recorded", *_describe(seen)
            )
            context.abort(grpc.StatusCode.CANCELLED, "the stream broke off")
        return apiary_pb2.PushReply(round=update.header.round, blocks_received=len(update.blocks))

    def GetAggregate(
        self, request: apiary_pb2.AggregateRequest, context: grpc.ServicerContext
    ) -> Iterator[apiary_pb2.AggregateChunk]:
        remaining = context.time_remaining()
        timeout = None if remaining is None else max(0.0, remaining - DEADLINE_MARGIN_S)
        try:
            self.rounds.check_member(request.sender)
            aggregate = self.rounds.wait_for(
                request.round, timeout=timeout, is_active=context.is_active
            )
        except TransportError as exc:
            log.warning(
                "round %d: refused the aggregate to %r: %s %s",
                request.round,
                request.sender,
                exc.code.name,
                exc,
            )
            context.abort(exc.code, exc.message)
        header = apiary_pb2.AggregateHeader(
            round=aggregate.round,
            weight_sum=aggregate.weight_sum,
            block_count=len(aggregate.blocks),
            block_digests=aggregate.digests,
            contributors=aggregate.contributors,
        )
        log.info("round %d: serving the aggregate to %s", aggregate.round, request.sender)
        yield from aggregate_chunks(header, aggregate.blocks)

    def Status(
        self, request: apiary_pb2.CoordinatorStatusRequest, context: grpc.ServicerContext
    ) -> apiary_pb2.CoordinatorStatus:
        current = self.rounds.current_round
        return apiary_pb2.CoordinatorStatus(
            round=current,
            param_count=self.param_count,
            members=self.rounds.members,
            last_aggregated_round=current - 1,
        )


def _describe(seen: list[apiary_pb2.UpdateHeader]) -> tuple[str, str]:
    """(round, whose update) for a log line; the sender is quoted as it is untrusted."""
    if not seen:
        return "a push", "an update from an unidentified sender"
    return f"round {seen[0].round}", f"the update of {seen[0].sender!r}"


def start_server(
    service: CoordinatorService, host: str, port: int, *, max_workers: int | None = None
) -> tuple[grpc.Server, int]:
    """Serve ``service`` on ``host:port`` (0 picks a free port); return the started
    server and the port it listens on."""
    # Every member may hold a push and a waiting GetAggregate at once.
    workers = max_workers or max(16, 4 * len(service.rounds.members))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    apiary_pb2_grpc.add_CoordinatorServicer_to_server(service, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise CoordinatorConfigError(f"cannot listen on {host}:{port}: is the port in use?")
    server.start()
    return server, bound


def service_from_settings(settings: CoordinatorSettings) -> CoordinatorService:
    """Build the service from settings, with a clear error for each missing piece."""
    if settings.coordinator_context is None:
        raise CoordinatorConfigError(
            "no HE context: pass --coordinator-context or set APIARY_COORDINATOR_CONTEXT "
            "to the file holding the swarm's public context"
        )
    if settings.param_count is None:
        raise CoordinatorConfigError(
            "the parameter count is not set: pass --param-count or set APIARY_PARAM_COUNT"
        )
    if not settings.member_names:
        raise CoordinatorConfigError(
            "no members: pass --coordinator-members or set APIARY_COORDINATOR_MEMBERS "
            "(comma-separated names)"
        )
    context = _load_context(settings.coordinator_context)
    return CoordinatorService(
        context,
        settings.param_count,
        settings.member_names,
        min_peers=settings.min_peers,
        round_deadline_s=settings.round_deadline_s,
    )


def serve(settings: CoordinatorSettings) -> grpc.Server:
    """Start the coordinator on ``coordinator_host:coordinator_port``; returns the
    running server (stop it with ``server.stop(grace)``)."""
    service = service_from_settings(settings)
    server, port = start_server(service, settings.coordinator_host, settings.coordinator_port)
    log.info(
        "coordinator on %s:%d: %d members (%s), %d parameters in %d blocks, min_peers %d, "
        "round deadline %.1f s",
        settings.coordinator_host,
        port,
        len(service.rounds.members),
        ", ".join(service.rounds.members),
        service.param_count,
        service.block_count,
        service.rounds.min_peers,
        service.rounds.round_deadline_s,
    )
    return server


def _load_context(path: Path) -> HEContext:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CoordinatorConfigError(f"cannot read the HE context {path}: {exc}") from None
    try:
        return HEContext.from_bytes(data)
    except ValueError as exc:
        raise CoordinatorConfigError(f"{path} is not a usable HE context: {exc}") from None
