"""How a node and the coordinator log: a level, plain text or one JSON object per line, and
the context of each line (which node, which round, which peer) as fields of its record.

The context comes from three places: the node's name is fixed for the process (given to
:func:`configure_logging`); the round is whatever :func:`in_round` says for the code running
it (a ``contextvars`` variable, so each thread sees its own); a peer is named where it is
involved, with ``extra={"peer": name, "peer_address": address}``. A JSON line carries each
one it knows as a field; a text line reads as before, ``node=… round=…`` in front.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import IO, Literal

from pythonjsonlogger.json import JsonFormatter

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

CONTEXT_FIELDS = ("node", "round", "peer", "peer_address")
"""Record attributes a line carries when they are known."""
QUIET_LIBRARIES = ("web3", "urllib3", "httpx", "httpcore", "uvicorn.access")
"""Libraries that chat at INFO about every request; they log warnings and errors only."""

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
_JSON_NAMES = {"levelname": "level", "name": "logger"}

_current_round: ContextVar[int | None] = ContextVar("apiary_round", default=None)


@contextlib.contextmanager
def in_round(round_number: int) -> Iterator[None]:
    """Every line logged by this code (this thread) inside the block belongs to the round."""
    token = _current_round.set(round_number)
    try:
        yield
    finally:
        _current_round.reset(token)


class ContextFilter(logging.Filter):
    """Puts the process's node name and the current round on each record that lacks them."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            if name in record.__dict__ and record.__dict__[name] is None:
                del record.__dict__[name]  # an unknown peer is no field, not a null one
        if self.node is not None and getattr(record, "node", None) is None:
            record.node = self.node
        if getattr(record, "round", None) is None:
            current = _current_round.get()
            if current is not None:
                record.round = current
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: node=… round=… message peer=…``: the context a message does not
    already spell out itself is added (most of the node's messages start with
    ``node=NAME round=N``)."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        missing = {name: value for name in ("node", "round", "peer")
                   if (value := getattr(record, name, None)) is not None
                   and f"{name}=" not in message}
        if missing:
            front = [f"{k}={v}" for k, v in missing.items() if k != "peer"]
            back = [f"peer={missing['peer']}"] if "peer" in missing else []
            record.message = " ".join([*front, message, *back])
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, the known context fields and
    any other ``extra`` the call gave."""
    return JsonFormatter(_JSON_FIELDS, rename_fields=_JSON_NAMES, timestamp="time")


def configure_logging(level: str = "info", fmt: str = "text", *, node: str | None = None,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Route every logger to one handler on stderr (or `stream`), replacing any earlier one;
    returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
