"""What the admin API takes in, against a real node runtime serving over real uvicorn: bodies
over the limit are refused with 413 before they are read, validation errors never echo the
input, and no bad input is a 500."""

from __future__ import annotations

import json
import resource
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from apiary.chain.devnet import free_port
from apiary.core.admin_token import AdminTokenRefused
from apiary.core.settings import NodeSettings
from apiary.node import runtime
from apiary.node.api import create_app
from apiary.node.invites import InviteBook
from apiary.node.keys import KeyRing
from apiary.node.state import NodeState
from tests.test_api import GOOD, TOKEN, FakeTrainer, join_body

LIMIT = 256 << 10
MiB = 1 << 20


@dataclass
class Served:
    url: str
    port: int
    invites: InviteBook


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A real node runtime outside any swarm, its admin API on real uvicorn."""
    monkeypatch.setattr(runtime, "PROBE_TIMEOUT_S", 0.1)
    port = free_port()
    settings = NodeSettings(name="limits", admin_token=TOKEN, state_dir=tmp_path,
                            api_port=port, api_max_body_bytes=LIMIT,
                            rpc_url="http://127.0.0.1:1")
    invites = InviteBook(tmp_path)
    node = runtime.NodeRuntime(settings, cast(Any, FakeTrainer()), NodeState.open(tmp_path),
                               KeyRing(tmp_path), invites)
    node.start_api()
    try:
        yield Served(f"http://127.0.0.1:{port}", port, invites)
    finally:
        node.shutdown()


def _raw(port: int, head: bytes, body: Iterator[bytes]) -> bytes:
    """Send `head`, then `body` until the server stops reading; the server's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in body:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed: it reads no further
            pass
        answer = b""
        while data := sock.recv(65536):
            answer += data
        return answer


def _chunks(total: int, size: int = MiB) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def _status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_200_mb_declared_body_is_refused_before_it_is_read(served: Served) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    head = (b"POST /v1/members HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 209715200\r\n\r\n")
    answer = _raw(served.port, head, _chunks(200 * MiB))
    status, body = _status_and_body(answer)
    assert status == 413 and len(answer) < 1000
    assert body == {"detail": f"request body too large: at most {LIMIT} bytes"}
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100 * 1024
    assert served.invites.snapshot() == {}
    assert httpx.get(f"{served.url}/v1/health").status_code == 200


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(served: Served) -> None:
    head = (b"POST /v1/members HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"x" * (64 << 10)
    framed = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3200))  # 200 MiB
    answer = _raw(served.port, head, framed)
    status, body = _status_and_body(answer)
    assert status == 413 and "too large" in body["detail"] and len(answer) < 1000


def test_a_body_under_the_limit_is_still_read(served: Served) -> None:
    reply = httpx.post(f"{served.url}/v1/members", json=join_body())
    assert reply.status_code == 409  # the real sponsor: not a swarm member
    assert reply.json() == {"detail": "this node is not an active swarm member"}


def test_a_malformed_content_length_is_400(served: Served) -> None:
    head = (b"POST /v1/invites HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 12\r\ncontent-length: 13\r\n\r\n")
    answer = _raw(served.port, head, iter([b'{"ttl_s": 1}']))
    assert answer.startswith(b"HTTP/1.1 400")


def test_validation_errors_name_the_field_and_never_echo_the_input(served: Served) -> None:
    secret = "s3cr3t-" * 10_000  # twice 70 kB: under the body limit
    body = join_body(endpoint=secret, x25519_public_key=secret, tls_certificate="no")
    reply = httpx.post(f"{served.url}/v1/members", json=body)
    assert reply.status_code == 422 and len(reply.content) < 2000
    assert "s3cr3t" not in reply.text
    fields = {tuple(error["loc"]) for error in reply.json()["detail"]}
    assert {("body", "endpoint"), ("body", "x25519_public_key"),
            ("body", "tls_certificate")} <= fields
    assert all(set(error) == {"loc", "msg", "type"} for error in reply.json()["detail"])


def test_many_errors_are_counted_not_listed(served: Served) -> None:
    reply = httpx.post(f"{served.url}/v1/he-key/delivery", headers=GOOD,
                       json={"epoch": 0, "wrapped": {str(i): i for i in range(5000)}})
    assert reply.status_code == 422 and len(reply.content) < 5000
    assert reply.json()["detail"][-1]["msg"] == "and 4980 more errors"


@pytest.mark.parametrize("raw", ['{"ttl_s": NaN}', '{"ttl_s": Infinity}', '{"ttl_s": 1e400}',
                                 '{"ttl_s": ' + "9" * 5000 + "}", "[" * 5000 + "]" * 5000])
def test_non_finite_or_absurd_numbers_are_4xx(served: Served, raw: str) -> None:
    reply = httpx.post(f"{served.url}/v1/invites", content=raw,
                       headers={**GOOD, "content-type": "application/json"})
    assert reply.status_code in (400, 422), reply.text  # 400: not JSON Python can parse
    assert served.invites.snapshot() == {}


BAD_ADDRESSES = ["nope", "0x1234", "0x" + "zz" * 20, "%00", "a" * 3000]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
@pytest.mark.parametrize(("method", "suffix"), [("POST", "/approval"), ("DELETE", "")])
def test_a_bad_address_in_the_path_is_4xx(served: Served, address: str, method: str,
                                          suffix: str) -> None:
    reply = httpx.request(method, f"{served.url}/v1/members/{address}{suffix}", headers=GOOD)
    assert 400 <= reply.status_code < 500, reply.text
    assert address not in reply.text


def test_no_body_on_any_route_is_a_500(served: Served) -> None:
    """A sweep of wrong types, non-finite numbers and oversized strings over every field of
    every route with a body (some bodies are valid: a field left out has its default)."""
    routes = [("POST", p) for p in ("/v1/invites", "/v1/members", "/v1/join", "/v1/swarm",
                                    "/v1/he-key/delivery", "/v1/admin/transfer")]
    values = ["NaN", "-1", "1e400", '"x"', "null", "[]", "{}", '"' + "a" * 3000 + '"', "true"]
    fields = ["ttl_s", "invite", "address", "x25519_public_key", "endpoint", "tls_certificate",
              "dataset_size", "sponsor_url", "contract", "rpc_url", "epoch", "wrapped"]
    bodies = ["", "not json", "[]", "null"] + ["{" + f'"{f}": {v}' + "}"
                                              for f in fields for v in values]
    with httpx.Client(base_url=served.url, headers={**GOOD, "content-type": "application/json"}
                      ) as client:
        for method, path in routes:
            for raw in bodies:
                reply = client.request(method, path, content=raw)
                assert reply.status_code < 500, (path, raw[:40], reply.text[:200])


def test_an_invite_lifetime_is_a_number_not_a_boolean(served: Served) -> None:
    reply = httpx.post(f"{served.url}/v1/invites", headers=GOOD, json={"ttl_s": True})
    assert reply.status_code == 422 and served.invites.snapshot() == {}


def test_the_app_refuses_to_exist_without_a_real_token(tmp_path: Path) -> None:
    for token in (None, "change-me", "short"):
        settings = NodeSettings(name="n", admin_token=token, state_dir=tmp_path)
        with pytest.raises(AdminTokenRefused, match="APIARY_ADMIN_TOKEN"):
            create_app(settings, node=cast(Any, None), history=cast(Any, None),
                       invites=cast(Any, None), sponsor=cast(Any, None),
                       founding=cast(Any, None), joiner=None)
    assert NodeSettings.model_fields["admin_token"].default is None
