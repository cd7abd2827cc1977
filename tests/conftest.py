"""Shared fixtures: one real anvil devnet per test session, one CKKS key set.

Test tiers: a test that uses the devnet is marked ``chain`` here automatically, so
``make test-fast`` (``-m "not chain and not slow"``) never starts a chain or a process.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from web3 import Web3

from apiary.chain.devnet import Devnet, dev_private_keys, running_devnet
from apiary.core.he import HEContext

# The long tiers announce each test with the time they have left (tests/progress_plugin.py).
pytest_plugins = ["tests.progress_plugin"]

CHAIN_FIXTURES = {"devnet", "w3"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CHAIN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.chain)


@pytest.fixture(scope="session")
def devnet() -> Iterator[Devnet]:
    with running_devnet() as chain:
        yield chain


@pytest.fixture(scope="session")
def w3(devnet: Devnet) -> Web3:
    return devnet.web3()


@pytest.fixture(scope="session")
def dev_keys() -> list[str]:
    """Key 0 is the admin; 1..8 are hospitals; the last one is an outsider."""
    return dev_private_keys(10)


@pytest.fixture(scope="session")
def he() -> HEContext:
    return HEContext.create()


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A local port something listens on (and never answers): a port in use."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
