"""Start and stop a local anvil devnet with the flags large aggregates need."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from web3 import Web3

from apiary.chain.probe import PROBE_TIMEOUT_S, answers
from apiary.core.errors import ApiaryError
from apiary.core.listening import check_can_listen
from apiary.core.paths import NODE_MODULES
from apiary.core.processes import stop_process
from apiary.core.settings import ChainSettings

DEV_MNEMONIC = "test test test test test test test test test test test junk"
STOP_GRACE_S = 10.0
STATE_INTERVAL_S = 2
"""Seconds between two writes of the devnet's state file."""
GOOD_SUFFIX = ".good"
"""The last copy of the state file that parsed, beside it: anvil rewrites the file in place,
so a kill -9 in the middle of a write leaves it truncated."""


class DevnetError(ApiaryError, RuntimeError):
    """anvil could not be found or did not come up."""


def find_anvil(explicit: Path | None = None) -> Path:
    candidates = [explicit] if explicit else []
    candidates += [NODE_MODULES / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"]
    found = shutil.which("anvil")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate and candidate.exists():
            return candidate
    raise DevnetError("anvil not found: run `make deps` (npm package @foundry-rs/anvil)")


def dev_private_keys(count: int, mnemonic: str = DEV_MNEMONIC) -> list[str]:
    """Private keys of anvil's funded dev accounts (standard derivation path)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}").key.to_0x_hex()
        for i in range(count)
    ]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _check_can_listen(host: str, port: int) -> None:
    """Fail with a clear message, before anvil prints its own, when the port is taken."""
    check_can_listen(host, port, "another devnet running? choose a port with --port or "
                     "APIARY_DEVNET_PORT")


@dataclass
class Devnet:
    """A running anvil process; use as a context manager or call stop()."""

    settings: ChainSettings
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def rpc_url(self) -> str:
        return f"http://{self.settings.devnet_host}:{self.settings.devnet_port}"

    def command(self) -> list[str]:
        s = self.settings
        return [
            str(find_anvil(s.anvil_bin)),
            "--host", s.devnet_host,
            "--port", str(s.devnet_port),
            "--accounts", str(s.devnet_accounts),
            "--mnemonic", DEV_MNEMONIC,
            "--gas-limit", str(s.block_gas_limit),
            "--no-request-size-limit",
            "--silent",
            *self._history_flags(),
            *self._state_flags(),
        ]  # fmt: skip

    def _history_flags(self) -> list[str]:
        """Bounded memory and state file over weeks of rounds: recent blocks and states only."""
        s = self.settings
        flags = []
        if s.devnet_keep_blocks:
            flags += ["--transaction-block-keeper", str(s.devnet_keep_blocks)]
        if s.devnet_keep_states:
            flags += ["--prune-history", str(s.devnet_keep_states)]
        return flags

    def _state_flags(self) -> list[str]:
        """Load the chain from the state file and write it back every STATE_INTERVAL_S, so
        even a killed devnet comes back with the swarm's contract on it."""
        path = self.settings.devnet_state
        if path is None:
            return []
        path.parent.mkdir(parents=True, exist_ok=True)
        restore_good_state(path)
        return ["--state", str(path), "--state-interval", str(STATE_INTERVAL_S)]

    def keep_good_state(self) -> bool:
        """Copy the state file aside if it parses and changed; True when copied."""
        path = self.settings.devnet_state
        return path is not None and keep_good_state(path)

    def start(self, timeout: float = 20.0) -> Devnet:
        _check_can_listen(self.settings.devnet_host, self.settings.devnet_port)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL)
        try:
            self._wait_until_up(self.process, timeout)
        except BaseException:  # Ctrl-C included: never leave anvil running behind
            self.stop()
            raise
        return self

    def _wait_until_up(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """Each probe waits at most PROBE_TIMEOUT_S, so a port that accepts connections but
        never answers cannot hold the start past its deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                state = self.settings.devnet_state
                also = (f", or is its state file {state} unreadable (move it aside, or start "
                        "with --in-memory)" if state is not None and state.exists() else "")
                raise DevnetError(
                    f"anvil exited with {process.returncode}; "
                    f"is port {self.settings.devnet_port} already in use{also}?"
                )
            if answers(self.rpc_url, max(0.1, min(PROBE_TIMEOUT_S,
                                                  deadline - time.monotonic()))):
                return
            time.sleep(0.1)
        raise DevnetError(f"anvil did not answer on {self.rpc_url} within {timeout} s")

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": 120}))

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, STOP_GRACE_S)
        self.process = None

    def __enter__(self) -> Devnet:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parses(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def keep_good_state(path: Path) -> bool:
    """Keep a copy of the state file beside it (``state.json.good``) when it parses and is
    newer than the copy; written to a temporary file first, then renamed."""
    good = path.with_name(path.name + GOOD_SUFFIX)
    try:
        if good.exists() and good.stat().st_mtime >= path.stat().st_mtime:
            return False
    except OSError:
        return False
    if not _parses(path):
        return False
    partial = good.with_name(good.name + ".part")
    shutil.copy2(path, partial)
    os.replace(partial, good)
    return True


def restore_good_state(path: Path) -> bool:
    """Before anvil loads the state file: one that does not parse (truncated by a kill in
    mid-write) is moved aside as ``state.json.bad`` and the last good copy takes its place.
    True when a copy was restored; with no good copy the file stays for anvil to refuse."""
    good = path.with_name(path.name + GOOD_SUFFIX)
    if not path.exists() or _parses(path) or not _parses(good):
        return False  # nothing to do, or nothing better: anvil's own error says so
    os.replace(path, path.with_name(path.name + ".bad"))
    shutil.copy2(good, path)
    return True


@contextlib.contextmanager
def running_devnet(settings: ChainSettings | None = None) -> Iterator[Devnet]:
    """A devnet on a free loopback port (for tests, benchmarks and the demo)."""
    s = settings or ChainSettings.load()
    s = s.model_copy(update={"devnet_port": free_port(s.devnet_host)})
    with Devnet(s) as devnet:
        yield devnet
