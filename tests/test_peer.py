"""The node's relay inbox (PeerService) on a real gRPC server against a real devnet."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import free_port
from apiary.core.coefficients import SLOTS_PER_BLOCK, block_digest
from apiary.core.he import HEContext
from apiary.core.tls import TlsFiles, create_self_signed
from apiary.core.transport import (
    TransportError,
    fetch_update,
    push_update,
    sign_update,
    update_chunks,
)
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.node.trust import MemberTrust
from apiary.wire import apiary_pb2
from tests.test_transport import bad_update_streams, raw_push

pytestmark = pytest.mark.chain

PARAMS = 2 * SLOTS_PER_BLOCK
DATASET_SIZE = 10_000


@pytest.fixture
def relay(w3: Web3, dev_keys: list[str], he: HEContext) -> Iterator[dict]:
    """Members A, B and C; A and B are round 1's participants (C enrolled late: the enrolment
    window closed); B's node runs the PeerService; the last dev key is an outsider."""
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=PARAMS, modulus=he.modulus,
                                 context_digest=he.public_digest(), min_peers=2,
                                 enrol_window_s=1)
    a, b = admin.as_account(dev_keys[1]), admin.as_account(dev_keys[2])
    c = admin.as_account(dev_keys[3])
    for i, member in enumerate((a, b, c)):
        admin.add_member(member.sender, f"127.0.0.1:{60000 + i}", bytes([i + 1]) * 32,
                         create_self_signed(f"m{i}", ["127.0.0.1"]).cert, DATASET_SIZE)
    a.enrol(1, 0, 25)
    b.enrol(1, 0, 25)
    w3.provider.make_request("evm_increaseTime", [2])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    a.fix_participants(1)
    inbox = Inbox()
    port = free_port()
    service = PeerService(admin.as_account(dev_keys[2]), inbox, "b")
    server = start_peer_server(service, "127.0.0.1", port)
    rng = np.random.default_rng(3)
    yield {
        "admin": admin, "a": a, "inbox": inbox, "target": f"127.0.0.1:{port}",
        "metrics": service.metrics,
        "blocks": he.encrypt(rng.normal(0, 1, PARAMS)),
        "other": he.encrypt(rng.normal(0, 1, PARAMS)),
        "keys": dev_keys,
    }
    server.stop(grace=None)


def signed_header(blocks: list[bytes], contract: str, key: str, *, round_number: int = 1,
                  attempt: int = 1, sender: str = "") -> apiary_pb2.UpdateHeader:
    header = apiary_pb2.UpdateHeader(
        round=round_number, attempt=attempt, sender=sender, sample_count=25,
        block_count=len(blocks), block_digests=[block_digest(b) for b in blocks],
    )
    return sign_update(header, contract, key)


def held(relay: dict) -> dict[str, list[list[bytes]]]:
    """Every copy the inbox holds for round 1, attempt 1, by sender."""
    return {s: [u.blocks for u in copies]
            for s, copies in relay["inbox"].copies(1, 1).items()}


def refused(relay: dict, chunks: list, code: grpc.StatusCode, words: str) -> None:
    before = held(relay)
    error = raw_push(relay["target"], chunks)
    assert error.code() == code, error.details()
    assert words in error.details()
    assert held(relay) == before


def test_a_members_signed_update_is_accepted_once(relay: dict) -> None:
    address = relay["admin"].address
    header = signed_header(relay["blocks"], address, relay["keys"][1])
    reply = push_update(relay["target"], header, relay["blocks"], timeout=10)
    assert reply.round == 1 and reply.blocks_received == 2
    assert held(relay) == {relay["a"].sender: [relay["blocks"]]}
    digests = [block_digest(b) for b in relay["blocks"]]
    assert relay["inbox"].matching(1, 1, relay["a"].sender, digests).blocks == relay["blocks"]
    again = list(update_chunks(header, relay["blocks"]))
    refused(relay, again, grpc.StatusCode.ALREADY_EXISTS, "already pushed")


