"""The admin client (node/client.py) against the real admin app over the stub collaborators
of tests/test_api.py, in this process; its two polling loops against a scripted transport."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from apiary.chain.devnet import free_port
from apiary.node.api.deps import get_joiner
from apiary.node.client import (
    TOKEN_HINT,
    AdminApiError,
    AdminClient,
    AdminTokenRejected,
    AdminUnreachable,
)
from apiary.node.founding import (
    FoundingStatus,
    KeyDelivery,
    PublicContext,
    SwarmAssignment,
    WrappedKeys,
)
from apiary.node.identity import PublicIdentity
from apiary.node.invites import Refused
from apiary.node.onboarding import (
    AdminRole,
    Approval,
    JoinRequest,
    Pending,
    Removal,
    Rotation,
)
from apiary.node.ports import ReadinessFacts
from apiary.node.resumption import HandoverRequest
from apiary.node.schemas import (
    Health,
    InviteCreated,
    JoinProgress,
    Member,
    ModelInfo,
    NodeStatus,
    Ready,
    RoundHistory,
)
from tests.test_api import (  # noqa: F401  (api: the fixture)
    ADDRESS,
    HANDOVER,
    IDENTITY,
    OTHER,
    SEALED,
    TOKEN,
    TRAINING,
    Api,
    FakeContract,
    api,
    fake_link,
    join_body,
)
from tests.test_api import START as JOIN_START

WRONG_TOKEN = "a-wrong-but-long-admin-token"


def client_of(api: Api, token: str | None = TOKEN) -> AdminClient:  # noqa: F811
    """The client speaking to the app through the test client's transport (no socket)."""
    return AdminClient(str(api.client.base_url), token, transport=api.client._transport)


@pytest.fixture
def client(api: Api) -> Iterator[AdminClient]:  # noqa: F811
    with client_of(api) as admin:
        yield admin


def scripted(answer: Callable[[httpx.Request], httpx.Response]) -> AdminClient:
    return AdminClient("http://node:8000", TOKEN, transport=httpx.MockTransport(answer))


# ---------------------------------------------------------------------- each method's model


def test_the_nodes_own_routes_parse_into_their_models(api: Api,  # noqa: F811
                                                      client: AdminClient) -> None:
    api.node.link = fake_link()
    health = client.health()
    assert health == Health(status="ok", node="basel", round=2)
    assert client.ready() == Ready(status="ready", node="basel", reasons=[])
    status = client.status()
    assert isinstance(status, NodeStatus)
    assert (status.node, status.mode, status.address, status.round) == ("basel", "swarm",
                                                                         ADDRESS, 2)
    assert status.last_metrics is not None and status.last_metrics.relay is True
    assert client.members() == [Member(address=ADDRESS, endpoint="a:1"),
                                Member(address=OTHER, endpoint="b:2")]
    rounds = client.rounds()
    assert isinstance(rounds, RoundHistory)
    assert [entry.round for entry in rounds.rounds] == [1, 2]
    assert rounds.rounds[1].seconds == {"train": 1.5, "exchange": 0.25}
    model = client.model()
    assert isinstance(model, ModelInfo) and model.weights_digest == f"{2:064x}"
    assert model.evaluation is not None and model.evaluation.accuracy == 0.75
    assert client.identity() == IDENTITY and isinstance(client.identity(), PublicIdentity)


def test_readiness_that_is_not_ready_is_an_answer_not_an_error(api: Api,  # noqa: F811
                                                               client: AdminClient) -> None:
    api.node.facts = ReadinessFacts(member=False, upstream="chain", upstream_reachable=True,
                                    he_key=True)
    ready = client.ready()
    assert ready.status == "not ready" and len(ready.reasons) == 1
    assert "swarm member" in ready.reasons[0]


def test_membership_routes_parse_into_their_models(api: Api,  # noqa: F811
                                                   client: AdminClient) -> None:
    api.node.link = fake_link()
    invite = client.create_invite(60)
    assert isinstance(invite, InviteCreated) and invite.sponsor == "basel"
    assert api.invites.check(invite.invite, ADDRESS).used_by is None
    assert client.approve(ADDRESS.lower()) == Approval(address=ADDRESS, approvals=2,
                                                       member=True)
    assert client.remove(OTHER) == Removal(removed=OTHER, key_epoch=1, from_round=3,
                                           delivered=[OTHER], failed=[])
    assert client.rotate_key() == Rotation(key_epoch=2, from_round=4, delivered=[OTHER],
                                           failed=[ADDRESS])
    assert client.admin_role() == AdminRole(admin=ADDRESS, pending_admin=None)
    assert client.transfer_admin(OTHER) == AdminRole(admin=ADDRESS, pending_admin=OTHER)
    assert client.accept_admin() == AdminRole(admin=ADDRESS, pending_admin=None)
    assert [name for name, _ in api.sponsor.calls] == [
        "approve", "remove", "rotate", "admin_role", "transfer_admin", "accept_admin"]


