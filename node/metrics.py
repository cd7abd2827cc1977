"""Prometheus metrics of one node, recorded where things happen.

One :class:`NodeMetrics` per node, in a registry of its own (several nodes may share a
process, as in the tests). The round loop, the swarm and federated rounds and the peer
server record events on it as they happen (counters and histograms); what is state rather
than an event is read when ``/metrics`` is scraped: the last round's accuracy from the
node's saved history, and the chain's view of this node (balance, members, key epoch,
rounds) through a connection of its own with a short timeout. A chain that is down or
silent never fails or stalls a scrape: its gauges are left out and ``apiary_chain_up`` is 0.

Every sample carries the node's name as the ``node`` label.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cryptography import x509
from eth_account import Account
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from web3 import Web3

from apiary.chain.binding import SwarmContract, TxResult

PushRefusal = Literal[
    "no_certificate", "unknown_member", "bad_signature", "malformed", "too_many_streams",
    "deadline", "cancelled", "wrong_round", "not_participant", "duplicate",
]
PUSH_REFUSALS: tuple[PushRefusal, ...] = (
    "no_certificate", "unknown_member", "bad_signature", "malformed", "too_many_streams",
    "deadline", "cancelled", "wrong_round", "not_participant", "duplicate",
)
"""Why the peer server refused or dropped a push: no TLS client certificate; a certificate
or sender that is no active member's; a header not signed by its sender; a stream that
breaks the wire protocol; more open pushes than a member may hold; past its deadline;
cancelled by the sender; a round or attempt that is not open; a sender that is not a
participant of the attempt; an update already held."""

PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUND_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
CHAIN_TIMEOUT_S = 2.0
"""How long a scrape waits for the chain's gauges (and each chain request may take)."""


class ChainLink(Protocol):
    """A member's link to its swarm (``apiary.node.ports.SwarmLink``)."""

    @property
    def contract(self) -> SwarmContract: ...
    @property
    def rpc_url(self) -> str: ...


@dataclass(frozen=True)
class ChainFacts:
    """What the chain says of this node and its swarm, read at one scrape."""

    balance_wei: int
    current_round: int
    last_finalized_round: int
    active_members: int
    key_epoch: int


class NodeMetrics:
    """The metrics of one node. `history` returns the node's saved history (as
    ``NodeState.snapshot``); `link` the node's link to its swarm, None until it is a member."""

    def __init__(self, node: str, *,
                 history: Callable[[], Mapping[str, Any]] | None = None,
                 link: Callable[[], ChainLink | None] | None = None,
                 chain_timeout_s: float = CHAIN_TIMEOUT_S) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        registry, node_label = self.registry, ["node"]

        def counter(name: str, documentation: str) -> Any:
            return Counter(name, documentation, node_label, registry=registry).labels(node)

        self._completed = counter("apiary_rounds_completed",
                                  "rounds this node took part in and whose aggregate it adopted")
        self._failed = counter("apiary_rounds_failed",
                               "rounds that failed at this node (an error, or no aggregate "
                               "within the round timeout); the node kept its model")
        self._abandoned = counter("apiary_rounds_abandoned",
                                  "rounds that closed without an aggregate (too few "
                                  "participants were left)")
        self._rejected = counter("apiary_rounds_rejected",
                                 "aggregates the model check rejected (the model was kept)")
        self._takeovers = counter("apiary_relay_takeovers",
                                  "rounds in which this node took over as a backup relay")
        self._sent = counter("apiary_bytes_sent",
                             "ciphertext bytes this node delivered to peers (pushes accepted, "
                             "fetches served, pushes to the coordinator)")
        self._received = counter("apiary_bytes_received",
                                 "ciphertext bytes this node accepted from peers (pushes, "
                                 "fetches, aggregates from the coordinator)")
        self._transactions = counter("apiary_transactions",
                                     "transactions this node sent that were mined")
        self._gas = counter("apiary_gas_used", "gas used by the transactions this node sent, "
                                               "from their receipts (reverted ones included)")
        refused = Counter("apiary_push_refused", "pushes of peers the peer server refused or "
                          "dropped, by reason", ["node", "reason"], registry=registry)
        self._refused = {reason: refused.labels(node, reason) for reason in PUSH_REFUSALS}
        self._phases = Histogram("apiary_phase_seconds", "seconds each phase of a round took "
                                 "at this node", ["node", "phase"], buckets=PHASE_BUCKETS,
                                 registry=registry)
        self._round_seconds = Histogram("apiary_round_seconds", "seconds a round took at this "
                                        "node, from its start to its aggregate decrypted",
                                        node_label, buckets=ROUND_BUCKETS,
                                        registry=registry).labels(node)
        self._cert_expiry = Gauge("apiary_cert_expiry_timestamp_seconds",
                                  "when this node's TLS certificate expires (unix time)",
                                  node_label, registry=registry).labels(node)
        registry.register(_StateCollector(node, history or (lambda: {})))
        registry.register(ChainCollector(node, link or (lambda: None), chain_timeout_s))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    # ------------------------------------------------------------------ rounds

    def round_completed(self) -> None:
        self._completed.inc()

    def round_failed(self) -> None:
        self._failed.inc()

    def round_abandoned(self) -> None:
        self._abandoned.inc()

    def round_rejected(self) -> None:
        self._rejected.inc()

    def round_timed(self, phases: Mapping[str, float], seconds: float) -> None:
        """A round that ran to its aggregate: each phase's seconds, and the whole round's."""
        for phase, phase_seconds in phases.items():
            self._phases.labels(self.node, phase).observe(phase_seconds)
        self._round_seconds.observe(seconds)

    def relay_takeover(self) -> None:
        self._takeovers.inc()

    # ------------------------------------------------------------------ exchange

    def push_refused(self, reason: PushRefusal) -> None:
        self._refused[reason].inc()

    def sent(self, blocks: list[bytes]) -> None:
        self._sent.inc(sum(len(b) for b in blocks))

    def received(self, blocks: list[bytes]) -> None:
        self._received.inc(sum(len(b) for b in blocks))

    def transaction_mined(self, tx: TxResult) -> None:
        """Hook for ``SwarmContract.on_mined``: every receipt of this node's account."""
        self._transactions.inc()
        self._gas.inc(tx.gas_used)

    # ------------------------------------------------------------------ identity

    def certificate(self, pem: bytes) -> None:
        """This node's TLS certificate (its expiry is what is exported)."""
        cert = x509.load_pem_x509_certificate(pem)
        self._cert_expiry.set(cert.not_valid_after_utc.timestamp())

    def render(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """The model this node holds, from its saved history: cheap, and right after a restart."""

    def __init__(self, node: str, history: Callable[[], Mapping[str, Any]]) -> None:
        self.node = node
        self.history = history

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snapshot = self.history()
        if "round" not in snapshot:
            return
        yield self._gauge("apiary_round", "last round whose global model this node holds",
                          snapshot["round"])
        adopted = [r for r in snapshot.get("history", [])
                   if r.get("status", "adopted") == "adopted"]
        if not adopted:
            return
        last = adopted[-1]
        if last.get("accuracy") is not None:
            yield self._gauge("apiary_accuracy",
                              "accuracy of the global model on this node's test split",
                              last["accuracy"])
        if last.get("heldout_accuracy") is not None:
            yield self._gauge("apiary_heldout_accuracy",
                              "accuracy of the global model on the held-out set",
                              last["heldout_accuracy"])

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=["node"])
        family.add_metric([self.node], float(value))
        return family


