"""Shared fixtures: one real anvil devnet per test session, one CKKS key set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3

from apiary.chain.devnet import Devnet, dev_private_keys, running_devnet
from apiary.core.he import HEContext


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
