"""One audit line per admin call: who, what and the result, never a token, an invite or a
body. The real admin app over stub collaborators (tests/test_api.py), its log captured."""

from __future__ import annotations

import logging

import pytest

from tests.test_api import ADDRESS, GOOD, TOKEN, Api, api, fake_link, join_body  # noqa: F401

AUDIT = "apiary.audit"


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == AUDIT]


def test_an_admin_call_is_one_line_with_who_what_and_the_result(
    api: Api, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    api.node.link = fake_link()
    with caplog.at_level(logging.INFO, logger=AUDIT):
        reply = api.client.post("/v1/invites", headers=GOOD, json={"ttl_s": 60})
    assert reply.status_code == 201
    (record,) = audit_records(caplog)
    assert record.getMessage() == "admin call POST /v1/invites from testclient (token valid): 201"
    assert record.levelno == logging.INFO
    fields = {k: getattr(record, k) for k in ("client", "token", "method", "route", "status")}
    assert fields == {"client": "testclient", "token": "valid", "method": "POST",
                      "route": "/v1/invites", "status": 201}
    assert TOKEN not in caplog.text and reply.json()["invite"] not in caplog.text


@pytest.mark.parametrize(("headers", "verdict"), [
    ({}, "missing"), ({"Authorization": "Bearer not-the-token-at-all"}, "wrong"),
    ({"Authorization": f"Basic {TOKEN}"}, "missing"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "wrong"),
])
def test_a_refused_call_is_audited_as_a_warning_without_the_token(
    api: Api, caplog: pytest.LogCaptureFixture, headers: dict[str, str],  # noqa: F811
    verdict: str,
) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT):
        reply = api.client.delete(f"/v1/members/{ADDRESS}", headers=headers)
    assert reply.status_code == 401
    (record,) = audit_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (f"admin call DELETE /v1/members/{{address}} member={ADDRESS} "
                                   f"from testclient (token {verdict}): 401")
    assert record.member == ADDRESS and record.token == verdict
    assert TOKEN not in caplog.text and "not-the-token-at-all" not in caplog.text


def test_invitee_calls_are_audited_without_their_invite_or_body(
    api: Api, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    body = join_body()
    with caplog.at_level(logging.INFO, logger=AUDIT):
        admitted = api.client.post("/v1/members", json=body)
        handover = api.client.post(f"/v1/members/{ADDRESS}/handover", json={})
    assert admitted.status_code == 200 and handover.status_code == 422
    messages = [r.getMessage() for r in audit_records(caplog)]
    assert messages == [
        "admin call POST /v1/members from testclient (token missing): 200",
        f"admin call POST /v1/members/{{address}}/handover member={ADDRESS} from testclient "
        "(token missing): 422",
    ]
    assert body["invite"] not in caplog.text and body["tls_certificate"][:60] not in caplog.text


def test_open_routes_are_not_audited(api: Api, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    with caplog.at_level(logging.INFO, logger=AUDIT):
        for path in ("/v1/health", "/v1/ready", "/metrics", "/v1/identity", "/nowhere"):
            api.client.get(path)
    assert audit_records(caplog) == []