class ChainCollector(Collector):
    """The chain's gauges of a member node, read at scrape time with a deadline.

    One read runs at a time, in a thread of its own: a scrape that finds one running (a
    silent chain) waits for it up to the deadline instead of starting another, so a chain
    that hangs holds at most one thread and each scrape at most `timeout_s`. Nothing at all
    is exported while the node is not a member (it has no chain link yet).
    """

    def __init__(self, node: str, link: Callable[[], ChainLink | None],
                 timeout_s: float = CHAIN_TIMEOUT_S) -> None:
        self.node = node
        self.link = link
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._reading: Future[ChainFacts] | None = None
        self._probe: tuple[tuple[str, str], SwarmContract] | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        link = self.link()
        if link is None:
            return
        facts = self.read(link)
        up = GaugeMetricFamily("apiary_chain_up", "whether the chain answered this scrape "
                               f"within {self.timeout_s:g} s (without it the chain's gauges "
                               "are left out)", labels=["node"])
        up.add_metric([self.node], 0.0 if facts is None else 1.0)
        yield up
        if facts is None:
            return
        for name, documentation, value in (
            ("apiary_eth_balance_wei", "ETH balance of this node's account, in wei",
             facts.balance_wei),
            ("apiary_current_round", "the round open on chain", facts.current_round),
            ("apiary_last_finalized_round", "the last round finalized on chain",
             facts.last_finalized_round),
            ("apiary_active_members", "active members of the swarm on chain",
             facts.active_members),
            ("apiary_key_epoch", "the HE key epoch of the round open on chain",
             facts.key_epoch),
        ):
            family = GaugeMetricFamily(name, documentation, labels=["node"])
            family.add_metric([self.node], float(value))
            yield family

    def read(self, link: ChainLink) -> ChainFacts | None:
        """The chain's facts, or None when it did not answer within the deadline."""
        with self._lock:
            reading = self._reading
            if reading is None or reading.done():
                reading = Future()
                reading.set_running_or_notify_cancel()
                self._reading = reading
                thread = threading.Thread(target=self._read_into, args=(link, reading),
                                          name=f"metrics-chain-{self.node}", daemon=True)
                thread.start()
        try:
            return reading.result(timeout=self.timeout_s)
        except FutureTimeout:
            return None
        except Exception:  # a chain that is down, refuses or answers nonsense: not up
            return None

    def _read_into(self, link: ChainLink, reading: Future[ChainFacts]) -> None:
        try:
            contract = self._probe_for(link)
            current = contract.current_round()
            epoch, _ = contract.key_epoch_for(current)
            reading.set_result(ChainFacts(
                balance_wei=int(contract.w3.eth.get_balance(link.contract.sender)),
                current_round=current,
                last_finalized_round=contract.last_finalized_round(),
                active_members=contract.active_member_count(),
                key_epoch=epoch,
            ))
        except BaseException as exc:  # handed to the scrape, which reports the chain down
            reading.set_exception(exc)

    def _probe_for(self, link: ChainLink) -> SwarmContract:
        """A read-only connection to the link's contract whose requests time out quickly
        (the node's own waits minutes for a transaction's receipt)."""
        key = (link.rpc_url, link.contract.address)
        if self._probe is None or self._probe[0] != key:
            w3 = Web3(Web3.HTTPProvider(link.rpc_url,
                                        request_kwargs={"timeout": self.timeout_s}))
            reader = Account.create().key.to_0x_hex()  # views need no account of ours
            self._probe = (key, SwarmContract(w3, link.contract.address, reader,
                                              link.contract.abi))
        return self._probe[1]
