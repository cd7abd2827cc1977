"""A node's metrics: each event moves its counter, state is read at scrape time, and a chain
that is down or silent leaves its gauges out instead of failing or stalling a scrape."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families
from web3 import Web3

from apiary.chain.binding import SwarmContract, TxResult
from apiary.chain.devnet import free_port
from apiary.core.tls import create_self_signed
from apiary.node.metrics import PUSH_REFUSALS, NodeMetrics

CHAIN_GAUGES = {"apiary_eth_balance_wei", "apiary_current_round", "apiary_last_finalized_round",
                "apiary_active_members", "apiary_key_epoch"}


def samples(metrics: NodeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, parsed back from the text format, by name and labels."""
    parsed = text_string_to_metric_families(metrics.render().decode())
    return {(s.name, frozenset(s.labels.items())): s.value for f in parsed for s in f.samples}


def value(metrics: NodeMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset({"node": metrics.node, **labels}.items())))


def names(metrics: NodeMetrics) -> set[str]:
    return {name for name, _ in samples(metrics)}


@dataclass(frozen=True)
class Link:
    contract: SwarmContract
    rpc_url: str


def link_to(rpc_url: str) -> Link:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
    contract = SwarmContract.at(w3, "0x" + "12" * 20, Account.create().key.to_0x_hex())
    return Link(contract, rpc_url)


@pytest.fixture
def silent_chain() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_each_event_moves_its_own_counter() -> None:
    metrics = NodeMetrics("basel")
    metrics.round_completed()
    metrics.round_completed()
    metrics.round_failed()
    metrics.round_rejected()
    metrics.relay_takeover()
    metrics.push_refused("bad_signature")
    metrics.sent([b"x" * 10, b"y" * 5])
    metrics.received([b"z" * 7])
    metrics.transaction_mined(TxResult("0x01", 21_000, 5))
    metrics.transaction_mined(TxResult("0x02", 50_000, 6))
    metrics.round_timed({"train": 0.5, "exchange": 2.0}, 3.5)
    assert value(metrics, "apiary_rounds_completed_total") == 2
    assert value(metrics, "apiary_rounds_failed_total") == 1
    assert value(metrics, "apiary_rounds_rejected_total") == 1
    assert value(metrics, "apiary_rounds_abandoned_total") == 0
    assert value(metrics, "apiary_relay_takeovers_total") == 1
    assert value(metrics, "apiary_bytes_sent_total") == 15
    assert value(metrics, "apiary_bytes_received_total") == 7
    assert value(metrics, "apiary_transactions_total") == 2
    assert value(metrics, "apiary_gas_used_total") == 71_000
    for reason in PUSH_REFUSALS:  # every reason is there from the start, at 0
        assert value(metrics, "apiary_push_refused_total", reason=reason) == (
            1 if reason == "bad_signature" else 0)
    assert value(metrics, "apiary_phase_seconds_count", phase="train") == 1
    assert value(metrics, "apiary_phase_seconds_sum", phase="exchange") == 2.0
    assert value(metrics, "apiary_phase_seconds_bucket", phase="train", le="0.5") == 1
    assert value(metrics, "apiary_phase_seconds_bucket", phase="train", le="0.25") == 0
    assert value(metrics, "apiary_round_seconds_count") == 1
    assert value(metrics, "apiary_round_seconds_sum") == 3.5


def test_an_unknown_refusal_reason_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        NodeMetrics("basel").push_refused("bored")  # type: ignore[arg-type]


def test_two_nodes_in_one_process_keep_their_own_counts() -> None:
    basel, bern = NodeMetrics("basel"), NodeMetrics("bern")
    basel.round_completed()
    assert value(basel, "apiary_rounds_completed_total") == 1
    assert value(bern, "apiary_rounds_completed_total") == 0
    assert ("apiary_rounds_completed_total", frozenset({"node": "basel"}.items())) \
        not in samples(bern)


def test_the_process_collectors_are_in_each_nodes_registry() -> None:
    exported = names(NodeMetrics("basel"))
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "python_info", "python_gc_objects_collected_total"} <= exported


def test_every_metric_has_help_text() -> None:
    text = NodeMetrics("basel").render().decode()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("apiary_"):
            assert family.documentation, family.name


