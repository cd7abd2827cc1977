"""Is the chain there? Probes with a short timeout of their own, and a bounded wait that
says what it waits for and how long it still waits.

A chain that accepts connections but never answers (a wrong port, a hung process) must not
hold a command for a library's long request timeout: every probe gives up after
PROBE_TIMEOUT_S, and the wait as a whole after its own deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from web3 import Web3

from apiary.core.errors import ApiaryError

PROBE_TIMEOUT_S = 2.0
"""How long one probe waits for the chain's answer."""
SAY_EVERY_S = 5.0


class ChainUnreachable(ApiaryError):
    """The chain did not answer within the time allowed."""


def probe(rpc_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> Web3:
    """A Web3 client for probes: each request waits at most `timeout_s`."""
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))


def answers(rpc_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """The chain at `rpc_url` answers a JSON-RPC call within `timeout_s`."""
    try:
        return bool(probe(rpc_url, timeout_s).is_connected())
    except Exception:  # a probe answers yes or no, whatever went wrong
        return False


def wait_for_chain(rpc_url: str, timeout_s: float, *,
                   say: Callable[[str], None] | None = None,
                   error: type[ApiaryError] = ChainUnreachable) -> None:
    """Return once the chain answers; `error` when it has not within `timeout_s`. While it
    waits, `say` hears "waiting for the chain at URL (N s left)" every few seconds."""
    deadline = time.monotonic() + timeout_s
    said = float("-inf")
    while True:
        left = deadline - time.monotonic()
        if answers(rpc_url, max(0.1, min(PROBE_TIMEOUT_S, left))):
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise error(f"the chain at {rpc_url} did not answer within {timeout_s:g} s: is "
                        "it running (apiary devnet), and is the URL right (--rpc-url)?")
        if say is not None and time.monotonic() - said >= SAY_EVERY_S:
            say(f"waiting for the chain at {rpc_url} ({left:.0f} s left)")
            said = time.monotonic()
        time.sleep(min(0.5, left))