def test_a_resent_different_update_is_kept_beside_the_first(relay: dict, he) -> None:
    """A member that re-encrypts after a restart must not be stuck with its first copy:
    the relay keeps both and aggregates the one that matches the commitment."""
    address = relay["admin"].address
    first = signed_header(relay["blocks"], address, relay["keys"][1])
    push_update(relay["target"], first, relay["blocks"], timeout=10)
    second = signed_header(relay["other"], address, relay["keys"][1])
    push_update(relay["target"], second, relay["other"], timeout=10)
    assert held(relay) == {relay["a"].sender: [relay["blocks"], relay["other"]]}
    digests = [block_digest(b) for b in relay["other"]]
    assert relay["inbox"].matching(1, 1, relay["a"].sender, digests).blocks == relay["other"]
    rng = np.random.default_rng(11)
    extra = he.encrypt(rng.normal(0, 1, PARAMS))
    push_update(relay["target"], signed_header(extra, address, relay["keys"][1]), extra,
                timeout=10)
    fourth = he.encrypt(rng.normal(0, 1, PARAMS))
    refused(relay, list(update_chunks(signed_header(fourth, address, relay["keys"][1]),
                                      fourth)),
            grpc.StatusCode.ALREADY_EXISTS, "already pushed")


def test_update_from_a_member_outside_the_attempt_is_refused(relay: dict) -> None:
    header = signed_header(relay["blocks"], relay["admin"].address, relay["keys"][3])
    refused(relay, list(update_chunks(header, relay["blocks"])),
            grpc.StatusCode.PERMISSION_DENIED, "not a participant")


def test_update_for_an_attempt_that_is_not_open_is_refused(relay: dict) -> None:
    for attempt in (0, 2):
        header = signed_header(relay["blocks"], relay["admin"].address, relay["keys"][1],
                               attempt=attempt)
        refused(relay, list(update_chunks(header, relay["blocks"])),
                grpc.StatusCode.FAILED_PRECONDITION, "is not the open attempt")


def test_every_malformed_stream_is_refused_and_changes_nothing(relay: dict, he) -> None:
    header = signed_header(relay["blocks"], relay["admin"].address, relay["keys"][1])
    cases = bad_update_streams(header, relay["blocks"], relay["other"], he.modulus)
    for name, (chunks, code, words) in cases.items():
        before = held(relay)
        error = raw_push(relay["target"], chunks)
        assert error.code() == code, name
        assert words in error.details(), name
        assert held(relay) == before, name


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


def test_accepted_bytes_and_refused_pushes_are_counted_by_reason(relay: dict, he) -> None:
    def count(name: str, **labels: str) -> float | None:
        return relay["metrics"].registry.get_sample_value(name, {"node": "b", **labels})

    address, member = relay["admin"].address, relay["keys"][1]
    header = signed_header(relay["blocks"], address, member)
    push_update(relay["target"], header, relay["blocks"], timeout=10)
    assert count("apiary_bytes_received_total") == sum(len(b) for b in relay["blocks"])
    raw_push(relay["target"], list(update_chunks(header, relay["blocks"])))
    forged = signed_header(relay["blocks"], address, relay["keys"][-1])
    forged.sender = relay["a"].sender
    raw_push(relay["target"], list(update_chunks(forged, relay["blocks"])))
    late = signed_header(relay["blocks"], address, relay["keys"][3])
    raw_push(relay["target"], list(update_chunks(late, relay["blocks"])))
    closed = signed_header(relay["blocks"], address, member, round_number=2)
    raw_push(relay["target"], list(update_chunks(closed, relay["blocks"])))
    outsider = signed_header(relay["blocks"], address, relay["keys"][-1])
    raw_push(relay["target"], list(update_chunks(outsider, relay["blocks"])))
    bad = bad_update_streams(header, relay["blocks"], relay["other"], he.modulus)
    for chunks, _, _ in bad.values():
        raw_push(relay["target"], chunks)
    assert {reason: count("apiary_push_refused_total", reason=reason)
            for reason in ("duplicate", "bad_signature", "not_participant", "wrong_round",
                           "unknown_member", "malformed")} == {
        "duplicate": 1, "bad_signature": 1, "not_participant": 1, "wrong_round": 1,
        "unknown_member": 1, "malformed": len(bad)}
    assert count("apiary_bytes_received_total") == sum(len(b) for b in relay["blocks"]), \
        "refused pushes add no bytes"


def test_update_for_a_round_that_is_not_open_is_refused(relay: dict) -> None:
    for round_number in (0, 2, 7):
        header = signed_header(relay["blocks"], relay["admin"].address, relay["keys"][1],
                               round_number=round_number)
        refused(relay, list(update_chunks(header, relay["blocks"])),
                grpc.StatusCode.FAILED_PRECONDITION, "is not open")


# ---------------------------------------------------------------------- mutual TLS


