"""A running hospital node: wires trainer, keys, state, gRPC, the API and the round loop.

Every node makes its own identity (Ethereum account, X25519 pair, TLS key and certificate)
in its state directory when it first starts. A swarm node becomes active once it also
holds the swarm's HE key and the contract's address — from the founding ceremony, or from
joining through a sponsor — and only then starts its peer server and takes part in rounds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from web3 import Web3
from web3.exceptions import BadFunctionCallOutput, ContractLogicError, Web3Exception

from apiary.chain.binding import SwarmContract
from apiary.chain.probe import answers, wait_for_chain
from apiary.core.backoff import Backoff
from apiary.core.errors import ConfigError
from apiary.core.he import HEContext
from apiary.core.logs import in_round
from apiary.core.server_optim import ServerOptimizer, ServerState
from apiary.core.settings import NodeSettings
from apiary.core.tls import TlsFiles
from apiary.core.transport import TransportError
from apiary.node.api import create_app
from apiary.node.contribution import ContributionStore
from apiary.node.federated import CHANNEL_OPTIONS as FEDERATED_CHANNEL_OPTIONS
from apiary.node.federated import FederatedRound
from apiary.node.founding import (
    FoundingCeremony,
    check_training,
    read_swarm_file,
    stored_training,
)
from apiary.node.guard import ModelGuard
from apiary.node.identity import Identity, ensure_identity
from apiary.node.invites import InviteBook
from apiary.node.joining import Joiner, JoiningNode
from apiary.node.keys import KeyRing
from apiary.node.metrics import NodeMetrics
from apiary.node.onboarding import Sponsor
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.node.ports import AggregateSource, ReadinessFacts, RoundDriver, SwarmLink, Train
from apiary.node.rounds import NotAMember, RoundAbandoned, RoundFailed, RoundOutcome
from apiary.node.server_steps import load_server_state, rebuild, replay, save_server_state
from apiary.node.state import ORPHANED_FILE, NodeState, RoundRecord
from apiary.node.swarm import SwarmRound
from apiary.node.trainer import LocalTrainer
from apiary.node.trust import MemberTrust

log = logging.getLogger("apiary.node")

CHAIN_BEHIND_POLL_S = 2.0
"""How often a node whose saved round is ahead of the chain looks at the chain again."""

DEFAULT_RPC_URL = "http://127.0.0.1:8545"
PROBE_TIMEOUT_S = 2.0
"""How long a readiness probe waits for the chain or the coordinator."""


class NodeConfigError(ConfigError, ValueError):
    """The node's settings are incomplete or inconsistent."""


class ContractGone(ConfigError):
    """The chain answers but no longer holds the swarm's contract."""


@dataclass
class Outage:
    """Waits out a chain or coordinator that does not answer: one line when it goes away,
    one when it is back, growing waits in between."""

    node: str
    upstream: str
    backoff: Backoff = field(default_factory=Backoff)
    since: float | None = None

    def failed(self, exc: Exception) -> float:
        """Seconds to wait before trying again."""
        if self.since is None:
            self.since = time.monotonic()
            log.warning("node=%s cannot reach %s (%s); retrying with back-off", self.node,
                        self.upstream, _first_line(exc))
        return self.backoff.next()

    def recovered(self) -> None:
        if self.since is not None:
            log.info("node=%s reached %s again after %.0f s", self.node, self.upstream,
                     time.monotonic() - self.since)
        self.since = None
        self.backoff.reset()