def test_the_model_held_is_read_from_the_saved_history() -> None:
    history = {"round": 3, "history": [
        {"round": 2, "status": "adopted", "accuracy": 0.8, "heldout_accuracy": 0.7},
        {"round": 3, "status": "rejected", "accuracy": None, "heldout_accuracy": None},
    ]}
    metrics = NodeMetrics("basel", history=lambda: history)
    assert value(metrics, "apiary_round") == 3
    assert value(metrics, "apiary_accuracy") == 0.8, "the last adopted round's"
    assert value(metrics, "apiary_heldout_accuracy") == 0.7
    fresh = NodeMetrics("fresh", history=lambda: {"round": 0, "history": []})
    assert value(fresh, "apiary_round") == 0
    assert "apiary_accuracy" not in names(fresh)


def test_certificate_expiry_is_the_certificates_not_valid_after() -> None:
    tls = create_self_signed("basel", ["127.0.0.1"])
    metrics = NodeMetrics("basel")
    metrics.certificate(tls.cert)
    expires = x509.load_pem_x509_certificate(tls.cert).not_valid_after_utc.timestamp()
    assert value(metrics, "apiary_cert_expiry_timestamp_seconds") == expires
    with pytest.raises(ValueError):
        metrics.certificate(b"not a certificate")


def test_a_node_that_is_no_member_exports_no_chain_gauges() -> None:
    exported = names(NodeMetrics("basel", link=lambda: None))
    assert not exported & (CHAIN_GAUGES | {"apiary_chain_up"})


def test_a_chain_that_is_down_leaves_its_gauges_out() -> None:
    metrics = NodeMetrics("basel", link=lambda: link_to(f"http://127.0.0.1:{free_port()}"),
                          chain_timeout_s=1.0)
    assert value(metrics, "apiary_chain_up") == 0
    assert not names(metrics) & CHAIN_GAUGES
    assert value(metrics, "apiary_rounds_completed_total") == 0, "the rest is still there"


def test_a_silent_chain_holds_one_reader_and_never_stalls_a_scrape(silent_chain: str) -> None:
    metrics = NodeMetrics("silent", link=lambda: link_to(silent_chain), chain_timeout_s=0.5)
    for _ in range(3):
        assert value(metrics, "apiary_chain_up") == 0
        assert not names(metrics) & CHAIN_GAUGES
    readers = [t for t in threading.enumerate() if t.name == "metrics-chain-silent"]
    assert len(readers) <= 1, "a scrape waits for the read under way instead of adding one"


@pytest.mark.chain
def test_a_chain_that_answers_gives_every_chain_gauge(devnet, w3: Web3,
                                                      dev_keys: list[str], he,
                                                      tmp_path: Path) -> None:
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=10, modulus=he.modulus,
                                 context_digest=he.public_digest())
    admin.add_member(admin.as_account(dev_keys[1]).sender, "127.0.0.1:1", b"\x01" * 32,
                     create_self_signed("m", ["127.0.0.1"]).cert, 100)
    member = admin.as_account(dev_keys[1])
    metrics = NodeMetrics("m", link=lambda: Link(member, devnet.rpc_url))
    assert value(metrics, "apiary_chain_up") == 1
    assert value(metrics, "apiary_eth_balance_wei") == float(w3.eth.get_balance(member.sender))
    assert value(metrics, "apiary_active_members") == 1
    assert value(metrics, "apiary_current_round") == admin.current_round()
    assert value(metrics, "apiary_last_finalized_round") == 0
    assert value(metrics, "apiary_key_epoch") == 0


@pytest.mark.chain
def test_every_receipt_of_a_contracts_account_reaches_its_listener(w3: Web3,
                                                                    dev_keys: list[str],
                                                                    he) -> None:
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=10, modulus=he.modulus,
                                 context_digest=he.public_digest())
    metrics = NodeMetrics("admin")
    admin.on_mined = metrics.transaction_mined
    added = admin.add_member(admin.as_account(dev_keys[1]).sender, "127.0.0.1:1",
                             b"\x01" * 32, create_self_signed("m", ["127.0.0.1"]).cert, 100)
    funded = admin.fund(Account.create().address, 10**15)
    assert value(metrics, "apiary_transactions_total") == 2
    assert value(metrics, "apiary_gas_used_total") == added.gas_used + funded.gas_used
    receipt = w3.eth.get_transaction_receipt(added.transaction_hash)
    assert added.gas_used == receipt["gasUsed"]
