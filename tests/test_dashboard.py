"""The dashboard's pages and ``GET /v1/overview`` against stub collaborators (no chain, no
processes); the real page in a real browser is tests/test_dashboard_browser.py."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from eth_utils import to_checksum_address
from fastapi import FastAPI

from apiary.chain.binding import HEParameters, MemberInfo, Proposal, RoundInfo, SwarmContract
from apiary.core.settings import NodeSettings
from apiary.core.tls import create_self_signed
from apiary.node.api import create_app
from apiary.node.api.overview import OverviewSource
from apiary.node.identity import ensure_identity
from apiary.node.invites import InviteBook
from apiary.node.ports import SwarmLink
from apiary.node.state import NodeState
from tests.test_api import (
    GOOD,
    TOKEN,
    FakeFounding,
    FakeJoiner,
    FakeNode,
    FakeSponsor,
    TestClient,
    record,
)

ME = to_checksum_address("0x" + "a1" * 20)
PEER = to_checksum_address("0x" + "b2" * 20)
CANDIDATE = to_checksum_address("0x" + "c3" * 20)
CONTRACT = to_checksum_address("0x" + "11" * 20)
GWEI = 10**9


def cert(name: str) -> bytes:
    return create_self_signed(name, ["127.0.0.1"]).cert


@dataclasses.dataclass
class Eth:
    """The few JSON-RPC answers the overview reads, for two finished rounds whose
    aggregates landed in blocks 10 and 20; this node sent gas 100 000 and 50 000 + 70 000."""

    chain_id: int = 31337
    block_number: int = 25
    gas_price: int = 2 * GWEI
    balance: int = 3 * 10**18

    def get_balance(self, address: str) -> int:
        assert address == ME
        return self.balance

    def get_transaction_receipt(self, tx_hash: str) -> dict[str, Any]:
        receipts = {"0xagg1": {"blockNumber": 10, "from": PEER, "gasUsed": 1},
                    "0xagg2": {"blockNumber": 20, "from": ME, "gasUsed": 70_000},
                    "0xmine": {"blockNumber": 15, "from": ME, "gasUsed": 50_000}}
        return receipts[tx_hash]

    def get_block(self, number: int, full_transactions: bool = False) -> dict[str, Any]:
        assert full_transactions
        sent = {15: [{"from": ME, "hash": "0xmine"}, {"from": PEER, "hash": "0xpeer"}],
                20: [{"from": ME, "hash": "0xagg2"}]}
        return {"transactions": sent.get(number, [])}


@dataclasses.dataclass
class Chain:
    """A swarm contract as the overview reads it: majority rule, one candidate pending,
    round 3 open with its participants committing."""

    eth: Eth = dataclasses.field(default_factory=Eth)
    address: str = CONTRACT
    sender: str = ME

    @property
    def w3(self) -> Chain:
        return self

    def membership_rule(self) -> str:
        return "majority"

    def admin(self) -> str:
        return ME

    def current_round(self) -> int:
        return 3

    def last_finalized_round(self) -> int:
        return 2

    def key_epoch_for(self, round_number: int) -> tuple[int, bytes]:
        return 1, b"\x00" * 32

    def members(self) -> list[MemberInfo]:
        return [MemberInfo(ME, "basel:50051", b"", cert("basel"), 120, True),
                MemberInfo(PEER, "bern:50051", b"", cert("bern"), 80, True)]

    def proposals(self) -> list[Proposal]:
        return [Proposal(CANDIDATE, "zurich:50051", cert("zurich"), 60, PEER, 1)]

    def round_info(self, round_number: int) -> RoundInfo:
        return RoundInfo(round_number, attempt=1, contributors=2, committed=1,
                         total_samples=200, aggregated_blocks=0, sealed=False, finalized=False)

    def he_parameters(self) -> HEParameters:
        return HEParameters(8192, 2**40, 4096, 3, 1, 1000, 2, 20, 20)

    def enrolled(self, round_number: int) -> list[str]:
        return [ME, PEER]

    def relay_order(self, round_number: int) -> list[str]:
        return [PEER, ME]


def chain_link() -> SwarmLink:
    return SwarmLink(contract=cast(SwarmContract, Chain()),
                     rpc_url="https://user:pw@chain.example:8545/v3/secret-api-key", trust=None)


@dataclasses.dataclass
class Dashboard:
    client: TestClient
    app: FastAPI
    node: FakeNode
    sponsor: FakeSponsor
    invites: InviteBook
    state_dir: Path


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    settings = NodeSettings(name="basel", admin_token=TOKEN, state_dir=tmp_path, mode="swarm")
    ensure_identity(tmp_path, "basel", "127.0.0.1:50051")
    history = NodeState.open(tmp_path)
    for n, hashes in ((1, ["0xagg1"]), (2, ["0xagg2"])):
        entry = record(n)
        entry.contributors = [ME, PEER] if n == 2 else [PEER]
        entry.aggregate_transactions = hashes
        history.save(np.zeros(3), n, f"{n:064x}", entry)
    node, sponsor, invites = FakeNode(), FakeSponsor(), InviteBook(tmp_path)
    app = create_app(settings, node=node, history=history, invites=invites, sponsor=sponsor,
                     founding=FakeFounding(), joiner=FakeJoiner())
    app.state.overview = OverviewSource(settings, reader=lambda link: link.contract)
    with TestClient(app) as client:
        yield Dashboard(client, app, node, sponsor, invites, tmp_path)


# ---------------------------------------------------------------------- the overview


def test_the_overview_is_open_and_reads_the_node_and_the_chain(dashboard: Dashboard) -> None:
    dashboard.node.link = chain_link()
    reply = dashboard.client.get("/v1/overview")
    assert reply.status_code == 200
    view = reply.json()
    assert (view["node"], view["address"], view["round"]) == ("basel", ME, 2)
    assert [(m["name"], m["endpoint"], m["last_round"], m["this_node"])
            for m in view["members"]] == [("basel", "basel:50051", 2, True),
                                          ("bern", "bern:50051", 2, False)]
    assert view["pending"] == [{"address": CANDIDATE, "name": "zurich",
                                "endpoint": "zurich:50051", "dataset_size": 60,
                                "proposer": PEER, "approvals": 1, "needed": 2}]
    assert view["live"] == {"round": 3, "stage": "committing", "attempt": 1,
                            "enrolled": [ME, PEER], "participants": 2, "committed": 1,
                            "aggregated_blocks": 0, "block_count": 1,
                            "relay_order": [PEER, ME]}
    first, second = view["rounds"]
    assert (first["relays"], first["gas_used"]) == ([PEER], None)  # nothing before it
    assert (second["relays"], second["gas_used"]) == ([ME], 120_000)
    assert second["aggregate_transactions"] == ["0xagg2"]
    chain = view["chain"]
    assert chain["reachable"] and chain["problem"] is None
    assert chain["endpoint"] == "https://chain.example:8545"  # no credentials, no path
    assert (chain["block_number"], chain["key_epoch"], chain["contract"]) == (25, 1, CONTRACT)
    assert (chain["balance_eth"], chain["gas_price_gwei"]) == (3.0, 2.0)
    assert chain["gas_per_round"] == 120_000
    assert chain["rounds_affordable"] == 3 * 10**18 // (120_000 * 2 * GWEI)
    assert "round 2" in chain["cost_basis"]
    assert view["certificate"]["subject"] == "basel"
    assert view["certificate"]["days_left"] > 3000


def test_the_overview_holds_no_secret(dashboard: Dashboard) -> None:
    dashboard.node.link = chain_link()
    invite, _ = dashboard.invites.create(600)
    text = dashboard.client.get("/v1/overview").text
    identity = json.loads((dashboard.state_dir / "identity.json").read_text())
    tls_key = (dashboard.state_dir / "tls" / "node.key").read_text()
    for secret in (TOKEN, invite, identity["private_key"], identity["private_key"][2:],
                   identity["x25519_private"], "secret-api-key", "user:pw",
                   tls_key.splitlines()[1]):
        assert secret not in text
    assert "weights" not in json.loads(text)


def test_the_overview_of_a_node_that_is_not_a_member_yet(dashboard: Dashboard) -> None:
    view = dashboard.client.get("/v1/overview").json()
    assert (view["members"], view["pending"], view["live"], view["chain"]) == ([], [], None,
                                                                              None)
    assert [r["round"] for r in view["rounds"]] == [1, 2]


def test_an_unreachable_chain_is_reported_not_waited_for(dashboard: Dashboard) -> None:
    dashboard.app.state.overview = OverviewSource(dashboard.app.state.settings)
    link = chain_link()
    dashboard.node.link = dataclasses.replace(link, rpc_url="http://127.0.0.1:9")
    chain = dashboard.client.get("/v1/overview").json()["chain"]
    assert chain["reachable"] is False
    assert chain["problem"].startswith("the chain did not answer")
    assert chain["contract"] == CONTRACT


# ---------------------------------------------------------------------- actions need the token


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}],
                         ids=["absent", "wrong"])
def test_the_pages_actions_refuse_an_absent_or_wrong_token(
    dashboard: Dashboard, headers: dict[str, str],
) -> None:
    invite = dashboard.client.post("/v1/invites", json={"ttl_s": 60}, headers=headers)
    approve = dashboard.client.post(f"/v1/members/{CANDIDATE}/approval", headers=headers)
    check = dashboard.client.get("/v1/status", headers=headers)
    assert [r.status_code for r in (invite, approve, check)] == [401, 401, 401]
    assert "bearer token" in invite.json()["detail"]
    assert dashboard.invites.snapshot() == {}
    assert dashboard.sponsor.calls == []


def test_the_pages_actions_work_with_the_token(dashboard: Dashboard) -> None:
    dashboard.node.link = chain_link()
    invite = dashboard.client.post("/v1/invites", json={"ttl_s": 60}, headers=GOOD)
    assert invite.status_code == 201 and len(dashboard.invites.snapshot()) == 1
    approve = dashboard.client.post(f"/v1/members/{CANDIDATE}/approval", headers=GOOD)
    assert approve.status_code == 200
    assert dashboard.sponsor.calls == [("approve", CANDIDATE)]


# ---------------------------------------------------------------------- pages and assets

LOCAL_REFERENCE = re.compile(r'(?:src|href)="([^"]*)"')


def test_the_root_leads_to_the_dashboard_under_a_strict_policy(dashboard: Dashboard) -> None:
    root = dashboard.client.get("/", follow_redirects=False)
    assert (root.status_code, root.headers["location"]) == (307, "/dashboard")
    page = dashboard.client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = dict(part.strip().split(" ", 1)
                  for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["connect-src"] == policy["style-src"] == "'self'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: the policy would refuse it
    references = LOCAL_REFERENCE.findall(page.text)
    assert references and all(r.startswith("/") and not r.startswith("//") for r in references)
    for asset in references:
        assert dashboard.client.get(asset).status_code == 200, asset


def test_the_dashboards_script_keeps_the_token_out_of_storage_and_urls() -> None:
    source = (Path(__file__).resolve().parents[1] / "node/api/static/dashboard.js").read_text()
    code = "\n".join(line for line in source.splitlines() if not line.strip().startswith("//"))
    for unsafe in ("localStorage", "sessionStorage", "document.cookie", "innerHTML",
                   "eval(", "?token"):
        assert unsafe not in code, unsafe


def test_swagger_ui_is_served_from_the_nodes_own_assets(dashboard: Dashboard) -> None:
    docs = dashboard.client.get("/docs")
    assert docs.status_code == 200
    assert "http://" not in docs.text and "https://" not in docs.text
    assert '<script src="/static/docs/swagger-ui-bundle.js">' in docs.text
    assert 'href="/static/docs/swagger-ui.css"' in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert dashboard.client.get(f"/static/docs/{asset}").status_code == 200
    (inline,) = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in docs.headers["content-security-policy"]
    assert "unsafe-inline' " not in docs.headers["content-security-policy"].split(
        "script-src", 1)[1].split(";")[0]
    assert dashboard.client.get("/redoc").status_code == 404