def test_a_join_starts_and_reports_progress(api: Api, client: AdminClient) -> None:  # noqa: F811
    assert client.join_progress().state == "idle"
    started = client.start_join(JOIN_START["sponsor_url"], JOIN_START["invite"])
    assert isinstance(started, JoinProgress) and started.state == "requesting admission"
    assert api.joiner.started == [(JOIN_START["sponsor_url"], JOIN_START["invite"])]
    assert client.join_progress().sponsor == JOIN_START["sponsor_url"]


def test_admission_answers_the_hand_over_or_pending(api: Api) -> None:  # noqa: F811
    request = JoinRequest.model_validate(join_body())
    with client_of(api, token=None) as invitee:
        assert invitee.request_admission(request) == HANDOVER
        api.sponsor.answer = Pending(approvals=1, needed=2)
        assert invitee.request_admission(request) == Pending(approvals=1, needed=2)
        api.sponsor.resume = lambda _address, _request: HANDOVER  # type: ignore[attr-defined]
        again = HandoverRequest(invite="i" * 43, issued_at=1.0, signature="0x" + "ab" * 65)
        assert invitee.resume_handover(ADDRESS, again) == HANDOVER


def test_the_ceremony_steps_parse_into_their_models(api: Api,  # noqa: F811
                                                    client: AdminClient) -> None:
    assert client.founding_status() == FoundingStatus(state="no swarm", address=ADDRESS,
                                                      contract=None)
    assert isinstance(client.create_key(), PublicContext)
    assert client.training().config == TRAINING.as_json()
    assigned = client.assign_swarm(SwarmAssignment(contract=OTHER, rpc_url="http://c:1",
                                                   training=TRAINING.as_json()))
    assert assigned.state == "awaiting key" and assigned.contract == OTHER
    wrapped = client.wrap_keys()
    assert isinstance(wrapped, WrappedKeys) and wrapped.keys[0].address == OTHER
    delivered = client.deliver_key(KeyDelivery(epoch=0, wrapped=SEALED))
    assert delivered.state == "member" and delivered.contract == FakeContract.address
    assert [name for name, _ in api.founding.calls] == [
        "status", "create_key", "join_swarm", "wrap_keys", "accept_key"]


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize("token", [None, WRONG_TOKEN], ids=["none", "wrong"])
def test_a_refused_token_says_how_to_give_one_and_never_shows_it(
    api: Api, token: str | None,  # noqa: F811
) -> None:
    with client_of(api, token) as client, pytest.raises(AdminTokenRejected) as refused:
        client.status()
    error = refused.value
    assert error.status == 401 and not error.may_pass
    message = str(error)
    assert "GET /v1/status" in message and TOKEN_HINT in message
    assert "--token" in message and "APIARY_ADMIN_TOKEN_FILE" in message
    assert "bearer token" in error.detail
    assert WRONG_TOKEN not in message and TOKEN not in message


def test_a_refusal_carries_the_status_and_the_nodes_reason(api: Api,  # noqa: F811
                                                          client: AdminClient) -> None:
    api.sponsor.refusal = Refused(409, "already approved")
    with pytest.raises(AdminApiError) as refused:
        client.approve(ADDRESS)
    error = refused.value
    assert type(error) is AdminApiError
    assert (error.status, error.detail, error.may_pass) == (409, "already approved", False)
    assert str(error) == (f"the node at {client.url} refused POST /v1/members/{ADDRESS}/"
                          "approval (409): already approved")
    assert TOKEN not in str(error)


def test_a_node_outside_the_swarm_refuses_an_invite(api: Api,  # noqa: F811
                                                    client: AdminClient) -> None:
    with pytest.raises(AdminApiError, match="not a swarm member") as refused:
        client.create_invite()
    assert refused.value.status == 409
    assert api.invites.snapshot() == {}


def test_a_node_that_does_not_join_answers_404(api: Api, client: AdminClient) -> None:  # noqa: F811
    api.app.dependency_overrides[get_joiner] = lambda: None
    with pytest.raises(AdminApiError) as refused:
        client.join_progress()
    assert refused.value.status == 404 and refused.value.detail == "this node does not join"


@pytest.mark.parametrize(("call", "where"), [
    (lambda c: c.create_invite(0), "ttl_s"),
    (lambda c: c.create_invite(10**9), "ttl_s"),
    (lambda c: c.approve("not-an-address"), "address"),
    (lambda c: c.start_join("sponsor:8000", "x"), "sponsor_url"),
], ids=["ttl zero", "ttl too long", "address", "sponsor url"])
def test_a_validation_error_is_one_line_naming_the_field(
    api: Api, client: AdminClient, call: Callable[[AdminClient], object],  # noqa: F811
    where: str,
) -> None:
    api.node.link = fake_link()
    with pytest.raises(AdminApiError) as refused:
        call(client)
    error = refused.value
    assert error.status == 422 and not error.may_pass
    assert error.detail and "\n" not in error.detail and "\n" not in str(error)
    assert where in error.detail, error.detail
    assert "{" not in error.detail, "flattened, not the raw JSON"
    assert api.invites.snapshot() == {} and api.sponsor.calls == []
    assert api.joiner.started == []


