"""The federated-mode coordinator's gRPC service (`apiary coordinator`).

It holds only the public HE context: it can check and add ciphertexts but never read
them. The weighted sum is `apiary.core.coefficients.weighted_sum`, the same arithmetic the
contract performs in swarm mode.

It talks only to the swarm's members, authenticated as a member's peer server does: mutual
TLS against the certificates of the members active on chain, and update headers signed by
the member's Ethereum key (`apiary.coordinator.members`). Its own TLS key and certificate
live in its state directory beside its rounds (`apiary.coordinator.store`); it publishes
the certificate as ``coordinator.pem`` next to ``swarm.json`` for the nodes to pin.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from eth_account import Account
from web3 import Web3
from web3.exceptions import Web3Exception

from apiary.chain.binding import SwarmContract
from apiary.chain.trust import MemberTrust
from apiary.coordinator.members import Membership
from apiary.coordinator.metrics import CoordinatorMetrics
from apiary.coordinator.rounds import Rounds
from apiary.coordinator.store import RoundStore
from apiary.core.coefficients import block_count
from apiary.core.errors import ConfigError
from apiary.core.files import write_atomic
from apiary.core.he import HEContext
from apiary.core.settings import CoordinatorSettings
from apiary.core.tls import COORDINATOR_CERT, COORDINATOR_TLS_NAME, TlsFiles, create_self_signed
from apiary.core.transport import TransportError, aggregate_chunks, receive_update
from apiary.wire import apiary_pb2, apiary_pb2_grpc

log = logging.getLogger("apiary.coordinator")

DEADLINE_MARGIN_S = 0.1
"""A waiting `GetAggregate` gives up this much before the caller's deadline, so that the
caller gets the coordinator's explanation rather than a bare DEADLINE_EXCEEDED."""
SWARM_FILE, PUBLIC_CONTEXT_FILE = "swarm.json", "he-public.ctx"
"""What `apiary found` writes to the swarm directory (`apiary.node.founding` names them)."""
TLS_DIR = "tls"
CHAIN_TIMEOUT_S = 10.0


class CoordinatorConfigError(ConfigError, ValueError):
    """The coordinator cannot start with these settings."""


