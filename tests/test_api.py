"""The admin API against stub collaborators: no chain, no processes, no HE keys."""

from __future__ import annotations

import dataclasses
import datetime
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from eth_utils import to_checksum_address
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from apiary.chain.binding import SwarmContract
from apiary.core.errors import ConfigError
from apiary.core.settings import NodeSettings
from apiary.core.tasks import SwarmConfig, TaskIdentity
from apiary.core.tls import create_self_signed
from apiary.node import runtime
from apiary.node.api import create_app
from apiary.node.api.deps import get_joiner, get_node
from apiary.node.api.rounds import RoundEntry
from apiary.node.founding import (
    FoundingStatus,
    KeyDelivery,
    PublicContext,
    SwarmAssignment,
    TrainingInfo,
    WrappedFor,
    WrappedKeys,
)
from apiary.node.identity import IDENTITY_FILE, Identity, PublicIdentity, ensure_identity
from apiary.node.invites import InviteBook, Refused
from apiary.node.joining import Joiner, JoiningNode, JoinProgress
from apiary.node.keys import KeyRing
from apiary.node.onboarding import (
    AdminRole,
    Approval,
    Handover,
    JoinRequest,
    Pending,
    Removal,
    Rotation,
    Sponsor,
    WrappedKey,
)
from apiary.node.ports import ReadinessFacts, SwarmLink
from apiary.node.state import NodeState, RoundRecord