@pytest.mark.parametrize("status", [502, 503])
def test_a_server_error_may_pass(api: Api, client: AdminClient, status: int) -> None:  # noqa: F811
    api.founding.refusal = Refused(status, "the chain did not answer")
    with pytest.raises(AdminApiError) as refused:
        client.create_key()
    error = refused.value
    assert error.status == status and error.may_pass
    assert error.detail == "the chain did not answer"


def test_an_unreachable_node_names_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with AdminClient(url, TOKEN, timeout_s=5) as client, \
            pytest.raises(AdminUnreachable) as unreachable:
        client.status()
    error = unreachable.value
    assert error.status == 0 and error.may_pass
    assert f"cannot reach the node's admin API at {url}" in str(error)
    assert "is the node running" in str(error) and TOKEN not in str(error)


# ---------------------------------------------------------------------- answers of another shape


@pytest.mark.parametrize("body", [b'{"node": "basel"}', b"<html>a proxy's page</html>",
                                  b"[]", b""], ids=["missing fields", "html", "list", "empty"])
def test_an_answer_that_is_not_the_declared_model_is_an_error_naming_it(body: bytes) -> None:
    client = scripted(lambda _request: httpx.Response(200, content=body))
    with client, pytest.raises(AdminApiError) as wrong:
        client.status()
    assert "/v1/status" in str(wrong.value) and "not a NodeStatus" in str(wrong.value)
    assert wrong.value.status == 200 and not isinstance(wrong.value, AdminUnreachable)


@pytest.mark.parametrize(("body", "detail"), [
    (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    (b'{"error": "upstream timed out"}', '{"error": "upstream timed out"}'),
    (b'["upstream"]', '["upstream"]'),
], ids=["html", "no detail field", "list"])
def test_a_refusal_that_is_not_the_apis_shows_what_came_back(body: bytes, detail: str) -> None:
    client = scripted(lambda _request: httpx.Response(502, content=body))
    with client, pytest.raises(AdminApiError) as refused:
        client.health()
    assert refused.value.status == 502 and refused.value.may_pass
    assert refused.value.detail == detail and detail in str(refused.value)


# ---------------------------------------------------------------------- the polling loops


def health_after(failures: int, seen: list[httpx.Request]) -> AdminClient:
    """A node whose API refuses connections `failures` times, then answers."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= failures:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"status": "ok", "node": "basel", "round": 0})

    return scripted(answer)


def test_wait_healthy_returns_once_the_node_answers() -> None:
    seen: list[httpx.Request] = []
    with health_after(3, seen) as client:
        assert client.wait_healthy(60, poll_s=0.001) == Health(status="ok", node="basel",
                                                               round=0)
    assert len(seen) == 4 and all(r.url.path == "/v1/health" for r in seen)


def test_wait_healthy_gives_up_after_its_timeout() -> None:
    seen: list[httpx.Request] = []
    with health_after(10**9, seen) as client, pytest.raises(AdminUnreachable) as gave_up:
        client.wait_healthy(0.05, poll_s=0.001)
    assert "did not answer within 0.05 s" in str(gave_up.value)
    assert "http://node:8000" in str(gave_up.value)
    assert len(seen) >= 2, "it kept asking until the deadline"


def test_wait_healthy_stops_as_soon_as_the_process_is_gone() -> None:
    seen: list[httpx.Request] = []
    checks: list[bool] = []

    def alive() -> bool:
        checks.append(True)
        return len(checks) < 3

    with health_after(10**9, seen) as client, pytest.raises(AdminUnreachable) as gone:
        client.wait_healthy(600, alive=alive, poll_s=0.001)
    assert "exited before its admin API answered" in str(gone.value)
    assert len(seen) == 3 and len(checks) == 3


def join_states(*states: str, error: str | None = None) -> tuple[AdminClient, list[str]]:
    """A node whose join goes through `states`, one per poll, then stays in the last."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("GET", "/v1/join")
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        state = states[min(len(asked), len(states) - 1)]
        asked.append(state)
        return httpx.Response(200, content=json.dumps({
            "state": state, "sponsor": "http://sponsor:8000", "address": None,
            "error": error if state == "failed" else None, "seconds": 1.0}))

    return scripted(answer), asked


@pytest.mark.parametrize("end", ["member", "failed"])
def test_follow_join_returns_when_the_join_ends(end: str) -> None:
    client, asked = join_states("requesting admission", "requesting admission",
                                "awaiting approval", "verifying", end, error="refused")
    changes: list[str] = []
    with client:
        progress = client.follow_join(60, poll_s=0.001,
                                      on_change=lambda p: changes.append(p.state))
    assert progress.state == end
    assert progress.error == ("refused" if end == "failed" else None)
    assert changes == ["requesting admission", "awaiting approval", "verifying", end]
    assert len(asked) == 5, "no poll after the end"


def test_follow_join_gives_up_after_its_timeout() -> None:
    client, asked = join_states("requesting admission", "awaiting approval")
    with client, pytest.raises(AdminApiError) as stuck:
        client.follow_join(0.05, poll_s=0.001)
    assert "still 'awaiting approval' after 0.05 s" in str(stuck.value)
    assert len(asked) >= 2