class CoordinatorService(apiary_pb2_grpc.CoordinatorServicer):
    """Collects members' encrypted updates per round and serves their weighted sum."""

    def __init__(
        self,
        context: HEContext,
        param_count: int,
        members: Membership,
        *,
        min_peers: int = 2,
        round_deadline_s: float = 60.0,
        store: RoundStore | None = None,
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
        self.members = members
        self.metrics = CoordinatorMetrics()
        try:
            self.rounds = Rounds(
                members.active,
                modulus=self.modulus,
                min_peers=min_peers,
                round_deadline_s=round_deadline_s,
                store=store,
                name_of=members.name,
                on_close=self.metrics.round_closed,
            )
        except ValueError as exc:
            raise CoordinatorConfigError(str(exc)) from None
        self.metrics.watch(lambda: len(self.rounds.members), lambda: self.rounds.current_round)

    def PushUpdate(
        self, request_iterator: Iterator[apiary_pb2.UpdateChunk], context: grpc.ServicerContext
    ) -> apiary_pb2.PushReply:
        seen: list[apiary_pb2.UpdateHeader] = []
        try:
            member = self.members.caller(context)

            def admit(header: apiary_pb2.UpdateHeader) -> None:
                seen.append(header)
                self.members.check_update(header, member)
                self.rounds.admit(header)

            update = receive_update(
                request_iterator,
                expected_blocks=self.block_count,
                modulus=self.modulus,
                on_header=admit,
            )
            self.rounds.accept(update)
        except TransportError as exc:
            self.metrics.refused_with(exc.code)
            log.warning("%s: refused %s: %s %s", *_describe(seen), exc.code.name, exc)
            context.abort(exc.code, exc.message)
        except OSError as exc:
            self.metrics.update_refused("storage")
            log.error("%s: cannot keep %s on disk: %s", *_describe(seen), exc)
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"the coordinator cannot write its state ({exc}); push again later")
        except grpc.RpcError:
            self.metrics.update_refused("broken_off")
            log.warning(
                "%s: %s broke off before it was complete; nothing recorded", *_describe(seen)
            )
            context.abort(grpc.StatusCode.CANCELLED, "the stream broke off")
        self.metrics.update_accepted(update.blocks)
        return apiary_pb2.PushReply(round=update.header.round, blocks_received=len(update.blocks))

    def GetAggregate(
        self, request: apiary_pb2.AggregateRequest, context: grpc.ServicerContext
    ) -> Iterator[apiary_pb2.AggregateChunk]:
        remaining = context.time_remaining()
        timeout = None if remaining is None else max(0.0, remaining - DEADLINE_MARGIN_S)
        who = "a caller without a member's certificate"
        try:
            member = self.members.caller(context)
            who = self.members.name(member.address)
            aggregate = self.rounds.wait_for(
                request.round, timeout=timeout, is_active=context.is_active
            )
        except TransportError as exc:
            log.warning("round %d: refused the aggregate to %s: %s %s", request.round, who,
                        exc.code.name, exc)
            context.abort(exc.code, exc.message)
        except OSError as exc:
            log.error("round %d: cannot keep the closed round on disk: %s", request.round, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"the coordinator cannot write its state ({exc}); ask again later")
        header = apiary_pb2.AggregateHeader(
            round=aggregate.round,
            weight_sum=aggregate.weight_sum,
            block_count=len(aggregate.blocks),
            block_digests=aggregate.digests,
            contributors=aggregate.contributors,
        )
        log.info("round %d: serving the aggregate to %s", aggregate.round, who)
        yield from aggregate_chunks(header, aggregate.blocks)

    def Status(
        self, request: apiary_pb2.CoordinatorStatusRequest, context: grpc.ServicerContext
    ) -> apiary_pb2.CoordinatorStatus:
        try:
            self.members.caller(context)
            current = self.rounds.current_round
        except TransportError as exc:
            context.abort(exc.code, exc.message)
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"the coordinator cannot write its state ({exc}); ask again later")
        return apiary_pb2.CoordinatorStatus(
            round=current,
            param_count=self.param_count,
            members=sorted(self.members.name(a) for a in self.rounds.members),
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
    """Serve ``service`` on ``host:port`` (0 picks a free port) over mutual TLS with the
    members' certificates; return the started server and the port it listens on."""
    # Every member may hold a push and a waiting GetAggregate at once.
    workers = max_workers or max(16, 4 * len(service.rounds.members))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    apiary_pb2_grpc.add_CoordinatorServicer_to_server(service, server)
    try:
        bound = server.add_secure_port(f"{host}:{port}",
                                       service.members.trust.server_credentials())
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise CoordinatorConfigError(f"cannot listen on {host}:{port}: is the port in use?")
    server.start()
    return server, bound


@dataclass(frozen=True)
class Swarm:
    """What the coordinator reads of the swarm directory `apiary found` wrote."""

    directory: Path
    contract: str
    rpc_url: str
    names: dict[str, str]
    """Member address → name, for the founders."""

    @classmethod
    def read(cls, directory: Path) -> Swarm:
        path = Path(directory) / SWARM_FILE
        try:
            record = json.loads(path.read_text())
            names = {m["address"]: m["name"] for m in record.get("members", [])}
            return cls(Path(directory), str(record["contract"]), str(record["rpc_url"]), names)
        except FileNotFoundError:
            raise CoordinatorConfigError(
                f"no {path}: found the swarm first (apiary found --swarm-dir "
                f"{directory}) or point --coordinator-swarm at the directory holding "
                f"{SWARM_FILE}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CoordinatorConfigError(f"{path} is not a usable swarm file: {exc}") from None


def coordinator_tls(state_dir: Path, host: str) -> TlsFiles:
    """The coordinator's own key and self-signed certificate, made in `state_dir` the first
    time. Nodes pin the certificate and check it under `COORDINATOR_TLS_NAME`, so it holds
    whatever address they dial it by."""
    directory = Path(state_dir) / TLS_DIR
    tls = TlsFiles.load(directory)
    if tls is None:
        hosts = [COORDINATOR_TLS_NAME] + ([host] if host not in ("0.0.0.0", "::", "") else [])
        tls = create_self_signed("apiary-coordinator", hosts)
        try:
            tls.save(directory)
        except OSError as exc:
            raise CoordinatorConfigError(f"cannot write the coordinator's TLS key to "
                                         f"{directory}: {exc}") from None
    return tls


def publish_certificate(tls: TlsFiles, swarm_dir: Path) -> Path:
    """Write the coordinator's certificate next to swarm.json, where nodes read it."""
    path = Path(swarm_dir) / COORDINATOR_CERT
    try:
        if not path.exists() or path.read_bytes() != tls.cert:
            write_atomic(path, tls.cert)
    except OSError as exc:
        raise CoordinatorConfigError(f"cannot publish the coordinator's certificate as {path} "
                                     f"(is the swarm directory writable?): {exc}") from None
    return path


def service_from_settings(settings: CoordinatorSettings) -> CoordinatorService:
    """Build the service from settings, with a clear error for each missing piece."""
    swarm = Swarm.read(settings.coordinator_swarm)
    context = _load_context(settings.coordinator_context
                            or swarm.directory / PUBLIC_CONTEXT_FILE)
    rpc_url = settings.rpc_url or swarm.rpc_url
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": CHAIN_TIMEOUT_S}))
    # Only read-only calls: the coordinator has no account of its own on chain.
    contract = SwarmContract.at(w3, swarm.contract, Account.create().key.to_0x_hex())
    tls = coordinator_tls(settings.coordinator_state, settings.coordinator_host)
    try:
        params = contract.he_parameters()
        trust = MemberTrust(contract, tls)
    except (OSError, Web3Exception, ValueError) as exc:
        raise CoordinatorConfigError(
            f"cannot read swarm {swarm.contract} on the chain at {rpc_url} ({exc}): is the "
            "chain up, and does it still hold the contract? (--rpc-url overrides swarm.json's)"
        ) from None
    if settings.param_count is not None and settings.param_count != params.param_count:
        raise CoordinatorConfigError(
            f"--param-count is {settings.param_count} but the swarm's contract expects "
            f"{params.param_count} parameters: drop the setting or fix it")
    if params.modulus != context.modulus:
        raise CoordinatorConfigError("the HE context's modulus differs from the contract's: "
                                     "is it this swarm's public context?")
    members = Membership(trust, swarm.names)
    if settings.min_peers > len(members.active()):
        raise CoordinatorConfigError(
            f"min_peers is {settings.min_peers} but the swarm has "
            f"{len(members.active())} active member(s)")
    store = RoundStore(settings.coordinator_state, contract.address)
    service = CoordinatorService(
        context, params.param_count, members, min_peers=settings.min_peers,
        round_deadline_s=settings.round_deadline_s, store=store,
    )
    publish_certificate(tls, swarm.directory)
    return service


def serve(settings: CoordinatorSettings) -> tuple[CoordinatorService, grpc.Server, int]:
    """Start the coordinator on ``coordinator_host:coordinator_port``; returns the service,
    the running server (stop it with ``server.stop(grace)``) and its port."""
    service = service_from_settings(settings)
    server, port = start_server(service, settings.coordinator_host, settings.coordinator_port)
    log.info(
        "coordinator on %s:%d (mutual TLS, members of swarm %s): %d members (%s), "
        "%d parameters in %d blocks, min_peers %d, round deadline %.1f s, round %d",
        settings.coordinator_host, port, service.members.contract_address,
        len(service.rounds.members),
        ", ".join(service.members.name(a) for a in service.rounds.members),
        service.param_count, service.block_count, service.rounds.min_peers,
        service.rounds.round_deadline_s, service.rounds.current_round,
    )
    return service, server, port


def _load_context(path: Path) -> HEContext:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CoordinatorConfigError(f"cannot read the HE context {path}: {exc}") from None
    try:
        return HEContext.from_bytes(data)
    except ValueError as exc:
        raise CoordinatorConfigError(f"{path} is not a usable HE context: {exc}") from None
