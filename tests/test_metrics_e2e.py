"""A scrape of each node's `/metrics` after two real swarm rounds: three `apiary node`
processes on a real devnet, their counters checked against the chain and each other.

The nodes run on (rounds 0: forever); once every node has adopted round 2, the devnet stops
mining, which freezes everything the counters count: no transaction gets a receipt, so no
gas is counted and no round can commit, exchange or finalize. The scrapes then compare
with a chain that no longer moves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import dev_private_keys
from apiary.tools.demo import DemoOptions, LocalSwarm

pytestmark = [pytest.mark.chain, pytest.mark.slow]

THREE = ("cleveland", "hungary", "va")
TOKEN = "metrics-test-admin-token"
ROUNDS = 2
SETTLE_S = 3.0
"""After mining stops: time for receipts already mined to reach their nodes, and for a
push under way to finish."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    reply = httpx.get(f"{url}/metrics", timeout=10)
    assert reply.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def one(samples: Samples, name: str, node: str, **labels: str) -> float:
    return samples[(name, frozenset({"node": node, **labels}.items()))]


def adopted(swarm: LocalSwarm, name: str, round_number: int) -> bool:
    return any(r["round"] == round_number for r in swarm.history(name))


def sent_by(w3: Web3, address: str) -> tuple[list[dict[str, Any]], int]:
    """The receipts of every mined transaction `address` sent, and the wei sent to it."""
    receipts, received = [], 0
    for number in range(w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["from"] == address:
                receipts.append(dict(w3.eth.get_transaction_receipt(tx["hash"])))
            if tx.get("to") == address:
                received += tx["value"]
    return receipts, received


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("metrics")
    options = DemoOptions(mode="swarm", rounds=0, out_dir=out, admin_token=TOKEN,
                          round_deadline_s=20.0)
    with LocalSwarm(options, THREE) as swarm:
        swarm.found()
        swarm.start_all()
        swarm.wait_until(lambda: all(adopted(swarm, n, ROUNDS) for n in THREE), 240,
                         f"round {ROUNDS} at every node")
        w3 = Web3(Web3.HTTPProvider(swarm.rpc_url))
        w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        time.sleep(SETTLE_S)
        scrapes = {n: scrape(swarm.nodes[n].api_url) for n in THREE}
        assert swarm.contract_address is not None
        contract = SwarmContract.at(w3, swarm.contract_address, dev_private_keys(1)[0])
        yield {"swarm": swarm, "w3": w3, "contract": contract, "scrapes": scrapes}
        w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]


def test_rounds_and_phases_are_counted_once_each(frozen: dict[str, Any]) -> None:
    swarm: LocalSwarm = frozen["swarm"]
    for name, samples in frozen["scrapes"].items():
        records = [r for r in swarm.history(name) if r["round"] <= ROUNDS]
        assert [r["round"] for r in records] == [1, 2]
        assert one(samples, "apiary_rounds_completed_total", name) == ROUNDS
        assert one(samples, "apiary_rounds_failed_total", name) == 0
        assert one(samples, "apiary_rounds_rejected_total", name) == 0
        assert one(samples, "apiary_round_seconds_count", name) == ROUNDS
        phases = {phase for r in records for phase in r["seconds"]}
        assert {"train", "encrypt", "commit", "exchange", "aggregate", "decrypt"} <= phases
        for phase in phases:
            held = sum(phase in r["seconds"] for r in records)
            assert one(samples, "apiary_phase_seconds_count", name, phase=phase) == held, phase
            assert one(samples, "apiary_phase_seconds_sum", name, phase=phase) == \
                pytest.approx(sum(r["seconds"].get(phase, 0.0) for r in records), abs=1e-3)
        assert one(samples, "apiary_round", name) == ROUNDS
        assert one(samples, "apiary_heldout_accuracy", name) == records[-1]["heldout_accuracy"]
        assert one(samples, "apiary_accuracy", name) == records[-1]["accuracy"]


def test_every_byte_sent_was_received_by_a_peer(frozen: dict[str, Any]) -> None:
    scrapes = frozen["scrapes"]
    sent = {n: one(s, "apiary_bytes_sent_total", n) for n, s in scrapes.items()}
    received = {n: one(s, "apiary_bytes_received_total", n) for n, s in scrapes.items()}
    assert all(v > 0 for v in sent.values()), sent
    assert sum(sent.values()) == sum(received.values())
    refused = sum(v for s in scrapes.values() for (name, _), v in s.items()
                  if name == "apiary_push_refused_total")
    assert refused == 0


def test_gas_used_is_the_sum_of_each_nodes_receipts(frozen: dict[str, Any]) -> None:
    swarm: LocalSwarm = frozen["swarm"]
    w3: Web3 = frozen["w3"]
    for name, samples in frozen["scrapes"].items():
        receipts, funded = sent_by(w3, swarm.addresses[name])
        gas = sum(r["gasUsed"] for r in receipts)
        assert gas > 0
        assert one(samples, "apiary_gas_used_total", name) == gas, name
        assert one(samples, "apiary_transactions_total", name) == len(receipts), name
        spent = sum(r["gasUsed"] * r["effectiveGasPrice"] for r in receipts)
        balance = one(samples, "apiary_eth_balance_wei", name)
        assert balance == float(w3.eth.get_balance(swarm.addresses[name]))
        assert balance == float(funded - spent) and balance < funded


def test_the_chains_gauges_and_the_certificate(frozen: dict[str, Any]) -> None:
    contract: SwarmContract = frozen["contract"]
    for name, samples in frozen["scrapes"].items():
        assert one(samples, "apiary_chain_up", name) == 1
        assert one(samples, "apiary_active_members", name) == 3
        assert one(samples, "apiary_key_epoch", name) == 0
        assert one(samples, "apiary_current_round", name) == contract.current_round()
        assert one(samples, "apiary_last_finalized_round", name) == \
            contract.last_finalized_round() >= ROUNDS
        assert one(samples, "apiary_relay_takeovers_total", name) >= 0
        registered = contract.member(frozen["swarm"].addresses[name]).tls_certificate
        expiry = x509.load_pem_x509_certificate(registered).not_valid_after_utc.timestamp()
        assert one(samples, "apiary_cert_expiry_timestamp_seconds", name) == expiry
        assert samples[("process_cpu_seconds_total", frozenset())] > 0
        assert samples[("process_resident_memory_bytes", frozenset())] > 0
