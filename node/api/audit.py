"""One audit line per admin call: who called, what, and what came of it.

Every route that needs the admin token is audited, and so are the routes a joining node
calls with its invite (``POST /v1/members``, the hand-over): they change who is in the
swarm. A line says who (the client's address, and whether the bearer token was valid,
wrong or missing), what (the method, the route's path template, the member address in the
path) and the result (the status code). It never holds the token, an invite, a key or the
body: only the token's *verdict* is logged. Logger ``apiary.audit``; with ``--log-format
json`` each part is a field of its own (client, token, method, route, member, status).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Literal

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiary.node.api.deps import require_admin

log = logging.getLogger("apiary.audit")

TokenVerdict = Literal["valid", "wrong", "missing"]


def needs_admin_token(route: BaseRoute) -> bool:
    """The route depends (directly or through another dependency) on the admin token."""
    if not isinstance(route, APIRoute):
        return False
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        if dependant.call is require_admin:
            return True
        pending += dependant.dependencies
    return False


def token_verdict(headers: Iterable[tuple[bytes, bytes]], expected: str | None) -> TokenVerdict:
    """What the ``Authorization: Bearer`` header holds, compared in constant time."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, credentials = value.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "missing"
        if expected and secrets.compare_digest(credentials.strip().encode(), expected.encode()):
            return "valid"
        return "wrong"
    return "missing"


class AuditLog:
    """Pure ASGI middleware logging one line per audited call once it is answered. The
    route is the one the router chose (a call refused before routing, such as a body over
    the size limit, names no route and is not audited)."""

    def __init__(self, app: ASGIApp, token: str | None,
                 also: Iterable[APIRouter] = ()) -> None:
        self.app = app
        self.token = token
        self.also = {(route.path, method) for router in also for route in router.routes
                     if isinstance(route, APIRoute) for method in route.methods}

    def _audited(self, scope: Scope) -> APIRoute | None:
        """The audited route the router sent this request to (it notes it in the scope)."""
        route = scope.get("route")
        if not isinstance(route, APIRoute):
            return None
        if needs_admin_token(route) or (route.path, scope["method"]) in self.also:
            return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            route = self._audited(scope)
            if route is not None:
                self._log(scope, route, scope.get("path_params", {}), status)

    def _log(self, scope: Scope, route: APIRoute, params: dict[str, str], status: int) -> None:
        client = scope.get("client")
        who = client[0] if client else "unknown"
        token = token_verdict(scope.get("headers", ()), self.token)
        member = params.get("address")
        on = f" member={member}" if member else ""
        fields = {"client": who, "token": token, "method": scope["method"],
                  "route": route.path, "status": status, **({"member": member} if member else {})}
        log.log(logging.INFO if status < 400 else logging.WARNING,
                "admin call %s %s%s from %s (token %s): %d", scope["method"], route.path, on,
                who, token, status, extra=fields)
