"""One typed client of a node's admin API: `apiary admin`, the demo, the founding ceremony,
a joining node (towards its sponsor) and the tests all speak to nodes through it.

Every answer is parsed into the model the route declares (:mod:`apiary.node.schemas` and
the onboarding and founding models), and every failure is one :class:`AdminApiError` whose
message says what went wrong and what to do: the node cannot be reached, refused the token,
or refused the request with its own reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from apiary.core.errors import ApiaryError
from apiary.node.founding import (
    FoundingStatus,
    KeyDelivery,
    PublicContext,
    SwarmAssignment,
    TrainingInfo,
    WrappedKeys,
)
from apiary.node.identity import PublicIdentity
from apiary.node.onboarding import (
    AdminRole,
    Approval,
    Handover,
    JoinRequest,
    Pending,
    Removal,
    Rotation,
)
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

DEFAULT_TIMEOUT_S = 30.0
TOKEN_HINT = "give the node's admin token with --token, APIARY_ADMIN_TOKEN or " \
             "APIARY_ADMIN_TOKEN_FILE"

Answer = TypeVar("Answer", bound=BaseModel)


class AdminApiError(ApiaryError):
    """A call to a node's admin API failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def may_pass(self) -> bool:
        """No answer, or a 5xx: trying again later may succeed."""
        return self.status == 0 or self.status >= 500


class AdminUnreachable(AdminApiError):
    """No answer from the node (not running, wrong URL, a network fault)."""


class AdminTokenRejected(AdminApiError):
    """The node answered 401: no token, or the wrong one."""