with warnings.catch_warnings():
    # Starlette prefers the httpx2 package; its fallback to httpx works the same.
    warnings.filterwarnings("ignore", "Using `httpx`", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

TOKEN = "test-admin-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
ADDRESS = to_checksum_address("0x" + "ab" * 20)
OTHER = to_checksum_address("0x" + "cd" * 20)
READY = ReadinessFacts(member=True, upstream="chain", upstream_reachable=True, he_key=True)
CERT = create_self_signed("newcomer", ["10.0.0.4"]).cert.decode()


# ---------------------------------------------------------------------- stubs


@dataclasses.dataclass(frozen=True)
class FakeMember:
    address: str
    endpoint: str
    active: bool = True


class FakeContract:
    """What /v1/status and a sponsor under the admin rule read of a contract."""

    address = to_checksum_address("0x" + "11" * 20)
    sender = ADDRESS

    def members(self) -> list[FakeMember]:
        return [FakeMember(ADDRESS, "a:1"), FakeMember(OTHER, "b:2")]

    def member(self, address: str) -> FakeMember:
        return FakeMember(address, "", active=False)

    def membership_rule(self) -> str:
        return "admin"

    def admin(self) -> str:
        return OTHER


def fake_link() -> SwarmLink:
    contract = cast(SwarmContract, FakeContract())
    return SwarmLink(contract=contract, rpc_url="http://chain:8545", trust=None)


@dataclasses.dataclass
class FakeNode:
    phase: str = "round 2 done"
    link: SwarmLink | None = None
    param_count: int = 3
    sample_count: int = 40
    facts: ReadinessFacts = READY

    def readiness(self) -> ReadinessFacts:
        return self.facts


TRAINING = SwarmConfig(TaskIdentity("heart", "1", "a" * 64, "b" * 64, 3),
                       {"epochs": 2, "lr": 0.003, "batch_size": 16, "seed": 0})
"""A swarm-wide training configuration, as a node answers GET /v1/training."""
HANDOVER = Handover(
    address=ADDRESS, contract=FakeContract.address, rpc_url="http://chain:8545", round=2,
    weights="AAAA", weights_digest="d" * 64,
    keys=[WrappedKey(epoch=0, wrapped={"ephemeral_public": "eA==", "nonce": "",
                                       "ciphertext": "Yw=="})],
    training=TRAINING.as_json(),
)
SEALED = {"ephemeral_public": "eA==", "nonce": "", "ciphertext": "Yw=="}


@dataclasses.dataclass
class FakeSponsor:
    """Answers with `answer` (or raises `refusal`) and records what it was asked."""

    answer: Handover | Pending = dataclasses.field(default_factory=lambda: HANDOVER)
    refusal: Exception | None = None
    calls: list[tuple[str, Any]] = dataclasses.field(default_factory=list)

    def _call(self, name: str, argument: Any) -> None:
        self.calls.append((name, argument))
        if self.refusal is not None:
            raise self.refusal

    def admit(self, request: JoinRequest) -> Handover | Pending:
        self._call("admit", request)
        return self.answer

    def approve(self, address: str) -> Approval:
        self._call("approve", address)
        return Approval(address=address, approvals=2, member=True)

    def remove(self, address: str) -> Removal:
        self._call("remove", address)
        return Removal(removed=address, key_epoch=1, from_round=3, delivered=[OTHER],
                       failed=[])

    def rotate(self) -> Rotation:
        self._call("rotate", None)
        return Rotation(key_epoch=2, from_round=4, delivered=[OTHER], failed=[ADDRESS])

    def admin_role(self) -> AdminRole:
        self._call("admin_role", None)
        return AdminRole(admin=ADDRESS, pending_admin=None)

    def transfer_admin(self, address: str) -> AdminRole:
        self._call("transfer_admin", address)
        return AdminRole(admin=ADDRESS, pending_admin=address)

    def accept_admin(self) -> AdminRole:
        self._call("accept_admin", None)
        return AdminRole(admin=ADDRESS, pending_admin=None)


IDENTITY = PublicIdentity(name="basel", address=ADDRESS, x25519_public_key="22" * 32,
                          dataset_size=120,
                          endpoint="basel:50051", tls_certificate=CERT)


@dataclasses.dataclass
class FakeFounding:
    """Answers each ceremony step (or raises `refusal`) and records what it was asked."""

    refusal: Exception | None = None
    calls: list[tuple[str, Any]] = dataclasses.field(default_factory=list)

    def _call(self, name: str, argument: Any = None) -> None:
        self.calls.append((name, argument))
        if self.refusal is not None:
            raise self.refusal

    def public_identity(self) -> PublicIdentity:
        return IDENTITY

    def training_info(self) -> TrainingInfo:
        return TrainingInfo(digest="0x" + TRAINING.digest().hex(), config=TRAINING.as_json())

    def status(self) -> FoundingStatus:
        self._call("status")
        return FoundingStatus(state="no swarm", address=ADDRESS, contract=None)

    def create_key(self) -> PublicContext:
        self._call("create_key")
        return PublicContext(public_context="cHVibGlj", digest="0x" + "ab" * 32)

    def join_swarm(self, assignment: SwarmAssignment) -> FoundingStatus:
        self._call("join_swarm", assignment)
        return FoundingStatus(state="awaiting key", address=ADDRESS,
                              contract=assignment.contract)

    def wrap_keys(self) -> WrappedKeys:
        self._call("wrap_keys")
        return WrappedKeys(epoch=0, keys=[WrappedFor(address=OTHER, wrapped=SEALED)])

    def accept_key(self, delivery: KeyDelivery) -> FoundingStatus:
        self._call("accept_key", delivery)
        return FoundingStatus(state="member", address=ADDRESS, contract=FakeContract.address)


@dataclasses.dataclass
class FakeJoiner:
    busy: bool = False
    started: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def start(self, sponsor: str, invite: str) -> None:
        self.started.append((sponsor, invite))

    def progress(self) -> JoinProgress:
        state = "requesting admission" if self.started else "idle"
        return JoinProgress(state=state, sponsor=self.started[0][0] if self.started else None,
                            address=None, error=None, seconds=0.0 if self.started else None)


@dataclasses.dataclass
class Api:
    client: TestClient
    app: FastAPI
    node: FakeNode
    sponsor: FakeSponsor
    joiner: FakeJoiner
    history: NodeState
    invites: InviteBook
    founding: FakeFounding


def record(round_number: int) -> RoundRecord:
    return RoundRecord(
        round=round_number, contributors=[ADDRESS, OTHER], weight_sum=80,
        accuracy=0.5 + round_number / 8,
        auc=0.9, loss=0.4, train_loss=0.5, heldout_accuracy=0.75, heldout_auc=None,
        weights_digest=f"{round_number:064x}", seconds={"train": 1.5, "exchange": 0.25},
        aggregate_digests=["ee" * 32], committed=True, relay=round_number == 2,
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = NodeSettings(name="basel", admin_token=TOKEN, state_dir=tmp_path, mode="swarm")
    history = NodeState.open(tmp_path)
    for n in (1, 2):
        history.save(np.zeros(3), n, f"{n:064x}", record(n))
    node, sponsor, joiner, founding = FakeNode(), FakeSponsor(), FakeJoiner(), FakeFounding()
    invites = InviteBook(tmp_path)
    app = create_app(settings, node=node, history=history, invites=invites, sponsor=sponsor,
                     founding=founding, joiner=joiner)
    with TestClient(app) as client:
        yield Api(client, app, node, sponsor, joiner, history, invites, founding)


def join_body(**changes: Any) -> dict[str, Any]:
    body = {"invite": "i" * 43, "address": ADDRESS.lower(), "x25519_public_key": "11" * 32,
            "endpoint": "10.0.0.4:50051", "tls_certificate": CERT, "dataset_size": 120,
            "training": TRAINING.as_json()}
    return {**body, **changes}


# ---------------------------------------------------------------------- authorisation

ADMIN_ROUTES = [
    ("GET", "/v1/status", None),
    ("GET", "/v1/rounds", None),
    ("GET", "/v1/model", None),
    ("POST", "/v1/invites", {"ttl_s": 60}),
    ("POST", f"/v1/members/{ADDRESS}/approval", None),
    ("DELETE", f"/v1/members/{ADDRESS}", None),
    ("POST", "/v1/keys/rotation", None),
    ("POST", "/v1/join", {"sponsor_url": "http://sponsor:8000", "invite": "x" * 43}),
    ("GET", "/v1/join", None),
    ("GET", "/v1/admin", None),
    ("POST", "/v1/admin/transfer", {"address": OTHER}),
    ("POST", "/v1/admin/accept", None),
    ("POST", "/v1/he-key", None),
    ("GET", "/v1/swarm", None),
    ("POST", "/v1/swarm", {"contract": OTHER, "rpc_url": "http://chain:8545",
                           "training": TRAINING.as_json()}),
    ("POST", "/v1/he-key/wrapped", None),
    ("POST", "/v1/he-key/delivery", {"epoch": 0, "wrapped": SEALED}),
]
OPEN_ROUTES = {("GET", "/v1/health"), ("GET", "/v1/ready"), ("GET", "/metrics"),
               ("GET", "/v1/identity"), ("GET", "/v1/training"), ("GET", "/v1/overview"),
               ("POST", "/v1/members"),
               ("POST", "/v1/members/{address}/handover")}


def test_the_admin_routes_listed_here_are_all_the_app_has(api: Api) -> None:
    routes = {(method.upper(), path) for path, operations in api.app.openapi()["paths"].items()
              for method in operations}
    listed = {(m, p.replace(ADDRESS, "{address}")) for m, p, _ in ADMIN_ROUTES}
    assert routes == listed | OPEN_ROUTES


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES,
                         ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"},
                                     {"Authorization": "Basic " + TOKEN},
                                     {"Authorization": f"Bearer {TOKEN}x"}],
                         ids=["none", "wrong", "basic", "longer"])
