"""The command line's one error boundary.

An error a user can act on — an :class:`ApiaryError`, a file or port the system refused
(``OSError``), a chain or API that did not answer — ends the command with one line
``Error: …`` on stderr and a non-zero exit code (the error's ``exit_code``; 130 after
Ctrl-C). Anything else is a bug and keeps its traceback. ``--debug`` (or
``APIARY_DEBUG=1``) shows the traceback of every error. Click's own usage errors keep
click's handling.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from apiary.core.errors import ApiaryError

INTERRUPTED = 130
"""The shell's exit status for a command ended by SIGINT (128 + 2)."""


class CommandFailed(click.ClickException):
    """An error already turned into its one line and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ErrorBoundaryGroup(click.Group):
    """A click group that reports its commands' errors as :func:`describe` says."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            raise CommandFailed("interrupted", INTERRUPTED) from None
        except Exception as exc:
            described = describe(exc)
            if described is None or ctx.params.get("debug"):
                raise
            raise CommandFailed(*described) from exc


def describe(exc: BaseException) -> tuple[str, int] | None:
    """The line and exit code for an error a user can act on; None for anything else."""
    if isinstance(exc, ApiaryError):
        return str(exc), exc.exit_code
    if isinstance(exc, _network_errors()):
        return _network_message(exc), 1
    if isinstance(exc, OSError):
        return _os_message(exc), 1
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    """HTTP client errors (the chain's JSON-RPC, a node's API). Only a module that is already
    imported can have raised its errors, so none is imported here."""
    errors: list[type[BaseException]] = []
    if (requests := sys.modules.get("requests")) is not None:
        errors.append(requests.RequestException)
    if (httpx := sys.modules.get("httpx")) is not None:
        errors.append(httpx.HTTPError)
    if (web3_exceptions := sys.modules.get("web3.exceptions")) is not None:
        errors.append(web3_exceptions.ProviderConnectionError)
    return tuple(errors)


def _network_message(exc: BaseException) -> str:
    url = _request_url(exc)
    reason = _root_os_error(exc)
    if url is None or reason is None:
        return str(exc)
    return f"cannot reach {url}: {reason}"


def _request_url(exc: BaseException) -> str | None:
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx: an error raised without its request
        return None
    url = getattr(request, "url", None)
    return None if url is None else str(url)


def _root_os_error(exc: BaseException) -> str | None:
    """The operating system's reason ("Connection refused") under a client library's
    wrapping, if there is one."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None),
                    *current.args]
    return None


def _os_message(exc: OSError) -> str:
    if not exc.strerror:
        return str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{exc.strerror}: {' -> '.join(names)}" if names else exc.strerror