class AdminClient:
    """The admin API of the node at ``url``. ``token`` is needed by every route but the
    open ones (health, readiness, identity, metrics, a joiner's admission and hand-over)."""

    def __init__(self, url: str, token: str | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                  transport=transport)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the node ---------------------------------------------------------------------
    def health(self, timeout_s: float | None = None) -> Health:
        return self._get(Health, "/v1/health", timeout_s=timeout_s)

    def ready(self) -> Ready:
        """Readiness, with its reasons; a node that is not ready answers 503 with them."""
        return self._call(Ready, "GET", "/v1/ready", accept=(200, 503))

    def status(self) -> NodeStatus:
        return self._get(NodeStatus, "/v1/status")

    def rounds(self) -> RoundHistory:
        return self._get(RoundHistory, "/v1/rounds")

    def model(self) -> ModelInfo:
        return self._get(ModelInfo, "/v1/model")

    def members(self) -> list[Member]:
        """The swarm's active members as the chain lists them (from ``/v1/status``)."""
        return self.status().members

    def identity(self) -> PublicIdentity:
        return self._get(PublicIdentity, "/v1/identity")

    def training(self) -> TrainingInfo:
        return self._get(TrainingInfo, "/v1/training")

    def wait_healthy(self, timeout_s: float, *, alive: Callable[[], bool] = lambda: True,
                     poll_s: float = 0.2) -> Health:
        """Poll ``/v1/health`` until the node answers; AdminUnreachable after ``timeout_s``
        (or as soon as ``alive()`` says the node's process is gone)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.health(timeout_s=2.0)
            except AdminUnreachable as exc:
                if not alive():
                    raise AdminUnreachable(f"the node at {self.url} exited before its admin "
                                           "API answered") from exc
                if time.monotonic() > deadline:
                    raise AdminUnreachable(f"the node's admin API at {self.url} did not "
                                           f"answer within {timeout_s:g} s; is it running "
                                           "and the URL right?") from exc
            time.sleep(poll_s)

    # -- membership -------------------------------------------------------------------
    def create_invite(self, ttl_s: float = 3600.0) -> InviteCreated:
        return self._call(InviteCreated, "POST", "/v1/invites", {"ttl_s": float(ttl_s)},
                          accept=(201,))

    def start_join(self, sponsor_url: str, invite: str) -> JoinProgress:
        return self._call(JoinProgress, "POST", "/v1/join",
                          {"sponsor_url": sponsor_url, "invite": invite}, accept=(202,))

    def join_progress(self) -> JoinProgress:
        return self._get(JoinProgress, "/v1/join")

    def follow_join(self, timeout_s: float = 120.0, *, poll_s: float = 0.5,
                    on_change: Callable[[JoinProgress], None] | None = None) -> JoinProgress:
        """Poll the join until it is ``member`` or ``failed`` (returned either way); an
        AdminApiError if it is neither after ``timeout_s``. ``on_change`` sees every new
        state."""
        deadline = time.monotonic() + timeout_s
        last: str | None = None
        while True:
            progress = self.join_progress()
            if progress.state != last and on_change is not None:
                on_change(progress)
            last = progress.state
            if progress.state in ("member", "failed"):
                return progress
            if time.monotonic() > deadline:
                raise AdminApiError(f"the join of the node at {self.url} is still "
                                    f"{progress.state!r} after {timeout_s:g} s")
            time.sleep(poll_s)

    def approve(self, address: str) -> Approval:
        return self._call(Approval, "POST", f"/v1/members/{address}/approval")

    def remove(self, address: str) -> Removal:
        return self._call(Removal, "DELETE", f"/v1/members/{address}")

    def rotate_key(self) -> Rotation:
        return self._call(Rotation, "POST", "/v1/keys/rotation")

    def admin_role(self) -> AdminRole:
        return self._get(AdminRole, "/v1/admin")

    def transfer_admin(self, address: str) -> AdminRole:
        return self._call(AdminRole, "POST", "/v1/admin/transfer", {"address": address})

    def accept_admin(self) -> AdminRole:
        return self._call(AdminRole, "POST", "/v1/admin/accept")

    # -- a joining node towards its sponsor (authorised by the invite, not the token) --
    def request_admission(self, request: JoinRequest) -> Handover | Pending:
        """``POST /v1/members``: the hand-over, or Pending while a majority approves."""
        reply = self._send("POST", "/v1/members", request.model_dump())
        if reply.status_code == 202:
            return _parse(Pending, reply, self.url)
        self._check(reply, (200,))
        return _parse(Handover, reply, self.url)

    def resume_handover(self, address: str, request: HandoverRequest) -> Handover:
        return self._call(Handover, "POST", f"/v1/members/{address}/handover",
                          request.model_dump())

    # -- the founding ceremony --------------------------------------------------------
    def founding_status(self) -> FoundingStatus:
        return self._get(FoundingStatus, "/v1/swarm")

    def create_key(self) -> PublicContext:
        return self._call(PublicContext, "POST", "/v1/he-key")

    def assign_swarm(self, assignment: SwarmAssignment) -> FoundingStatus:
        return self._call(FoundingStatus, "POST", "/v1/swarm", assignment.model_dump())

    def wrap_keys(self) -> WrappedKeys:
        return self._call(WrappedKeys, "POST", "/v1/he-key/wrapped")

    def deliver_key(self, delivery: KeyDelivery) -> FoundingStatus:
        return self._call(FoundingStatus, "POST", "/v1/he-key/delivery", delivery.model_dump())

    # -- plumbing ---------------------------------------------------------------------
    def _get(self, model: type[Answer], path: str, *,
             timeout_s: float | None = None) -> Answer:
        return self._call(model, "GET", path, timeout_s=timeout_s)

    def _call(self, model: type[Answer], method: str, path: str, body: Any = None, *,
              accept: tuple[int, ...] = (200,), timeout_s: float | None = None) -> Answer:
        reply = self._send(method, path, body, timeout_s=timeout_s)
        self._check(reply, accept)
        return _parse(model, reply, self.url)

    def _send(self, method: str, path: str, body: Any = None, *,
              timeout_s: float | None = None) -> httpx.Response:
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        try:
            return self._http.request(method, path, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise AdminUnreachable(f"cannot reach the node's admin API at {self.url} "
                                   f"({type(exc).__name__}: {exc}); is the node running "
                                   "and the URL right?") from None

    def _check(self, reply: httpx.Response, accept: tuple[int, ...]) -> None:
        if reply.status_code in accept:
            return
        what = f"{reply.request.method} {reply.request.url.path}"
        detail = _detail(reply)
        if reply.status_code == 401:
            raise AdminTokenRejected(f"the node at {self.url} refused the admin token for "
                                     f"{what} ({detail}): {TOKEN_HINT}", 401, detail)
        raise AdminApiError(f"the node at {self.url} refused {what} ({reply.status_code}): "
                            f"{detail}", reply.status_code, detail)


def _parse(model: type[Answer], reply: httpx.Response, url: str) -> Answer:
    try:
        return model.model_validate(reply.json())
    except (ValueError, ValidationError) as exc:
        raise AdminApiError(f"the node at {url} answered {reply.request.url.path} with "
                            f"something that is not a {model.__name__}: {exc}",
                            reply.status_code) from None


def _detail(reply: httpx.Response) -> str:
    """The API's ``{"detail": ...}``, a validation error list flattened, or the text (an
    answer that is not the API's, e.g. a proxy's)."""
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        return reply.text[:200]
    if detail is None:
        return reply.text[:200]
    if isinstance(detail, list):
        return "; ".join(_validation_error(item) for item in detail)
    return str(detail)


def _validation_error(item: Any) -> str:
    """One of FastAPI's validation errors as ``field: message`` (``ttl_s: Input should be
    greater than 0``), without the part of the request it is in (body, path, query)."""
    if not isinstance(item, dict):
        return str(item)
    where = [str(part) for part in item.get("loc", [])]
    if where[:1] and where[0] in ("body", "path", "query", "header"):
        where = where[1:]
    message = str(item.get("msg", item))
    return f"{'.'.join(where)}: {message}" if where else message