def test_admin_routes_refuse_a_missing_or_wrong_token(
    api: Api, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str],
) -> None:
    reply = api.client.request(method, path, json=body, headers=headers)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in reply.json()["detail"]
    assert api.sponsor.calls == [] and api.joiner.started == []
    assert api.founding.calls == []
    assert api.invites.snapshot() == {}


INVITEE_ROUTES = {("POST", "/v1/members"), ("POST", "/v1/members/{address}/handover")}


@pytest.mark.parametrize(("method", "path"), sorted(OPEN_ROUTES - INVITEE_ROUTES))
def test_probes_and_metrics_need_no_token(api: Api, method: str, path: str) -> None:
    assert api.client.request(method, path).status_code == 200


# ---------------------------------------------------------------------- health, readiness


def test_health_is_liveness(api: Api) -> None:
    api.node.facts = ReadinessFacts(member=False, upstream="chain", upstream_reachable=False,
                                    he_key=False)
    reply = api.client.get("/v1/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "node": "basel", "round": 2}


def test_ready_when_member_reachable_and_keyed(api: Api) -> None:
    reply = api.client.get("/v1/ready")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ready", "node": "basel", "reasons": []}


@pytest.mark.parametrize(("facts", "expected"), [
    (ReadinessFacts(False, "chain", True, True), ["swarm member"]),
    (ReadinessFacts(True, "chain", False, True), ["the chain is unreachable"]),
    (ReadinessFacts(True, "coordinator", False, True), ["the coordinator is unreachable"]),
    (ReadinessFacts(True, "chain", True, False), ["HE context"]),
    (ReadinessFacts(False, "chain", False, False),
     ["swarm member", "the chain is unreachable", "HE context"]),
])
def test_not_ready_answers_503_with_each_reason(api: Api, facts: ReadinessFacts,
                                                expected: list[str]) -> None:
    api.app.dependency_overrides[get_node] = lambda: FakeNode(facts=facts)
    reply = api.client.get("/v1/ready")
    assert reply.status_code == 503
    body = reply.json()
    assert body["status"] == "not ready" and body["node"] == "basel"
    assert len(body["reasons"]) == len(expected)
    for reason, fragment in zip(body["reasons"], expected, strict=True):
        assert fragment in reason


# ---------------------------------------------------------------------- status, rounds, model


def test_status_of_a_node_that_is_not_a_member_yet(api: Api) -> None:
    body = api.client.get("/v1/status", headers=GOOD).json()
    assert {k: body[k] for k in ("node", "mode", "address", "contract", "phase", "round",
                                 "params", "samples", "members")} == {
        "node": "basel", "mode": "swarm", "address": None, "contract": None,
        "phase": "round 2 done", "round": 2, "params": 3, "samples": 40, "members": []}
    assert body["last_metrics"]["round"] == 2 and body["last_metrics"]["relay"] is True


def test_status_of_a_member_lists_the_swarm(api: Api) -> None:
    api.node.link = fake_link()
    body = api.client.get("/v1/status", headers=GOOD).json()
    assert body["address"] == ADDRESS and body["contract"] == FakeContract.address
    assert body["members"] == [{"address": ADDRESS, "endpoint": "a:1"},
                               {"address": OTHER, "endpoint": "b:2"}]


def test_round_entries_carry_every_field_of_a_round_record() -> None:
    assert set(RoundEntry.model_fields) == {f.name for f in dataclasses.fields(RoundRecord)}


def test_rounds_history(api: Api) -> None:
    reply = api.client.get("/v1/rounds", headers=GOOD)
    assert reply.status_code == 200
    body = reply.json()
    assert body["node"] == "basel"
    assert body["rounds"] == [dataclasses.asdict(record(1)), dataclasses.asdict(record(2))]
    assert api.client.post("/v1/rounds", headers=GOOD).status_code == 405


def test_model_reports_the_last_evaluation(api: Api) -> None:
    body = api.client.get("/v1/model", headers=GOOD).json()
    assert body == {"node": "basel", "round": 2, "params": 3, "weights_digest": f"{2:064x}",
                    "evaluation": {"accuracy": 0.75, "auc": 0.9, "loss": 0.4,
                                   "heldout_accuracy": 0.75, "heldout_auc": None}}


def test_model_before_any_round(tmp_path: Path) -> None:
    settings = NodeSettings(name="fresh", admin_token=TOKEN, state_dir=tmp_path)
    app = create_app(settings, node=FakeNode(), history=NodeState.open(tmp_path),
                     invites=InviteBook(tmp_path), sponsor=FakeSponsor(),
                     founding=FakeFounding(), joiner=None)
    with TestClient(app) as client:
        body = client.get("/v1/model", headers=GOOD).json()
        assert body == {"node": "fresh", "round": 0, "params": 3, "weights_digest": None,
                        "evaluation": None}
        assert client.get("/v1/rounds", headers=GOOD).json() == {"node": "fresh", "rounds": []}
        assert client.get("/v1/status", headers=GOOD).json()["last_metrics"] is None
        assert "apiary_rounds_completed_total" in client.get("/metrics").text


def test_metrics_in_prometheus_text(api: Api) -> None:
    reply = api.client.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    lines = set(reply.text.splitlines())
    assert 'apiary_round{node="basel"} 2.0' in lines
    assert 'apiary_accuracy{node="basel"} 0.75' in lines
    assert 'apiary_heldout_accuracy{node="basel"} 0.75' in lines
    # Counters count what this process saw happen (the stub node ran no round), and the
    # chain's gauges need a member's link (the stub has none).
    assert 'apiary_rounds_completed_total{node="basel"} 0.0' in lines
    assert "# TYPE apiary_phase_seconds histogram" in lines
    assert not any(line.startswith(("apiary_chain_up", "apiary_eth_balance")) for line in lines)
    assert any(line.startswith("process_cpu_seconds_total") for line in lines)


# ---------------------------------------------------------------------- invites


def test_an_invite_is_shown_once_and_kept_as_a_digest(api: Api) -> None:
    api.node.link = fake_link()
    before = time.time()
    reply = api.client.post("/v1/invites", headers=GOOD, json={})
    assert reply.status_code == 201
    body = reply.json()
    assert set(body) == {"invite", "expires_at", "sponsor"} and body["sponsor"] == "basel"
    assert before + 3600 <= body["expires_at"] <= time.time() + 3600
    stored = api.invites.snapshot()
    assert len(stored) == 1 and body["invite"] not in str(stored)
    assert api.invites.check(body["invite"], ADDRESS).used_by is None
    short = api.client.post("/v1/invites", headers=GOOD, json={"ttl_s": 0.5}).json()
    assert short["expires_at"] < body["expires_at"]


def test_a_node_outside_the_swarm_hands_out_no_invite(api: Api) -> None:
    reply = api.client.post("/v1/invites", headers=GOOD, json={})
    assert reply.status_code == 409
    assert "not a swarm member" in reply.json()["detail"]
    assert api.invites.snapshot() == {}


@pytest.mark.parametrize("raw", ['{"ttl_s": 0}', '{"ttl_s": -5}', '{"ttl_s": NaN}',
                                 '{"ttl_s": Infinity}', '{"ttl_s": -Infinity}',
                                 '{"ttl_s": 2592001}', '{"ttl_s": "soon"}', "not json", "[]"])
def test_an_invite_needs_a_finite_positive_lifetime(api: Api, raw: str) -> None:
    reply = api.client.post("/v1/invites", content=raw,
                            headers={**GOOD, "content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"]
    assert api.invites.snapshot() == {}


# ---------------------------------------------------------------------- admission


def test_admission_hands_over_with_the_checksummed_address(api: Api) -> None:
    reply = api.client.post("/v1/members", json=join_body())
    assert reply.status_code == 200
    assert Handover.model_validate(reply.json()) == HANDOVER
    (name, request), = api.sponsor.calls
    assert name == "admit" and request.address == ADDRESS


def test_admission_awaiting_approval_answers_202(api: Api) -> None:
    api.sponsor.answer = Pending(approvals=1, needed=2)
    reply = api.client.post("/v1/members", json=join_body())
    assert reply.status_code == 202
    assert reply.json() == {"status": "pending", "approvals": 1, "needed": 2}


@pytest.mark.parametrize("status", [403, 409, 410, 422, 503])
def test_refused_admission_answers_its_status_and_reason(api: Api, status: int) -> None:
    api.sponsor.refusal = Refused(status, f"refused with {status}")
    reply = api.client.post("/v1/members", json=join_body())
    assert reply.status_code == status
    assert reply.json() == {"detail": f"refused with {status}"}


@pytest.mark.parametrize("changes", [
    {"invite": "short"},
    {"address": "0x1234"},
    {"address": "not an address"},
    {"x25519_public_key": "00" * 32},
    {"x25519_public_key": "zz"},
    {"x25519_public_key": "11" * 31},
    {"endpoint": "no-port"},
    {"endpoint": "host:port"},
    {"tls_certificate": "x" * 5000},
    {"tls_certificate": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"},
    {"tls_certificate": ""},
], ids=lambda c: f"{next(iter(c))}={str(next(iter(c.values())))[:12]}")
def test_a_malformed_join_request_is_refused_before_the_sponsor(
    api: Api, changes: dict[str, str],
) -> None:
    reply = api.client.post("/v1/members", json=join_body(**changes))
    assert reply.status_code == 422, reply.text
    assert api.sponsor.calls == []


def signing_certificate() -> str:
    """A self-signed P-256 certificate that may sign others: a CA, not a member's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "would-be CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_a_certificate_that_can_sign_others_is_no_members(api: Api) -> None:
    reply = api.client.post("/v1/members", json=join_body(tls_certificate=signing_certificate()))
    assert reply.status_code == 422 and "may sign certificates" in reply.text
    assert api.sponsor.calls == []


def test_a_join_request_needs_every_field(api: Api) -> None:
    assert api.client.post("/v1/members", json={"invite": "x"}).status_code == 422
    assert api.client.post("/v1/members", content="{").status_code == 422
    assert api.sponsor.calls == []


def sponsor_app(tmp_path: Path, link: SwarmLink | None) -> tuple[TestClient, InviteBook]:
    """The real Sponsor over a real invite book, with `link` as its swarm link."""
    settings = NodeSettings(name="basel", admin_token=TOKEN, state_dir=tmp_path)
    invites = InviteBook(tmp_path)
    state = NodeState.open(tmp_path)
    sponsor = Sponsor(node="basel", funding_wei=0, invites=invites, keys=KeyRing(tmp_path),
                      current_model=state.current, link=lambda: link, training=TRAINING)
    app = create_app(settings, node=FakeNode(link=link), history=state, invites=invites,
                     sponsor=sponsor, founding=FakeFounding(), joiner=None)
    return TestClient(app), invites


def test_a_node_outside_the_swarm_cannot_sponsor(tmp_path: Path) -> None:
    client, invites = sponsor_app(tmp_path, None)
    token, _ = invites.create(60)
    reply = client.post("/v1/members", json=join_body(invite=token))
    assert reply.status_code == 409 and "not an active swarm member" in reply.json()["detail"]


def test_invites_refused_by_the_real_sponsor(tmp_path: Path) -> None:
    client, invites = sponsor_app(tmp_path, fake_link())
    unknown = client.post("/v1/members", json=join_body())
    assert unknown.status_code == 403 and unknown.json()["detail"] == "invalid invite"
    expired, _ = invites.create(0.01)
    time.sleep(0.02)
    reply = client.post("/v1/members", json=join_body(invite=expired))
    assert reply.status_code == 410 and "expired" in reply.json()["detail"]
    held, _ = invites.create(60)
    invites.reserve(held, OTHER)
    reply = client.post("/v1/members", json=join_body(invite=held))
    assert reply.status_code == 409 and "already used" in reply.json()["detail"]
    valid, _ = invites.create(60)
    reply = client.post("/v1/members", json=join_body(invite=valid))
    assert reply.status_code == 403 and "admin role" in reply.json()["detail"]
    assert all(v["used_by"] is None for v in invites.snapshot().values())


# ---------------------------------------------------------------------- approval, removal


def test_approval(api: Api) -> None:
    reply = api.client.post(f"/v1/members/{ADDRESS.lower()}/approval", headers=GOOD)
    assert reply.status_code == 200
    assert reply.json() == {"address": ADDRESS, "approvals": 2, "member": True}
    assert api.sponsor.calls == [("approve", ADDRESS)]


def test_removal(api: Api) -> None:
    reply = api.client.delete(f"/v1/members/{OTHER.lower()}", headers=GOOD)
    assert reply.status_code == 200
    assert reply.json() == {"removed": OTHER, "key_epoch": 1, "from_round": 3,
                            "delivered": [OTHER], "failed": []}
    assert api.sponsor.calls == [("remove", OTHER)]


def test_rotate_now_answers_who_got_the_new_key(api: Api) -> None:
    reply = api.client.post("/v1/keys/rotation", headers=GOOD)
    assert reply.status_code == 200
    assert reply.json() == {"key_epoch": 2, "from_round": 4, "delivered": [OTHER],
                            "failed": [ADDRESS]}
    assert api.sponsor.calls == [("rotate", None)]


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("address", ["nope", "0x1234", "0x" + "zz" * 20, "1" * 40 + "00"])
def test_a_non_address_in_the_path_is_422(api: Api, method: str, address: str) -> None:
    path = f"/v1/members/{address}" + ("/approval" if method == "POST" else "")
    reply = api.client.request(method, path, headers=GOOD)
    assert reply.status_code == 422, reply.text
    assert api.sponsor.calls == []


@pytest.mark.parametrize(("refusal", "status"), [
    (Refused(409, "already approved"), 409),
    (Refused(404, "not an active member"), 404),
    (Refused(403, "only the swarm admin's node removes members"), 403),
    (ConfigError("any ApiaryError answers with its own status"), 400),
])
def test_sponsor_refusals_map_to_their_status(api: Api, refusal: Exception,
                                              status: int) -> None:
    api.sponsor.refusal = refusal
    for method, path in (("POST", f"/v1/members/{ADDRESS}/approval"),
                         ("DELETE", f"/v1/members/{ADDRESS}"), ("POST", "/v1/keys/rotation")):
        reply = api.client.request(method, path, headers=GOOD)
        assert reply.status_code == status
        assert reply.json() == {"detail": str(refusal)}


# ---------------------------------------------------------------------- joining

START = {"sponsor_url": "http://sponsor:8000/", "invite": "t" * 43}


def test_join_starts_in_the_background(api: Api) -> None:
    reply = api.client.post("/v1/join", headers=GOOD, json=START)
    assert reply.status_code == 202
    assert api.joiner.started == [(START["sponsor_url"], START["invite"])]
    body = JoinProgress.model_validate(reply.json())
    assert body.state == "requesting admission"
    progress = api.client.get("/v1/join", headers=GOOD)
    assert progress.status_code == 200
    assert set(progress.json()) == {"state", "sponsor", "address", "error", "seconds",
                                    "approvals", "needed", "round"}


def test_join_while_a_member_is_409(api: Api) -> None:
    api.node.link = fake_link()
    reply = api.client.post("/v1/join", headers=GOOD, json=START)
    assert reply.status_code == 409 and "already a swarm member" in reply.json()["detail"]
    assert api.joiner.started == []


def test_join_while_joining_is_409(api: Api) -> None:
    api.joiner.busy = True
    reply = api.client.post("/v1/join", headers=GOOD, json=START)
    assert reply.status_code == 409 and "in progress" in reply.json()["detail"]
    assert api.joiner.started == []


def test_a_node_that_does_not_join_answers_404(api: Api) -> None:
    api.app.dependency_overrides[get_joiner] = lambda: None
    assert api.client.get("/v1/join", headers=GOOD).status_code == 404
    reply = api.client.post("/v1/join", headers=GOOD, json=START)
    assert reply.status_code == 404 and reply.json() == {"detail": "this node does not join"}


@pytest.mark.parametrize("body", [{}, {"sponsor_url": "http://s:1"}, {"invite": "x"},
                                  {"sponsor_url": "sponsor:8000", "invite": "x"},
                                  {"sponsor_url": "http://s:1", "invite": ""}])
def test_join_needs_a_sponsor_url_and_an_invite(api: Api, body: dict[str, str]) -> None:
    assert api.client.post("/v1/join", headers=GOOD, json=body).status_code == 422
    assert api.joiner.started == []


def test_a_real_joiner_reports_idle_before_it_starts(api: Api, tmp_path: Path) -> None:
    def unused(*_args: Any) -> Any:
        raise AssertionError("an idle joiner touches nothing")

    identity, tls = ensure_identity(tmp_path, "basel", "h:1")
    joiner = Joiner(JoiningNode(name="basel", state_dir=tmp_path, endpoint="h:1",
                                identity=identity, tls=tls, param_count=3, dataset_size=5,
                                training=TRAINING, keys=KeyRing(tmp_path), connect=unused,
                                activate=unused,
                                adopt=unused))
    api.app.dependency_overrides[get_joiner] = lambda: joiner
    reply = api.client.get("/v1/join", headers=GOOD)
    assert reply.status_code == 200
    assert reply.json() == {"state": "idle", "sponsor": None, "address": None, "error": None,
                            "seconds": None, "approvals": None, "needed": None,
                            "round": None}


# ---------------------------------------------------------------------- the runtime's wiring


@dataclasses.dataclass
class FakeTrainer:
    param_count: int = 5
    sample_count: int = 7
    swarm_config: SwarmConfig = TRAINING


@pytest.mark.parametrize(("mode", "upstream"), [("swarm", "chain"),
                                                ("federated", "coordinator")])
def test_a_runtime_outside_any_swarm_serves_its_state_and_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, upstream: str,
) -> None:
    monkeypatch.setattr(runtime, "PROBE_TIMEOUT_S", 0.1)
    settings = NodeSettings(name="rt", admin_token=TOKEN, state_dir=tmp_path, mode=mode,
                            rpc_url="http://127.0.0.1:1", coordinator="127.0.0.1:1")
    node = runtime.NodeRuntime(settings, cast(Any, FakeTrainer()), NodeState.open(tmp_path),
                               KeyRing(tmp_path), InviteBook(tmp_path))
    with TestClient(node.create_api()) as client:
        assert client.get("/v1/health").json() == {"status": "ok", "node": "rt", "round": 0}
        ready = client.get("/v1/ready")
        assert ready.status_code == 503
        reasons = ready.json()["reasons"]
        assert len(reasons) == 3 and f"the {upstream} is unreachable" in reasons
        status = client.get("/v1/status", headers=GOOD).json()
        assert status["mode"] == mode and status["params"] == 5 and status["samples"] == 7
        assert status["phase"] == "starting" and status["members"] == []
        refused = client.post("/v1/members", json=join_body())
        assert refused.status_code == 409
        assert refused.json() == {"detail": "this node is not an active swarm member"}
        identity = client.get("/v1/identity").json()
        stored = Identity.load(tmp_path)
        assert stored is not None and identity["address"] == stored.address
        assert identity["x25519_public_key"] == stored.x25519_public
        assert identity["tls_certificate"] == (tmp_path / "tls" / "node.pem").read_text()
        assert stored.private_key not in str(identity)
        assert client.get("/v1/swarm", headers=GOOD).json()["state"] == "no swarm"
        nowhere = client.post("/v1/he-key/wrapped", headers=GOOD)
        assert nowhere.status_code == 409 and "POST /v1/swarm first" in nowhere.json()["detail"]


# ---------------------------------------------------------------------- founding ceremony


def test_training_is_open_and_answers_the_configuration_and_its_digest(api: Api) -> None:
    reply = api.client.get("/v1/training")
    assert reply.status_code == 200
    assert reply.json() == {"digest": "0x" + TRAINING.digest().hex(),
                            "config": TRAINING.as_json()}


def test_identity_is_open_and_holds_public_halves_only(api: Api) -> None:
    reply = api.client.get("/v1/identity")
    assert reply.status_code == 200
    assert PublicIdentity.model_validate(reply.json()) == IDENTITY


def test_the_ceremony_steps_reach_the_node(api: Api) -> None:
    created = api.client.post("/v1/he-key", headers=GOOD)
    assert created.status_code == 200 and created.json()["digest"] == "0x" + "ab" * 32
    swarm = api.client.post("/v1/swarm", headers=GOOD,
                            json={"contract": OTHER.lower(), "rpc_url": "http://chain:8545",
                                  "training": TRAINING.as_json()})
    assert swarm.status_code == 200 and swarm.json()["state"] == "awaiting key"
    wrapped = api.client.post("/v1/he-key/wrapped", headers=GOOD).json()
    assert wrapped == {"epoch": 0, "keys": [{"address": OTHER, "wrapped": SEALED}]}
    delivered = api.client.post("/v1/he-key/delivery", headers=GOOD,
                                json={"wrapped": SEALED})
    assert delivered.status_code == 200 and delivered.json()["state"] == "member"
    names = [name for name, _ in api.founding.calls]
    assert names == ["create_key", "join_swarm", "wrap_keys", "accept_key"]
    assert api.founding.calls[1][1] == SwarmAssignment(contract=OTHER,
                                                       rpc_url="http://chain:8545",
                                                       training=TRAINING.as_json())
    assert api.founding.calls[3][1] == KeyDelivery(epoch=0, wrapped=SEALED)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/swarm", {"contract": "0x1234", "rpc_url": "http://chain:8545"}),
    ("/v1/swarm", {"contract": OTHER, "rpc_url": "chain:8545"}),
    ("/v1/swarm", {"rpc_url": "http://chain:8545"}),
    ("/v1/he-key/delivery", {"epoch": -1, "wrapped": SEALED}),
    ("/v1/he-key/delivery", {"epoch": 0}),
    ("/v1/he-key/delivery", {"epoch": 0, "wrapped": "sealed"}),
], ids=str)
def test_malformed_ceremony_calls_are_refused_before_the_node(api: Api, path: str,
                                                              body: dict[str, Any]) -> None:
    reply = api.client.post(path, headers=GOOD, json=body)
    assert reply.status_code == 422, reply.text
    assert api.founding.calls == []


@pytest.mark.parametrize("status", [409, 422, 502])
def test_a_refused_ceremony_step_answers_its_status(api: Api, status: int) -> None:
    api.founding.refusal = Refused(status, f"refused with {status}")
    for path, body in (("/v1/he-key", None),
                       ("/v1/swarm", {"contract": OTHER, "rpc_url": "http://c:1",
                                      "training": TRAINING.as_json()}),
                       ("/v1/he-key/wrapped", None),
                       ("/v1/he-key/delivery", {"wrapped": SEALED})):
        reply = api.client.post(path, headers=GOOD, json=body)
        assert reply.status_code == status
        assert reply.json() == {"detail": f"refused with {status}"}


def test_a_nodes_identity_is_made_once_in_its_own_state_dir(tmp_path: Path) -> None:
    identity, tls = ensure_identity(tmp_path, "basel", "basel.example:50051")
    again, tls_again = ensure_identity(tmp_path, "basel", "basel.example:50051")
    assert again == identity and tls_again == tls
    assert (tmp_path / IDENTITY_FILE).stat().st_mode & 0o077 == 0
    assert (tmp_path / "tls" / "node.key").stat().st_mode & 0o077 == 0
    assert b"PRIVATE KEY" not in tls.cert and b"PRIVATE KEY" in tls.key
    with pytest.raises(ConfigError, match="belongs to"):
        ensure_identity(tmp_path, "basel", "basel.example:50051", "0x" + "ab" * 32)


# ---------------------------------------------------------------------- the admin role


def test_the_admin_role_routes(api: Api) -> None:
    assert api.client.get("/v1/admin", headers=GOOD).json() == {"admin": ADDRESS,
                                                                "pending_admin": None}
    started = api.client.post("/v1/admin/transfer", headers=GOOD,
                              json={"address": OTHER.lower()})
    assert started.json() == {"admin": ADDRESS, "pending_admin": OTHER}
    assert api.client.post("/v1/admin/accept", headers=GOOD).status_code == 200
    assert api.client.post("/v1/admin/transfer", headers=GOOD,
                           json={"address": "0x12"}).status_code == 422
    assert api.sponsor.calls == [("admin_role", None), ("transfer_admin", OTHER),
                                 ("accept_admin", None)]