@dataclass
class NodeRuntime:
    settings: NodeSettings
    trainer: LocalTrainer
    state: NodeState
    keys: KeyRing
    invites: InviteBook
    identity: Identity | None = None
    tls: TlsFiles | None = None
    driver: RoundDriver | None = None
    link: SwarmLink | None = None
    """Set once the node is an activated swarm member."""
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    phase: str = "starting"
    stop_event: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    joiner: Joiner | None = None
    server_state: ServerState | None = None
    """The server optimiser's state after the held model's round (stateful optimisers)."""
    metrics: NodeMetrics = field(init=False)
    _servers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = NodeMetrics(self.settings.name, history=self.state.snapshot,
                                   link=lambda: self.link)
        if self.tls is not None:
            self.metrics.certificate(self.tls.cert)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, settings: NodeSettings) -> NodeRuntime:
        torch.set_num_threads(1)
        trainer = LocalTrainer.from_settings(settings)
        keys = KeyRing(settings.state_dir, settings.he_context)
        identity, tls = ensure_identity(settings.state_dir, settings.name, settings.endpoint,
                                        settings.private_key)
        runtime = cls(settings, trainer, NodeState.open(settings.state_dir), keys,
                      InviteBook(settings.state_dir), identity=identity, tls=tls)
        if settings.mode == "federated":
            if not settings.coordinator:
                raise NodeConfigError("federated mode needs --coordinator host:port")
            if runtime.keys.has(0):
                runtime._enter_swarm()
            else:
                log.info("node=%s holds no HE key yet: waiting for the founding ceremony",
                         settings.name)
        elif settings.mode == "swarm":
            runtime.joiner = Joiner(runtime._joining_node())
            if runtime._membership_known():
                runtime.activate()
                runtime.ready.set()
            elif not settings.join:
                log.info("node=%s is not a swarm member yet: waiting for the founding "
                         "ceremony (apiary found) or POST /v1/join (or start it with "
                         "--join SPONSOR_URL --invite TOKEN)", settings.name)
        else:
            raise NodeConfigError(f"unknown mode {settings.mode!r}: use swarm or federated")
        return runtime

    def _founding_key(self) -> HEContext:
        he = self.keys.get(0)
        if he is None:
            raise NodeConfigError(f"the swarm's HE context file is missing: {self.keys.epoch0} "
                                  "(set --he-context / APIARY_HE_CONTEXT)")
        if not he.has_secret_key:
            raise NodeConfigError("the HE context has no secret key: a member needs the swarm key")
        return he

    def _membership_known(self) -> bool:
        stored = read_swarm_file(self.settings.state_dir) or {}
        has_contract = bool(self.settings.contract or stored.get("contract"))
        has_key = bool(self.settings.private_key or self.identity)
        return has_contract and has_key and self._holds_any_key()

    def _holds_any_key(self) -> bool:
        rotated = (self.settings.state_dir / "keys").glob("epoch-*.ctx")
        return self.keys.has(0) or any(True for _ in rotated)

    def _joining_node(self) -> JoiningNode:
        assert self.identity is not None and self.tls is not None
        return JoiningNode(
            name=self.settings.name, state_dir=self.settings.state_dir,
            endpoint=self.settings.endpoint, identity=self.identity, tls=self.tls,
            param_count=self.trainer.param_count, dataset_size=self.trainer.sample_count,
            training=self.trainer.swarm_config, keys=self.keys, connect=self._connect,
            activate=self._become_member, adopt=self._adopt_handover,
            model_after=self._model_after,
        )

    def _become_member(self) -> RoundDriver:
        if self.driver is None:  # a retried join activates once
            self.activate()
        assert self.driver is not None
        return self.driver

    def _adopt_handover(self, weights: np.ndarray, round_number: int, digest: str) -> None:
        self.state.save(weights, round_number, digest)
        self.weights = weights
        self.ready.set()

    def _enter_swarm(self) -> None:
        """Take part in rounds once founding gave this node its swarm and HE key."""
        if self.ready.is_set():
            return
        if self.settings.mode == "federated":
            self.driver = self._federated_round()
        else:
            self.activate()
        self.ready.set()

    def _federated_round(self) -> FederatedRound:
        """The coordinator's client: this node's keys sign and authenticate its updates."""
        settings = self.settings
        assert settings.coordinator is not None
        stored = read_swarm_file(settings.state_dir) or {}
        address = settings.contract or stored.get("contract")
        if not address or self.identity is None or self.tls is None:
            raise NodeConfigError("federated mode needs the swarm's contract address (from "
                                  "the founding ceremony, or --contract) and this node's identity")
        swarm = stored_training(settings.state_dir)
        if swarm is not None:
            self.trainer.swarm_config.check_matches(swarm, "the swarm file")
        return FederatedRound(
            settings.coordinator, self._founding_key(), settings.name,
            settings.round_timeout_s, private_key=self.identity.private_key,
            address=self.identity.address, contract_address=address, tls=self.tls,
            certificate=settings.coordinator_cert, saved_round=lambda: self.state.round,
            stop=self.stop_event, metrics=self.metrics,
        )

    def _connect(self, address: str, rpc_url: str, private_key: str) -> SwarmContract:
        """`connect`, with every transaction the contract sends counted in the metrics."""
        contract = connect(address, rpc_url, private_key)
        contract.on_mined = self.metrics.transaction_mined
        return contract

    def activate(self) -> None:
        """Connect to the contract, check it fits this node, start the peer server."""
        settings = self.settings
        stored = read_swarm_file(settings.state_dir) or {}
        address = settings.contract or stored.get("contract")
        rpc_url = settings.rpc_url or stored.get("rpc_url") or DEFAULT_RPC_URL
        private_key = settings.private_key or (self.identity.private_key if self.identity else None)
        if not address or not private_key:
            raise NodeConfigError("swarm mode needs a contract address and a private key")
        if not Web3.is_address(address):
            raise NodeConfigError(f"the contract address {address!r} is not an Ethereum "
                                  "address (0x and 40 hex digits): check --contract")
        wait_for_chain(rpc_url, settings.chain_wait_s,
                       say=lambda line: log.info("node=%s %s", settings.name, line))
        contract = self._connect(address, rpc_url, private_key)
        if not contract.w3.eth.get_code(contract.address):
            raise ContractGone(
                f"the chain at {rpc_url} holds no swarm contract at {contract.address} (a wrong "
                "--contract, or a devnet restarted without its state file?): check the address, "
                "restore the chain's state, or found the swarm anew with empty state directories")
        try:
            params = contract.he_parameters()
        except (ContractLogicError, BadFunctionCallOutput) as exc:
            raise NodeConfigError(f"the contract at {contract.address} is not a swarm contract "
                                  f"({_first_line(exc)}): check --contract") from None
        check_training(self.trainer.swarm_config, contract.training_digest(),
                       stored_training(settings.state_dir))
        if params.param_count != self.trainer.param_count:
            raise NodeConfigError(
                f"the contract expects {params.param_count} parameters but task "
                f"{self.trainer.task.name!r} on this data has {self.trainer.param_count}"
            )
        epoch, _ = contract.key_epoch_for(contract.current_round())
        known = [e for e in range(epoch + 1) if self.keys.has(e)]
        if not known:
            raise NodeConfigError(f"no HE key for the swarm (looked in {settings.state_dir})")
        he = self.keys.get(known[-1])
        assert he is not None
        if params.modulus != he.modulus:
            raise NodeConfigError("the HE context's modulus differs from the contract's")
        inbox = Inbox()
        x25519 = bytes.fromhex(self.identity.x25519_private) if self.identity else None
        trust = (MemberTrust(self._connect(address, rpc_url, private_key), self.tls)
                 if self.tls else None)
        self.driver = SwarmRound(
            contract, he, inbox, private_key, settings.name,
            settings.relay_takeover_s, settings.round_timeout_s, keys=self.keys,
            credentials=trust.channel_credentials if trust else None,
            x25519_private=x25519, store=ContributionStore(settings.state_dir, contract.address),
            metrics=self.metrics,
        )
        self.link = SwarmLink(contract, rpc_url, trust)
        peer_contract = self._connect(address, rpc_url, private_key)
        self._servers.append(start_peer_server(
            PeerService(peer_contract, inbox, settings.name, self.keys, x25519, trust,
                        metrics=self.metrics),
            settings.grpc_host, settings.grpc_port, trust,
        ))
        log.info("node=%s member %s of swarm %s (%s gRPC)", settings.name, contract.sender,
                 contract.address, "mutual-TLS" if self.tls else "plaintext")

    # ------------------------------------------------------------------ loop

    def load_or_initialise(self) -> None:
        saved = self.state.load_weights()
        if saved is not None and saved.shape == (self.trainer.param_count,):
            self.weights = saved
        else:
            self.weights = self.trainer.initial_weights()
            self.state.save(self.weights, 0, self.trainer.digest(self.weights))
        self._restore_server_state()
        log.info("node=%s resumes at round %d (weights %s)", self.settings.name,
                 self.state.round, self.state.weights_digest)

    def catch_up(self) -> None:
        """Load the last finalized aggregate if our weights are older."""
        assert self.driver is not None
        last = self.driver.last_finalized_round()
        if last > self.state.round:
            self.phase = "catching up"
            log.info("node=%s catching up from round %d to round %d", self.settings.name,
                     self.state.round, last)
            # plain averaging needs the last average only; a server step needs every one
            first = last if self._server.plain_average else self.state.round + 1
            for round_number in range(first, last + 1):
                outcome = self._past_outcome(self.driver, round_number)
                if outcome is not None:
                    outcome.committed = False
                    self._adopt(outcome, consecutive=False)

    # ------------------------------------------------------------------ server optimiser

    @property
    def _server(self) -> ServerOptimizer:
        return self.trainer.config.server_step()

    def _past_outcome(self, source: AggregateSource, round_number: int) -> RoundOutcome | None:
        """A finalized round's decrypted average; None for a round closed without one."""
        if self.link is not None and not self.link.contract.round_info(round_number).finalized:
            return None
        return source.fetch_aggregate(round_number, self.trainer.param_count)

    def _server_step(self, outcome: RoundOutcome) -> tuple[RoundOutcome, ServerState | None]:
        """The round's global model: the server step from the held model to its average."""
        server = self._server
        if server.plain_average:
            return outcome, None
        state = self.server_state or server.initial_state(self.weights.size)
        weights, state = server.step(self.weights, outcome.weights, state, outcome.round)
        return dataclasses.replace(outcome, weights=weights), state if server.stateful else None

    def _model_after(self, source: AggregateSource, round_number: int) -> np.ndarray:
        """The global model after ``round_number`` as the swarm's rounds make it (a joiner
        checks its hand-over against it); a stateful optimiser's state is kept with it."""
        server = self._server
        if server.plain_average:
            return source.fetch_aggregate(round_number, self.trainer.param_count).weights

        def average_of(number: int) -> np.ndarray | None:
            past = self._past_outcome(source, number)
            return None if past is None else past.weights

        weights, state = replay(server, self.trainer.initial_weights(), round_number, average_of)
        if server.stateful:
            save_server_state(self.settings.state_dir, server, state)
        return weights

    def _restore_server_state(self) -> None:
        """The saved state of the held model's round, or one rebuilt by replaying the
        rounds from the chain (or coordinator)."""
        server, size = self._server, self.trainer.param_count
        if not server.stateful:
            return
        saved = load_server_state(self.settings.state_dir, server, size)
        if saved is not None and saved.round == self.state.round:
            self.server_state = saved
            return
        if self.state.round == 0:
            self.server_state = server.initial_state(size)
            return
        assert self.driver is not None
        self.phase = "rebuilding the server optimiser's state"
        log.info("node=%s rebuilding the %s state from rounds 1..%d", self.settings.name,
                 server.name, self.state.round)
        driver = self.driver

        def average_of(number: int) -> np.ndarray | None:
            past = self._past_outcome(driver, number)
            return None if past is None else past.weights

        _, state = rebuild(server, self.trainer.initial_weights(), self.state.round,
                           self.state.weights_digest, average_of)
        save_server_state(self.settings.state_dir, server, state)
        self.server_state = state

    def run(self) -> None:
        if self.settings.join and not self.ready.is_set():
            assert self.joiner is not None
            if self.settings.invite is None:
                raise NodeConfigError("--join needs --invite TOKEN")
            self.phase = "joining"
            self.joiner.start(self.settings.join, self.settings.invite)
        elif self.joiner is not None and self.joiner.resumable and not self.ready.is_set():
            self.phase = "joining"
            self.joiner.resume()
        while not self.ready.wait(0.5):
            if self.stop_event.is_set():
                return
            if self.settings.join and self.joiner and self.joiner.state == "failed":
                raise NodeConfigError(f"joining the swarm failed: {self.joiner.error}")
        self.load_or_initialise()
        target = self.settings.rounds
        assert self.driver is not None
        outage = Outage(self.settings.name, self._upstream())
        behind_at: int | None = None
        while not self.stop_event.is_set():
            round_number = 0
            try:
                self.catch_up()
                if target and self.state.round >= target:
                    log.info("node=%s reached round %d; stopping", self.settings.name, target)
                    return
                round_number = self.driver.current_round()
                if round_number <= self.state.round:
                    finalized = self.driver.last_finalized_round()
                    # Open below the held round: lost. Open at it, unfinalized: the node may
                    # have adopted it a moment before the chain's finalization shows.
                    if round_number < self.state.round and finalized < self.state.round:
                        self._rewind_to_chain(finalized)
                        continue
                    if behind_at != round_number:
                        behind_at = round_number
                        self._chain_behind(round_number)
                    self.stop_event.wait(CHAIN_BEHIND_POLL_S)
                    continue
                self.phase = f"round {round_number}"
                started = time.monotonic()
                with in_round(round_number):
                    outcome = self.driver.run(round_number, self._train_for(round_number),
                                              self.trainer.param_count)
            except NotAMember as exc:
                log.error("node=%s is no longer a swarm member: %s", self.settings.name, exc)
                self.phase = "removed"
                return
            except RoundAbandoned as exc:
                self.metrics.round_abandoned()
                log.warning("node=%s round=%d abandoned; keeping the model: %s",
                            self.settings.name, round_number, exc)
                continue
            except RoundFailed as exc:
                self.metrics.round_failed()
                log.error("node=%s round=%d failed: %s", self.settings.name, round_number, exc)
                self.stop_event.wait(1.0)
                continue
            except (OSError, Web3Exception) as exc:
                self.phase = "waiting for the chain"
                self._check_contract_exists()
                self.stop_event.wait(outage.failed(exc))
                continue
            except Exception as exc:  # one round's failure must never stop the node
                self.metrics.round_failed()
                log.error("node=%s round=%d failed unexpectedly (%s: %s); retrying",
                          self.settings.name, round_number, type(exc).__name__, exc)
                log.debug("node=%s round=%d failure", self.settings.name, round_number,
                          exc_info=True)
                self.stop_event.wait(outage.backoff.next())
                continue
            outage.recovered()
            try:
                self._adopt(outcome)
            except Exception as exc:  # a model that cannot be kept must not stop the node
                self.metrics.round_failed()
                log.error("node=%s round=%d: its model could not be kept (%s: %s); holding "
                          "round %d's", self.settings.name, outcome.round, type(exc).__name__,
                          exc, self.state.round)
                self.stop_event.wait(outage.backoff.next())
                continue
            self.metrics.round_timed(outcome.seconds, time.monotonic() - started)
            self._rest_between_rounds()
        self.phase = "stopped"

    def _chain_behind(self, round_number: int) -> None:
        """The chain's open round is one this node holds, though the chain finalized it: a
        view that lags (an RPC node behind the others); the node waits for the next round."""
        saved = self.state.round
        self.phase = f"waiting for round {saved + 1}: the chain is open at round {round_number}"
        log.warning("node=%s round=%d: the chain is open at round %d although this node holds "
                    "round %d; waiting for round %d", self.settings.name, round_number,
                    round_number, saved, saved + 1)

    def _rewind_to_chain(self, finalized: int) -> None:
        """The chain lost rounds this node holds (a devnet restored from an older state
        write): the chain is the swarm's ledger, so the node forgets those rounds (kept in
        orphaned.json) and takes part again from round `finalized` + 1 with the model it
        holds. Every member does the same, so the swarm goes on instead of waiting forever
        for rounds that every member sits out."""
        saved = self.state.round
        orphaned = self.state.rewind(
            finalized, f"the chain's last finalized round is {finalized}, this node held {saved}")
        log.warning("node=%s round=%d: the chain lost rounds %s that this node holds (its last "
                    "finalized round is %d: a devnet restored from an older state?); they are "
                    "kept in %s and the node takes part again from round %d with the model it "
                    "holds", self.settings.name, finalized + 1,
                    ", ".join(map(str, orphaned)), finalized, ORPHANED_FILE, finalized + 1)

    def _rest_between_rounds(self) -> None:
        """Rounds on a schedule: wait round_interval_s after a round this node took part in.
        Every member sees a round close within a second or two, so all of them enrol again
        together, inside the swarm's enrolment window when the interval is shorter."""
        interval, target = self.settings.round_interval_s, self.settings.rounds
        if interval > 0 and not (target and self.state.round >= target):
            self.phase = f"resting {interval:g} s before the next round"
            self.stop_event.wait(interval)

    def _upstream(self) -> str:
        if self.link is not None:
            return f"the chain at {self.link.rpc_url}"
        return f"the coordinator at {self.settings.coordinator}"

    def _check_contract_exists(self) -> None:
        """Stop, saying why, when the chain answers but no longer holds the swarm's contract
        (a devnet restarted without its state file): nothing here can bring it back."""
        if self.link is None:
            return
        contract = self.link.contract
        if not answers(self.link.rpc_url):
            return  # the chain is still away (or silent): wait for it
        try:
            code = contract.w3.eth.get_code(contract.address)
        except (OSError, Web3Exception):
            return  # the chain is still away: wait for it
        if not code:
            self.phase = "stopped: the swarm's contract is gone"
            raise ContractGone(
                f"the chain at {self.link.rpc_url} no longer holds the swarm's contract "
                f"{contract.address} (a devnet restarted without its state file?): restore the "
                "chain's state, or found the swarm anew with empty state directories")

    def _train_for(self, round_number: int) -> Train:
        def train() -> tuple[np.ndarray, float, int]:
            self.phase = f"round {round_number}: training"
            weights, loss = self.trainer.train(self.weights, round_number)
            self.phase = f"round {round_number}: exchanging"
            return weights, loss, self.trainer.sample_count

        return train

    def _guard(self) -> ModelGuard:
        s = self.settings
        return ModelGuard(s.guard_max_weight, s.guard_change_ratio, s.guard_change_factor)

    def _adopt(self, outcome: RoundOutcome, *, consecutive: bool = True) -> None:
        """Take the round's global model, unless it fails the model check or this node
        holds that round already (the chain's view lags, see `_chain_behind`)."""
        if outcome.round <= self.state.round:
            log.warning("node=%s round=%d: not adopted, this node holds round %d already "
                        "(a round run twice?); keeping its model",
                        self.settings.name, outcome.round, self.state.round)
            return
        outcome, server_state = self._server_step(outcome)
        guard = self._guard()
        reason = guard.verdict(outcome.weights, self.weights, self.state.recent_changes(),
                               consecutive=consecutive)
        if reason is not None:
            self._reject(outcome, reason)
            return
        change = guard.change(outcome.weights, self.weights)
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
            change_norm=change,
            aggregate_transactions=outcome.aggregate_transactions,
        )
        if server_state is not None:  # first: a state ahead of the model is rebuilt at start
            save_server_state(self.settings.state_dir, self._server, server_state)
            self.server_state = server_state
        self.state.save(self.weights, outcome.round, digest, record)
        if consecutive:  # a round it took part in, not one it caught up on
            self.metrics.round_completed()
        self.phase = f"round {outcome.round} done"
        log.info("node=%s round=%d done: accuracy %.3f%s, %d contributors, weights %s",
                 self.settings.name, outcome.round, own.accuracy,
                 f", held-out {held.accuracy:.3f}" if held else "", len(outcome.contributors),
                 digest[:12])

    # ------------------------------------------------------------------ services

    def create_api(self) -> FastAPI:
        settings = self.settings
        founding = self._founding()
        sponsor = Sponsor(
            node=settings.name, funding_wei=int(settings.join_funding_eth * 10**18),
            invites=self.invites, keys=self.keys, current_model=self.state.current,
            link=lambda: self.link, training=self.trainer.swarm_config,
            swarm_contract=founding.contract,
        )
        return create_app(settings, node=self, history=self.state, invites=self.invites,
                          sponsor=sponsor, founding=founding, joiner=self.joiner,
                          node_metrics=self.metrics)

    def _founding(self) -> FoundingCeremony:
        if self.identity is None or self.tls is None:
            self.identity, self.tls = ensure_identity(
                self.settings.state_dir, self.settings.name, self.settings.endpoint,
                self.settings.private_key)
        return FoundingCeremony(
            name=self.settings.name, state_dir=self.settings.state_dir,
            endpoint=self.settings.endpoint, identity=self.identity, tls=self.tls,
            keys=self.keys, param_count=self.trainer.param_count,
            dataset_size=self.trainer.sample_count, training=self.trainer.swarm_config,
            connect=self._connect,
            enter=self._enter_swarm,
            entered=self.ready.is_set, rpc_url=self.settings.rpc_url,
        )

    def start_api(self) -> uvicorn.Server:
        config = uvicorn.Config(self.create_api(), host=self.settings.api_host,
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

    # ------------------------------------------------------------------ what the API reads

    @property
    def param_count(self) -> int:
        return self.trainer.param_count

    @property
    def sample_count(self) -> int:
        return self.trainer.sample_count

    def readiness(self) -> ReadinessFacts:
        """Membership, whether the chain (or coordinator) answers, whether the HE key of the
        next round is here; each probe waits at most PROBE_TIMEOUT_S."""
        activated = self.ready.is_set() and self.phase != "removed"
        if self.settings.mode == "federated":
            coordinator = self.settings.coordinator
            driver = self.driver
            reachable = (coordinator is not None and isinstance(driver, FederatedRound)
                         and _answers_coordinator(driver))
            return ReadinessFacts(member=activated and self.driver is not None,
                                  upstream="coordinator", upstream_reachable=reachable,
                                  he_key=self.keys.has(0))
        link = self.link
        stored = read_swarm_file(self.settings.state_dir) or {}
        rpc_url = (link.rpc_url if link else
                   self.settings.rpc_url or stored.get("rpc_url") or DEFAULT_RPC_URL)
        reachable = _answers_rpc(rpc_url)
        he_key = self._holds_any_key()
        if link is not None and reachable:
            try:
                epoch, _ = link.contract.key_epoch_for(link.contract.current_round())
                he_key = self.keys.has(epoch)
            except (OSError, Web3Exception):
                reachable = False
        return ReadinessFacts(member=activated and link is not None, upstream="chain",
                              upstream_reachable=reachable, he_key=he_key)


    def _reject(self, outcome: RoundOutcome, reason: str) -> None:
        """Record the round as rejected and keep the model held."""
        digest = self.state.weights_digest or self.trainer.digest(self.weights)
        record = RoundRecord(
            round=outcome.round, contributors=outcome.contributors,
            weight_sum=outcome.weight_sum, accuracy=None, auc=None, loss=None,
            train_loss=outcome.train_loss, heldout_accuracy=None, heldout_auc=None,
            weights_digest=digest, seconds={k: round(v, 4) for k, v in outcome.seconds.items()},
            aggregate_digests=outcome.aggregate_digests, committed=outcome.committed,
            relay=outcome.relay, status="rejected", reason=reason,
            aggregate_transactions=outcome.aggregate_transactions,
        )
        self.state.save(self.weights, outcome.round, digest, record)
        self.metrics.round_rejected()
        self.phase = f"round {outcome.round} rejected"
        log.error("node=%s round=%d aggregate rejected, keeping the model held (%s): %s",
                  self.settings.name, outcome.round, digest[:12], reason)


def connect(address: str, rpc_url: str, private_key: str) -> SwarmContract:
    """The swarm contract at `address`, sending as `private_key`."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 120}))
    return SwarmContract.at(w3, address, private_key)


def _answers_rpc(rpc_url: str) -> bool:
    return answers(rpc_url, PROBE_TIMEOUT_S)


def _answers_coordinator(driver: FederatedRound) -> bool:
    """The coordinator completes a mutual-TLS handshake with this node."""
    try:
        credentials = driver.credentials()
    except TransportError:
        return False
    with grpc.secure_channel(driver.coordinator, credentials,
                             options=list(FEDERATED_CHANNEL_OPTIONS)) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=PROBE_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            return False
    return True


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _finite(value: float) -> float | None:
    return None if value != value else float(value)
