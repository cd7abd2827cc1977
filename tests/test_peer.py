"""The node's relay inbox (PeerService) on a real gRPC server against a real devnet."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import free_port
from apiary.core.coefficients import SLOTS_PER_BLOCK, block_digest
from apiary.core.he import HEContext
from apiary.core.transport import push_update, sign_update, update_chunks
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.wire import apiary_pb2
from tests.test_transport import bad_update_streams, raw_push

pytestmark = pytest.mark.chain

PARAMS = 2 * SLOTS_PER_BLOCK


@pytest.fixture
def relay(w3: Web3, dev_keys: list[str], he: HEContext) -> Iterator[dict]:
    """Members A and B; B's node runs the PeerService; the last dev key is an outsider."""
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=PARAMS, modulus=he.modulus,
                                 context_digest=he.public_digest())
    a, b = admin.as_account(dev_keys[1]), admin.as_account(dev_keys[2])
    for i, member in enumerate((a, b)):
        admin.add_member(member.sender, f"127.0.0.1:{60000 + i}", bytes([i + 1]) * 32)
    inbox = Inbox()
    port = free_port()
    server = start_peer_server(PeerService(admin.as_account(dev_keys[2]), inbox, "b"),
                               "127.0.0.1", port)
    rng = np.random.default_rng(3)
    yield {
        "admin": admin, "a": a, "inbox": inbox, "target": f"127.0.0.1:{port}",
        "blocks": he.encrypt(rng.normal(0, 1, PARAMS)),
        "other": he.encrypt(rng.normal(0, 1, PARAMS)),
        "keys": dev_keys,
    }
    server.stop(grace=None)


def signed_header(blocks: list[bytes], contract: str, key: str, *, round_number: int = 1,
                  sender: str = "") -> apiary_pb2.UpdateHeader:
    header = apiary_pb2.UpdateHeader(
        round=round_number, sender=sender, sample_count=25, block_count=len(blocks),
        block_digests=[block_digest(b) for b in blocks],
    )
    return sign_update(header, contract, key)


def refused(relay: dict, chunks: list, code: grpc.StatusCode, words: str) -> None:
    before = relay["inbox"].get(1)
    error = raw_push(relay["target"], chunks)
    assert error.code() == code, error.details()
    assert words in error.details()
    assert relay["inbox"].get(1).keys() == before.keys()


def test_a_members_signed_update_is_accepted_once(relay: dict) -> None:
    address = relay["admin"].address
    header = signed_header(relay["blocks"], address, relay["keys"][1])
    reply = push_update(relay["target"], header, relay["blocks"], timeout=10)
    assert reply.round == 1 and reply.blocks_received == 2
    held = relay["inbox"].get(1)
    assert list(held) == [relay["a"].sender]
    assert held[relay["a"].sender].blocks == relay["blocks"]
    again = list(update_chunks(header, relay["blocks"]))
    refused(relay, again, grpc.StatusCode.ALREADY_EXISTS, "already pushed")


def test_every_malformed_stream_is_refused_and_changes_nothing(relay: dict, he) -> None:
    header = signed_header(relay["blocks"], relay["admin"].address, relay["keys"][1])
    cases = bad_update_streams(header, relay["blocks"], relay["other"], he.modulus)
    for name, (chunks, code, words) in cases.items():
        before = relay["inbox"].get(1)
        error = raw_push(relay["target"], chunks)
        assert error.code() == code, name
        assert words in error.details(), name
        assert relay["inbox"].get(1) == before, name


def test_non_member_is_refused(relay: dict) -> None:
    outsider = relay["keys"][-1]
    header = signed_header(relay["blocks"], relay["admin"].address, outsider)
    refused(relay, list(update_chunks(header, relay["blocks"])),
            grpc.StatusCode.PERMISSION_DENIED, "not an active member")


def test_forged_or_missing_signature_is_refused(relay: dict) -> None:
    member = relay["a"].sender
    header = signed_header(relay["blocks"], relay["admin"].address, relay["keys"][-1])
    header.sender = member
    refused(relay, list(update_chunks(header, relay["blocks"])),
            grpc.StatusCode.UNAUTHENTICATED, "not signed by its sender")
    header.ClearField("signature")
    refused(relay, list(update_chunks(header, relay["blocks"])),
            grpc.StatusCode.UNAUTHENTICATED, "not signed by its sender")
    other_contract = "0x" + "cd" * 20
    header = signed_header(relay["blocks"], other_contract, relay["keys"][1])
    refused(relay, list(update_chunks(header, relay["blocks"])),
            grpc.StatusCode.UNAUTHENTICATED, "not signed by its sender")


def test_update_for_a_round_that_is_not_open_is_refused(relay: dict) -> None:
    for round_number in (0, 2, 7):
        header = signed_header(relay["blocks"], relay["admin"].address, relay["keys"][1],
                               round_number=round_number)
        refused(relay, list(update_chunks(header, relay["blocks"])),
                grpc.StatusCode.FAILED_PRECONDITION, "is not open")
