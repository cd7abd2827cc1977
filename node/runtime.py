"""A running hospital node: wires trainer, keys, state, gRPC, the API and the round loop."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np
import torch
import uvicorn
from web3 import Web3

from apiary.he import HEContext
from apiary.settings import NodeSettings
from contracts.binding import SwarmContract
from node.federated import FederatedRound
from node.founding import IDENTITY_FILE, SECRET_CONTEXT_FILE
from node.peer import Inbox, PeerService, start_peer_server
from node.rounds import RoundFailed, RoundOutcome
from node.state import NodeState, RoundRecord
from node.trainer import LocalTrainer

log = logging.getLogger("apiary.node")


class RoundDriver(Protocol):
    def current_round(self) -> int: ...
    def last_finalized_round(self) -> int: ...
    def run(self, round_number: int, train: Any, param_count: int) -> RoundOutcome: ...
    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome: ...


class NodeConfigError(ValueError):
    """The node's settings are incomplete or inconsistent."""


@dataclass
class NodeRuntime:
    settings: NodeSettings
    trainer: LocalTrainer
    state: NodeState
    driver: RoundDriver
    contract: SwarmContract | None = None
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    phase: str = "starting"
    stop_event: threading.Event = field(default_factory=threading.Event)
    _servers: list[Any] = field(default_factory=list)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, settings: NodeSettings) -> NodeRuntime:
        torch.set_num_threads(1)
        if settings.he_context is None:
            settings = settings.model_copy(
                update={"he_context": settings.state_dir / SECRET_CONTEXT_FILE}
            )
        if settings.he_context is None or not settings.he_context.exists():
            raise NodeConfigError(f"the swarm's HE context file is missing: {settings.he_context}"
                                  " (set --he-context / APIARY_HE_CONTEXT)")
        he = HEContext.from_bytes(settings.he_context.read_bytes())
        if not he.has_secret_key:
            raise NodeConfigError("the HE context has no secret key: a member needs the swarm key")
        trainer = LocalTrainer.from_files(
            settings.name, settings.data, settings.heldout, settings.model, settings.seed,
            settings.epochs, settings.lr, settings.batch_size,
        )
        state = NodeState.open(settings.state_dir)
        if settings.mode == "swarm" and settings.private_key is None:
            settings = settings.model_copy(update={"private_key": _stored_key(settings)})
        if settings.mode == "swarm":
            if not settings.contract or not settings.private_key:
                raise NodeConfigError("swarm mode needs --contract and --private-key")
            w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 120}))
            contract = SwarmContract.at(w3, settings.contract, settings.private_key)
            params = contract.he_parameters()
            if params.param_count != trainer.param_count:
                raise NodeConfigError(
                    f"the contract expects {params.param_count} parameters but model "
                    f"{settings.model!r} on this data has {trainer.param_count}"
                )
            if params.modulus != he.modulus:
                raise NodeConfigError("the HE context's modulus differs from the contract's")
            inbox = Inbox()
            driver: RoundDriver = _swarm_driver(settings, contract, he, inbox)
            runtime = cls(settings, trainer, state, driver, contract)
            peer_contract = SwarmContract.at(
                Web3(Web3.HTTPProvider(settings.rpc_url)), settings.contract, settings.private_key
            )
            runtime._servers.append(start_peer_server(
                PeerService(peer_contract, inbox, settings.name), settings.grpc_host,
                settings.grpc_port,
            ))
            return runtime
        if settings.mode == "federated":
            if not settings.coordinator:
                raise NodeConfigError("federated mode needs --coordinator host:port")
            driver = FederatedRound(settings.coordinator, he, settings.name,
                                    settings.round_timeout_s)
            return cls(settings, trainer, state, driver)
        raise NodeConfigError(f"unknown mode {settings.mode!r}: use swarm or federated")

    # ------------------------------------------------------------------ loop

    def load_or_initialise(self) -> None:
        saved = self.state.load_weights()
        if saved is not None and saved.shape == (self.trainer.param_count,):
            self.weights = saved
        else:
            self.weights = self.trainer.initial_weights()
            self.state.save(self.weights, 0, self.trainer.digest(self.weights))
        log.info("node=%s resumes at round %d (weights %s)", self.settings.name,
                 self.state.round, self.state.weights_digest)

    def catch_up(self) -> None:
        """Load the last finalized aggregate if our weights are older."""
        last = self.driver.last_finalized_round()
        if last > self.state.round:
            self.phase = "catching up"
            log.info("node=%s catching up from round %d to round %d", self.settings.name,
                     self.state.round, last)
            outcome = self.driver.fetch_aggregate(last, self.trainer.param_count)
            outcome.committed = False
            self._adopt(outcome)

    def run(self) -> None:
        self.load_or_initialise()
        target = self.settings.rounds
        while not self.stop_event.is_set():
            self.catch_up()
            if target and self.state.round >= target:
                log.info("node=%s reached round %d; stopping", self.settings.name, target)
                return
            round_number = self.driver.current_round()
            self.phase = f"round {round_number}"
            try:
                outcome = self.driver.run(round_number, self._train_for(round_number),
                                          self.trainer.param_count)
            except RoundFailed as exc:
                log.error("node=%s round=%d failed: %s", self.settings.name, round_number, exc)
                time.sleep(1.0)
                continue
            self._adopt(outcome)
        self.phase = "stopped"

    def _train_for(self, round_number: int) -> Callable[[], tuple[np.ndarray, float, int]]:
        def train() -> tuple[np.ndarray, float, int]:
            self.phase = f"round {round_number}: training"
            weights, loss = self.trainer.train(self.weights, round_number)
            self.phase = f"round {round_number}: exchanging"
            return weights, loss, self.trainer.sample_count

        return train

    def _adopt(self, outcome: RoundOutcome) -> None:
        self.weights = outcome.weights
        own, held = self.trainer.evaluate(self.weights)
        digest = self.trainer.digest(self.weights)
        record = RoundRecord(
            round=outcome.round,
            contributors=outcome.contributors,
            weight_sum=outcome.weight_sum,
            accuracy=own.accuracy,
            auc=_finite(own.auc),
            loss=own.loss,
            train_loss=outcome.train_loss,
            heldout_accuracy=held.accuracy if held else None,
            heldout_auc=_finite(held.auc) if held else None,
            weights_digest=digest,
            seconds={k: round(v, 4) for k, v in outcome.seconds.items()},
            aggregate_digests=outcome.aggregate_digests,
            committed=outcome.committed,
            relay=outcome.relay,
        )
        self.state.save(self.weights, outcome.round, digest, record)
        self.phase = f"round {outcome.round} done"
        log.info("node=%s round=%d done: accuracy %.3f%s, %d contributors, weights %s",
                 self.settings.name, outcome.round, own.accuracy,
                 f", held-out {held.accuracy:.3f}" if held else "", len(outcome.contributors),
                 digest[:12])

    # ------------------------------------------------------------------ services

    def start_api(self) -> uvicorn.Server:
        from node.api import create_app

        config = uvicorn.Config(create_app(self), host=self.settings.api_host,
                                port=self.settings.api_port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="admin-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            if not thread.is_alive():
                raise NodeConfigError(f"the admin API could not start on port "
                                      f"{self.settings.api_port}")
            time.sleep(0.05)
        self._servers.append(server)
        return server

    def shutdown(self) -> None:
        self.stop_event.set()
        for server in self._servers:
            if isinstance(server, grpc.Server):
                server.stop(grace=1.0)
            else:
                server.should_exit = True

    def status(self) -> dict[str, Any]:
        snapshot = self.state.snapshot()
        last = snapshot["history"][-1] if snapshot["history"] else None
        members: list[dict[str, Any]] = []
        if self.contract is not None:
            members = [{"address": m.address, "endpoint": m.endpoint}
                       for m in self.contract.members()]
        return {
            "node": self.settings.name,
            "mode": self.settings.mode,
            "address": self.contract.sender if self.contract else None,
            "phase": self.phase,
            "round": snapshot["round"],
            "params": self.trainer.param_count,
            "samples": self.trainer.sample_count,
            "members": members,
            "last_metrics": last,
        }


def _stored_key(settings: NodeSettings) -> str | None:
    """The Ethereum key from the state directory's identity file, if there is one."""
    path = settings.state_dir / IDENTITY_FILE
    if not path.exists():
        return None
    key: str = json.loads(path.read_text())["private_key"]
    return key


def _finite(value: float) -> float | None:
    return None if value != value else float(value)


def _swarm_driver(settings: NodeSettings, contract: SwarmContract, he: HEContext,
                  inbox: Inbox) -> RoundDriver:
    from node.swarm import SwarmRound

    if settings.private_key is None:
        raise NodeConfigError("swarm mode needs --private-key")
    return SwarmRound(contract, he, inbox, settings.private_key, settings.name,
                      settings.round_deadline_s, settings.relay_takeover_s,
                      settings.round_timeout_s)