@pytest.fixture
def tls_relay(w3: Web3, dev_keys: list[str], he: HEContext) -> Iterator[dict]:
    """Members A, B and C with certificates their nodes made; B's node serves over mutual
    TLS trusting the members active on chain; D is not a member yet."""
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=PARAMS, modulus=he.modulus,
                                 context_digest=he.public_digest(), min_peers=2)
    tls = {name: create_self_signed(name, ["127.0.0.1"]) for name in "abcd"}
    members = {name: admin.as_account(dev_keys[i + 1]) for i, name in enumerate("abcd")}
    for i, name in enumerate("abc"):
        admin.add_member(members[name].sender, f"127.0.0.1:{61000 + i}", bytes([i + 1]) * 32,
                         tls[name].cert, DATASET_SIZE)
    trust = MemberTrust(admin.as_account(dev_keys[2]), tls["b"], ttl_s=60)
    port = free_port()
    server = start_peer_server(PeerService(admin.as_account(dev_keys[2]), Inbox(), "b",
                                           trust=trust), "127.0.0.1", port, trust)
    yield {"admin": admin, "tls": tls, "members": members, "trust": trust,
           "target": f"127.0.0.1:{port}"}
    server.stop(grace=None)


def fetch_as(relay: dict, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status of a fetch that passes every check but finds nothing: NOT_FOUND."""
    try:
        fetch_update(relay["target"], 1, 1, relay["members"]["a"].sender,
                     modulus=relay["admin"].he_parameters().modulus,
                     expected_blocks=relay["admin"].he_parameters().block_count,
                     contract_address=relay["admin"].address, timeout=5,
                     credentials=credentials)
    except TransportError as exc:
        return exc.code
    raise AssertionError("nothing was committed, so nothing can be fetched")


def as_member(relay: dict, name: str) -> grpc.ChannelCredentials:
    return relay["tls"][name].channel_credentials(relay["trust"].roots())


def test_only_active_members_certificates_pass_the_handshake(tls_relay: dict) -> None:
    assert fetch_as(tls_relay, as_member(tls_relay, "a")) == grpc.StatusCode.NOT_FOUND
    assert fetch_as(tls_relay, None) == grpc.StatusCode.UNAVAILABLE
    assert fetch_as(tls_relay, as_member(tls_relay, "d")) == grpc.StatusCode.UNAVAILABLE
    stranger = create_self_signed("a", ["127.0.0.1"])
    assert fetch_as(tls_relay, stranger.channel_credentials(tls_relay["trust"].roots())) \
        == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_a_member_signs_for_someone_else_is_refused(tls_relay: dict) -> None:
    """A member's certificate may not sign certificates (no keyCertSign), so TLS takes it
    as a trust anchor for itself only."""
    member = tls_relay["tls"]["a"]
    issuer = x509.load_pem_x509_certificate(member.cert)
    signer = serialization.load_pem_private_key(member.key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    forged = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")]))
              .issuer_name(issuer.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=1))
              .not_valid_after(now + datetime.timedelta(days=1))
              .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    impostor = TlsFiles(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
                        forged.public_bytes(serialization.Encoding.PEM))
    credentials = impostor.channel_credentials(tls_relay["trust"].roots())
    assert fetch_as(tls_relay, credentials) == grpc.StatusCode.UNAVAILABLE


def test_a_removed_member_is_refused_at_once_and_a_newcomer_trusted(tls_relay: dict,
                                                                     he: HEContext) -> None:
    admin, trust = tls_relay["admin"], tls_relay["trust"]
    gone = as_member(tls_relay, "c")
    assert fetch_as(tls_relay, gone) == grpc.StatusCode.NOT_FOUND
    admin.remove_member(tls_relay["members"]["c"].sender, HEContext.create().public_digest())
    assert fetch_as(tls_relay, gone) == grpc.StatusCode.PERMISSION_DENIED, \
        "within the bundle's lifetime, the call itself checks the chain"
    trust.invalidate()
    assert fetch_as(tls_relay, gone) == grpc.StatusCode.UNAVAILABLE
    assert fetch_as(tls_relay, as_member(tls_relay, "a")) == grpc.StatusCode.NOT_FOUND
    admin.add_member(tls_relay["members"]["d"].sender, "127.0.0.1:61003", b"\x04" * 32,
                     tls_relay["tls"]["d"].cert, DATASET_SIZE)
    trust.invalidate()
    assert fetch_as(tls_relay, as_member(tls_relay, "d")) == grpc.StatusCode.NOT_FOUND
