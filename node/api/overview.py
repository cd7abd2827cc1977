"""``GET /v1/overview``: what the dashboard shows, in one read-only answer open to anyone
who can reach the admin API.

It is open like ``/metrics`` because it holds nothing secret: no admin token, no invite,
no key, no weights. What it holds — hospital names, accounts, endpoints, rounds, their
metrics, digests and transaction hashes, the chain's public facts and this node's balance —
every member of the swarm reads on chain or from its own round history anyway. The chain's
URL is shown as scheme, host and port only (a hosted endpoint's path may carry an API key).

The chain is read through a connection of the overview's own with a short timeout, so a
chain that does not answer makes the page say so within seconds instead of hanging it.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from cryptography import x509
from eth_account import Account
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from web3 import Web3
from web3.exceptions import Web3Exception

from apiary.chain.binding import SwarmContract
from apiary.core.settings import NodeSettings
from apiary.core.tls import NODE_CERT, certificate_name, fingerprint
from apiary.node.api.deps import HistoryDep, NodeDep
from apiary.node.identity import TLS_DIR
from apiary.node.ports import NodeView, SwarmLink

ROUNDS_SHOWN = 60
"""The most recent rounds the overview lists (and the chart draws)."""
COST_ROUNDS = 5
"""The recent rounds whose gas the per-round cost is averaged over."""
MAX_SCAN_BLOCKS = 500
"""A round spanning more blocks than this is left out of the cost estimate."""
CHAIN_TIMEOUT_S = 2.0
CHAIN_ERRORS = (OSError, Web3Exception, ValueError, KeyError)

router = APIRouter(tags=["node"])


class MemberView(BaseModel):
    address: str
    name: str | None = Field(description="the hospital name in its TLS certificate on chain")
    endpoint: str = Field(description="its gRPC endpoint, host:port")
    dataset_size: int
    last_round: int | None = Field(
        description="the last round it contributed to, as this node's history records it")
    this_node: bool


class PendingView(BaseModel):
    """A candidate proposed under the majority rule, awaiting approvals."""

    address: str
    name: str | None
    endpoint: str
    dataset_size: int
    proposer: str
    approvals: int
    needed: int = Field(description="approvals that admit it: more than half the members")


class RoundView(BaseModel):
    """One finished round as this node recorded it, with what the chain adds."""

    round: int
    status: str
    reason: str | None
    contributors: list[str]
    weight_sum: int
    accuracy: float | None = Field(description="on this node's own test split")
    heldout_accuracy: float | None = Field(description="on the held-out set")
    loss: float | None
    train_loss: float | None
    seconds: dict[str, float] = Field(description="seconds of each phase at this node")
    weights_digest: str
    aggregate_digests: list[str]
    aggregate_transactions: list[str]
    relays: list[str] = Field(description="the accounts that sent the aggregate on chain")
    relayed_here: bool
    committed: bool = Field(description="false for a round this node caught up on")
    gas_used: int | None = Field(
        description="gas of this node's own transactions in the round (None: not measured)")


class LiveRound(BaseModel):
    """The round open on chain now."""

    round: int
    stage: str = Field(description="enrolling, committing, aggregating or finalizing")
    attempt: int
    enrolled: list[str]
    participants: int
    committed: int
    aggregated_blocks: int
    block_count: int
    relay_order: list[str] = Field(description="relay first, then its backups")


class ChainView(BaseModel):
    reachable: bool
    endpoint: str = Field(description="scheme://host:port of the chain endpoint")
    problem: str | None = None
    chain_id: int | None = None
    block_number: int | None = None
    contract: str
    membership_rule: str | None = None
    admin: str | None = None
    current_round: int | None = None
    last_finalized_round: int | None = None
    key_epoch: int | None = Field(None, description="the HE key epoch of the current round")
    balance_eth: float | None = Field(None, description="this node's account balance")
    gas_price_gwei: float | None = None
    gas_per_round: int | None = Field(
        None, description="mean gas of this node's transactions per recent round")
    cost_per_round_eth: float | None = Field(None, description="gas_per_round × gas price")
    rounds_affordable: int | None = Field(
        None, description="about how many more rounds the balance pays for")
    cost_basis: str = ""


class CertificateView(BaseModel):
    subject: str | None
    not_after: str = Field(description="expiry, ISO 8601 UTC")
    days_left: float
    fingerprint: str = Field(description="SHA-256 of the certificate, hex")


class Overview(BaseModel):
    node: str
    mode: str
    address: str | None = Field(description="this node's account, once a swarm member")
    phase: str
    round: int = Field(description="the round of the global model this node holds")
    params: int
    samples: int
    generated_at: float = Field(description="Unix time of this answer")
    members: list[MemberView]
    pending: list[PendingView]
    rounds: list[RoundView] = Field(description="the most recent rounds, oldest first")
    live: LiveRound | None
    chain: ChainView | None = Field(description="None while the node is not a swarm member")
    certificate: CertificateView | None


@dataclass(frozen=True)
class _RoundOnChain:
    """What the chain says of a finalized round; it never changes, so it is kept."""

    final_block: int
    relays: list[str]
    gas_used: int | None


class OverviewSource:
    """Assembles the overview from the node, its history and the chain; keeps what the
    chain says of finalized rounds, so each poll reads only what may have changed."""

    def __init__(self, settings: NodeSettings,
                 reader: Callable[[SwarmLink], SwarmContract] | None = None) -> None:
        self.settings = settings
        self._read_through = reader or self._connect
        """The contract the overview reads the chain through, given the node's link."""
        self._lock = threading.Lock()
        self._connection: tuple[tuple[str, str], SwarmContract] | None = None
        self._rounds: dict[int, _RoundOnChain] = {}
        self._names: dict[bytes, str | None] = {}

    def overview(self, node: NodeView, history: dict[str, Any]) -> Overview:
        with self._lock:
            return self._overview(node, history)

    def _overview(self, node: NodeView, snapshot: dict[str, Any]) -> Overview:
        records: list[dict[str, Any]] = snapshot["history"][-ROUNDS_SHOWN:]
        link = node.link
        me = link.contract.sender if link else None
        members: list[MemberView] = []
        pending: list[PendingView] = []
        live: LiveRound | None = None
        chain: ChainView | None = None
        if link is not None:
            chain, members, pending, live = self._from_chain(link, records)
        return Overview(
            node=self.settings.name, mode=self.settings.mode, address=me, phase=node.phase,
            round=snapshot["round"], params=node.param_count, samples=node.sample_count,
            generated_at=time.time(), members=members, pending=pending,
            rounds=[self._round_view(r, me) for r in records], live=live, chain=chain,
            certificate=self._certificate(),
        )

    # ------------------------------------------------------------------ chain

    def _connect(self, link: SwarmLink) -> SwarmContract:
        """A view-only connection to the swarm's contract with a short timeout."""
        key = (link.rpc_url, link.contract.address)
        if self._connection is None or self._connection[0] != key:
            w3 = Web3(Web3.HTTPProvider(link.rpc_url,
                                        request_kwargs={"timeout": CHAIN_TIMEOUT_S}))
            viewer = Account.create().key.to_0x_hex()  # views only: this account never sends
            self._connection = (key, SwarmContract.at(w3, link.contract.address, viewer))
        return self._connection[1]

    def _from_chain(
        self, link: SwarmLink, records: list[dict[str, Any]],
    ) -> tuple[ChainView, list[MemberView], list[PendingView], LiveRound | None]:
        contract = self._read_through(link)
        me = link.contract.sender
        view = ChainView(reachable=False, endpoint=_endpoint(link.rpc_url),
                         contract=contract.address)
        try:
            w3 = contract.w3
            view.chain_id = int(w3.eth.chain_id)
            view.block_number = int(w3.eth.block_number)
            view.reachable = True
            view.membership_rule = contract.membership_rule()
            view.admin = contract.admin()
            view.current_round = contract.current_round()
            view.last_finalized_round = contract.last_finalized_round()
            view.key_epoch = contract.key_epoch_for(view.current_round)[0]
            on_chain = contract.members()
            last = _last_contributions(records)
            members = [MemberView(address=m.address, name=self._name(m.tls_certificate),
                                  endpoint=m.endpoint, dataset_size=m.dataset_size,
                                  last_round=last.get(m.address), this_node=m.address == me)
                       for m in on_chain]
            needed = len(on_chain) // 2 + 1
            pending = ([PendingView(address=p.address, name=self._name(p.tls_certificate),
                                    endpoint=p.endpoint, dataset_size=p.dataset_size,
                                    proposer=p.proposer, approvals=p.approvals, needed=needed)
                        for p in contract.proposals()]
                       if view.membership_rule == "majority" else [])
            live = self._live(contract, view.current_round)
            self._learn_rounds(contract, me, records)
            self._costs(view, w3, me, records)
        except CHAIN_ERRORS as exc:
            view.problem = (f"the chain did not answer ({type(exc).__name__})"
                            if not view.reachable else
                            f"reading the chain failed ({type(exc).__name__})")
            return view, [], [], None
        return view, members, pending, live

    def _live(self, contract: SwarmContract, current: int) -> LiveRound | None:
        info = contract.round_info(current)
        if info.finalized:  # finalized since `current` was read: the next one is open now
            current = contract.current_round()
            info = contract.round_info(current)
            if info.finalized:
                return None
        blocks = contract.he_parameters().block_count
        if not info.participants_fixed:
            stage = "enrolling"
        elif info.committed < info.contributors:
            stage = "committing"
        elif info.aggregated_blocks < blocks:
            stage = "aggregating"
        else:
            stage = "finalizing"
        order = contract.relay_order(current) if info.participants_fixed else []
        return LiveRound(round=current, stage=stage, attempt=info.attempt,
                         enrolled=contract.enrolled(current), participants=info.contributors,
                         committed=info.committed, aggregated_blocks=info.aggregated_blocks,
                         block_count=blocks, relay_order=order)

    def _learn_rounds(self, contract: SwarmContract, me: str,
                      records: list[dict[str, Any]]) -> None:
        """Who relayed each recorded round, its last block, and this node's gas in it (read
        block by block, so only for the rounds the cost estimate averages)."""
        w3 = contract.w3
        recent = len(records) - COST_ROUNDS
        for index, record in enumerate(records):
            number, hashes = record["round"], record.get("aggregate_transactions") or []
            if number in self._rounds or not hashes:
                continue
            receipts = [w3.eth.get_transaction_receipt(h) for h in hashes]
            final_block = max(int(r["blockNumber"]) for r in receipts)
            relays = sorted({str(r["from"]) for r in receipts})
            # Since the round recorded before it: an abandoned round in between costs too.
            before = self._rounds.get(records[index - 1]["round"]) if index else None
            gas = None
            if (index >= recent and before is not None
                    and final_block - before.final_block <= MAX_SCAN_BLOCKS):
                gas = _gas_of(w3, me, before.final_block + 1, final_block)
            self._rounds[number] = _RoundOnChain(final_block, relays, gas)
        shown = {r["round"] for r in records}
        self._rounds = {n: facts for n, facts in self._rounds.items() if n in shown}

    def _costs(self, view: ChainView, w3: Web3, me: str, records: list[dict[str, Any]]) -> None:
        balance = int(w3.eth.get_balance(me))
        gas_price = int(w3.eth.gas_price)
        view.balance_eth = balance / 10**18
        view.gas_price_gwei = gas_price / 10**9
        measured = [(r["round"], self._rounds[r["round"]].gas_used) for r in records
                    if r["round"] in self._rounds
                    and self._rounds[r["round"]].gas_used is not None][-COST_ROUNDS:]
        if not measured:
            view.cost_basis = ("no estimate yet: it needs two rounds whose aggregate "
                               "transactions this node recorded")
            return
        gas = round(sum(g or 0 for _, g in measured) / len(measured))
        view.gas_per_round = gas
        cost = gas * gas_price
        view.cost_per_round_eth = cost / 10**18
        view.rounds_affordable = balance // cost if cost else None
        first, last = measured[0][0], measured[-1][0]
        span = f"round {first}" if first == last else f"rounds {first}–{last}"
        view.cost_basis = (f"the mean gas this node's transactions used per round in {span}, "
                           "at the gas price now")

    def _name(self, certificate: bytes) -> str | None:
        if certificate not in self._names:
            self._names[certificate] = certificate_name(certificate)
        return self._names[certificate]

    # ------------------------------------------------------------------ node

    def _round_view(self, record: dict[str, Any], me: str | None) -> RoundView:
        facts = self._rounds.get(record["round"])
        return RoundView(
            round=record["round"], status=record.get("status", "adopted"),
            reason=record.get("reason"), contributors=record["contributors"],
            weight_sum=record["weight_sum"], accuracy=record["accuracy"],
            heldout_accuracy=record["heldout_accuracy"], loss=record["loss"],
            train_loss=record["train_loss"], seconds=record["seconds"],
            weights_digest=record["weights_digest"],
            aggregate_digests=record.get("aggregate_digests", []),
            aggregate_transactions=record.get("aggregate_transactions") or [],
            relays=facts.relays if facts else ([me] if record.get("relay") and me else []),
            relayed_here=bool(record.get("relay")), committed=record.get("committed", True),
            gas_used=facts.gas_used if facts else None,
        )

    def _certificate(self) -> CertificateView | None:
        path = self.settings.state_dir / TLS_DIR / NODE_CERT
        try:
            pem = path.read_bytes()
            cert = x509.load_pem_x509_certificate(pem)
        except (OSError, ValueError):
            return None
        expiry = cert.not_valid_after_utc
        left = expiry - datetime.datetime.now(datetime.UTC)
        return CertificateView(subject=certificate_name(pem), not_after=expiry.isoformat(),
                               days_left=round(left.total_seconds() / 86400, 1),
                               fingerprint=fingerprint(pem))


def _endpoint(rpc_url: str) -> str:
    parts = urlsplit(rpc_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _last_contributions(records: list[dict[str, Any]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for record in records:
        for address in record["contributors"]:
            last[address] = max(last.get(address, 0), record["round"])
    return last


def _gas_of(w3: Web3, sender: str, first_block: int, last_block: int) -> int:
    """Gas used by `sender`'s transactions in blocks first_block..last_block."""
    gas = 0
    for number in range(first_block, last_block + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if str(tx["from"]) == sender:
                gas += int(w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"])
    return gas


def get_source(request: Request) -> OverviewSource:
    source: OverviewSource = request.app.state.overview
    return source


@router.get("/v1/overview", response_model=Overview)
def overview(node: NodeDep, history: HistoryDep,
             source: Annotated[OverviewSource, Depends(get_source)]) -> Overview:
    """Everything the dashboard shows: members, approvals awaited, rounds, the live round,
    the chain and this node's certificate. Open, read-only, and free of secrets: no token,
    key or weights; names, accounts, endpoints, rounds, metrics and chain facts are what
    every member of the swarm sees on chain anyway."""
    return source.overview(node, history.snapshot())
