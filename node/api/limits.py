"""What the admin API takes in: a bounded request body, and validation errors that never
echo the input back.

The body limit is a pure ASGI middleware in front of everything, so no route, parser or
dependency ever holds more than `max_bytes` of a request: a declared ``Content-Length``
over the limit is refused before a byte is read, and a body streamed without one (or
longer than it said) is cut off as soon as the count passes the limit. Both answer 413
with a short JSON message.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_ERRORS = 20
"""Validation errors listed in one answer; the rest are counted."""
MAX_MESSAGE_CHARS = 200


class _BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit."""


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413 (pure ASGI, nothing buffered)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None or declared > self.max_bytes:
            await self._refuse(send, "a Content-Length that is not a number"
                               if declared is None else None)
            return
        received = 0
        started = exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers to a body cut short (FastAPI makes it a 400) is
            # dropped: the answer is the 413 below.
            nonlocal started
            if exceeded and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLarge):  # the app did not catch it: answered below
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send, reason: str | None = None) -> None:
        detail = (f"request refused: {reason}" if reason else
                  f"request body too large: at most {self.max_bytes} bytes")
        status = 400 if reason else 413
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared length (0 when none is declared); None when it is not a number."""
    values = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
    if not values:
        return 0
    try:
        lengths = {int(v) for v in values}
    except ValueError:
        return None
    if len(lengths) != 1 or min(lengths) < 0:
        return None
    return lengths.pop()


def describe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Each validation error as where it is and what is wrong — never the value given,
    which may be huge, secret, or not representable in JSON (NaN)."""
    described: list[dict[str, Any]] = [
        {"loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
         "msg": str(error.get("msg", "invalid"))[:MAX_MESSAGE_CHARS],
         "type": str(error.get("type", "value_error"))}
        for error in errors[:MAX_ERRORS]
    ]
    if len(errors) > MAX_ERRORS:
        described.append({"loc": [], "msg": f"and {len(errors) - MAX_ERRORS} more errors",
                          "type": "too_many_errors"})
    return described
