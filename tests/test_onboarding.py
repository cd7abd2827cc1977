"""Onboarding, transport identity, the admin role and removal with real node processes and
a real devnet.

The swarm is founded by the ceremony (every node made its own keys); the first founder is
handed the admin role, then hands it to another member, which sponsors the newcomer.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import ContractRejected, SwarmContract
from apiary.core.coefficients import block_digest
from apiary.core.flat import weights_digest
from apiary.core.he import HEContext
from apiary.core.tls import TlsFiles, create_self_signed
from apiary.core.transport import TransportError, push_update, sign_update
from apiary.node.client import AdminApiError, AdminClient, AdminUnreachable
from apiary.node.identity import Identity
from apiary.node.keys import KeyRing
from apiary.node.onboarding import AdminRole, JoinRequest
from apiary.node.trust import TTL_S
from apiary.tools.demo import DemoOptions, LocalSwarm
from apiary.wire import apiary_pb2

pytestmark = [pytest.mark.chain, pytest.mark.slow]

FOUNDERS = ("cleveland", "hungary", "va")
NEWCOMER = "switzerland"
TOKEN = "onboarding-admin-token"


def api(swarm: LocalSwarm, name: str) -> str:
    return f"http://127.0.0.1:{swarm.ports[name][0]}"


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def admin(swarm: LocalSwarm, name: str) -> AdminClient:
    """`name`'s admin API through the one client; calls that go on chain take a while."""
    return AdminClient(api(swarm, name), TOKEN, timeout_s=60)


def refusal(call: Callable[[], object]) -> AdminApiError:
    """The AdminApiError that `call()` raises."""
    with pytest.raises(AdminApiError) as refused:
        call()
    return refused.value


def committed_rounds(swarm: LocalSwarm, name: str) -> list[int]:
    return [r["round"] for r in swarm.history(name) if r["committed"]]


def round_digests(swarm: LocalSwarm, names: tuple[str, ...], round_number: int) -> set[str]:
    return {r["weights_digest"] for n in names for r in swarm.history(n)
            if r["round"] == round_number}


def chain_state(contract: SwarmContract) -> dict[str, Any]:
    return {"members": contract.members(active_only=False),
            "epochs": contract.key_epoch_count(), "admin": contract.admin()}


def identity(swarm: LocalSwarm, name: str) -> Identity:
    """The identity a node made for itself, read from its state directory."""
    stored = Identity.load(swarm.state_dir(name))
    assert stored is not None
    return stored


def swarm_key(swarm: LocalSwarm, epoch: int = 0, holder: str = "hungary") -> HEContext:
    he = KeyRing(swarm.state_dir(holder)).get(epoch)
    assert he is not None
    return he


def secret_key_fragments(he: HEContext | None) -> list[bytes]:
    """Byte runs of the secret context that its public part does not contain."""
    assert he is not None
    secret, public = he.secret_bytes(), he.public_bytes()
    fragments = []
    for start in range(0, len(secret) - 48, 4099):
        piece = secret[start : start + 48]
        if piece not in public:
            fragments.append(piece)
    assert fragments, "the secret context must differ from the public one"
    return fragments[:20]


def leaks(text_or_bytes: bytes, fragments: list[bytes]) -> bool:
    for piece in fragments:
        forms = [piece, piece.hex().encode(), base64.b64encode(piece)[:40]]
        if any(form in text_or_bytes for form in forms):
            return True
    return False


def push_as(swarm: LocalSwarm, contract: SwarmContract, sender: str, target: str,
            credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """Push a signed update of `sender` to `target`'s peer server; the status it ends with
    (a push that passes the handshake is refused later, as its round is not open)."""
    blocks = swarm_key(swarm).encrypt(np.zeros(contract.he_parameters().param_count))
    header = apiary_pb2.UpdateHeader(round=contract.current_round() + 5, sample_count=1,
                                     block_count=len(blocks),
                                     block_digests=[block_digest(b) for b in blocks])
    header = sign_update(header, contract.address, identity(swarm, sender).private_key)
    try:
        push_update(swarm.endpoint(target), header, blocks, timeout=5, credentials=credentials)
    except TransportError as exc:
        return exc.code
    return grpc.StatusCode.OK


def member_credentials(swarm: LocalSwarm, contract: SwarmContract,
                       name: str) -> grpc.ChannelCredentials:
    """`name`'s own TLS files, trusting every certificate the chain lists."""
    own = TlsFiles.load(swarm.state_dir(name) / "tls")
    assert own is not None
    roots = b"".join(m.tls_certificate for m in contract.members(active_only=False))
    return own.channel_credentials(roots)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("onboarding")
    options = DemoOptions(mode="swarm", rounds=0, out_dir=out, admin_token=TOKEN,
                          round_deadline_s=10.0, min_peers=2)
    with LocalSwarm(options, (*FOUNDERS, NEWCOMER), joiners=(NEWCOMER,)) as local:
        local.found()
        local.start_all()
        local.wait_until(lambda: all(committed_rounds(local, n) for n in FOUNDERS), 120,
                         "round 1")
        w3 = Web3(Web3.HTTPProvider(local.rpc_url))
        assert local.contract_address is not None
        yield local, SwarmContract.at(w3, local.contract_address, identity(local, "va")
                                      .private_key)


def test_refused_invites_change_nothing(swarm) -> None:
    local, contract = swarm
    url = api(local, "cleveland")
    before, invites_before = chain_state(contract), _invite_file(local)
    certificate = create_self_signed("newcomer", ["127.0.0.1"]).cert.decode()
    # The swarm's own training configuration, so only the invite, address or certificate is
    # what each request gets wrong.
    training = httpx.get(f"{url}/v1/training", timeout=30).json()["config"]

    def join_request(invite: str, address: str, cert: str = "not a certificate") -> httpx.Response:
        return httpx.post(f"{url}/v1/members", timeout=30, json={
            "invite": invite, "address": address, "x25519_public_key": "11" * 32,
            "endpoint": "127.0.0.1:1", "tls_certificate": cert,
            "dataset_size": 50, "training": training})

    assert join_request("x" * 43, "0x" + "12" * 20, certificate).status_code == 403
    with admin(local, "cleveland") as cleveland:
        short = cleveland.create_invite(0.5)
        time.sleep(1.0)
        expired = join_request(short.invite, "0x" + "12" * 20, certificate)
        assert expired.status_code == 410 and "expired" in expired.json()["detail"]
        fresh = cleveland.create_invite()
    bad_certificate = join_request(fresh.invite, "0x" + "12" * 20)
    assert bad_certificate.status_code == 422
    member_again = join_request(fresh.invite, local.addresses["hungary"], certificate)
    assert member_again.status_code == 409 and "already a member" in member_again.json()["detail"]
    assert httpx.post(f"{url}/v1/invites", json={}).status_code == 401
    assert httpx.post(f"{url}/v1/members", json={"invite": "x"}).status_code == 422
    assert chain_state(contract) == before
    after = _invite_file(local)
    assert {k: v for k, v in after.items() if k in invites_before} == invites_before
    assert all(v["used_by"] is None for v in after.values())


def _invite_file(local: LocalSwarm, name: str = "cleveland") -> dict[str, Any]:
    path = local.state_dir(name) / "invites.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_the_admin_role_moves_to_another_member_in_two_steps(swarm) -> None:
    local, contract = swarm
    assert contract.admin() == local.addresses["cleveland"], "the ceremony handed it over"
    hungary = local.addresses["hungary"]
    with admin(local, "hungary") as new_admin, admin(local, "cleveland") as old_admin, \
            admin(local, "va") as bystander:
        refused = refusal(lambda: new_admin.transfer_admin(local.addresses["va"]))
        assert refused.status == 403
        started = old_admin.transfer_admin(hungary)
        assert started == AdminRole(admin=local.addresses["cleveland"], pending_admin=hungary)
        assert refusal(bystander.accept_admin).status == 409
        accepted = new_admin.accept_admin()
        assert accepted == AdminRole(admin=hungary, pending_admin=None)
    assert contract.admin() == hungary


def test_a_fourth_hospital_joins_through_a_member_that_is_not_the_first(swarm) -> None:
    local, contract = swarm
    url = api(local, "hungary")
    with admin(local, "hungary") as sponsor:
        invite = sponsor.create_invite(600).invite
    assert invite not in (local.state_dir("hungary") / "invites.json").read_text()
    started = time.monotonic()
    process = local.start(NEWCOMER).process
    with admin(local, NEWCOMER) as newcomer:
        newcomer.wait_healthy(60, alive=lambda: process.poll() is None)
        own = newcomer.identity()
        own_training = newcomer.training().config
        newcomer.start_join(url, invite)
        progress = newcomer.follow_join(120)
    assert progress.state == "member", progress
    assert progress.round is not None and progress.round >= 0
    address = own.address
    record = contract.member(address)
    assert record.active and record.tls_certificate == own.tls_certificate.encode()
    assert record.tls_certificate == (local.state_dir(NEWCOMER) / "tls" / "node.pem").read_bytes()
    assert time.monotonic() - started < 120

    def took_part() -> bool:
        mine = committed_rounds(local, NEWCOMER)
        return bool(mine) and all(mine[0] in committed_rounds(local, n) for n in FOUNDERS)

    local.wait_until(took_part, 180, "the newcomer's first round")
    round_number = committed_rounds(local, NEWCOMER)[0]
    # From the round after next of the model it was handed at the latest.
    assert progress.round < round_number <= progress.round + 2
    assert address in contract.participants(round_number)
    assert len(round_digests(local, (*FOUNDERS, NEWCOMER), round_number)) == 1

    another = JoinRequest(invite=invite, address="0x" + "34" * 20, x25519_public_key="22" * 32,
                          endpoint="127.0.0.1:2", tls_certificate=own.tls_certificate,
                          dataset_size=own.dataset_size, training=own_training)
    with AdminClient(url, timeout_s=30) as invitee:
        reused = refusal(lambda: invitee.request_admission(another))
    assert reused.status == 409 and "already used" in reused.detail


def test_a_grpc_client_without_a_members_certificate_is_refused(swarm) -> None:
    local, contract = swarm
    assert push_as(local, contract, "va", "hungary", None) == grpc.StatusCode.UNAVAILABLE
    roots = b"".join(m.tls_certificate for m in contract.members())
    stranger = create_self_signed("va", ["127.0.0.1"]).channel_credentials(roots)
    assert push_as(local, contract, "va", "hungary", stranger) == grpc.StatusCode.UNAVAILABLE
    own = member_credentials(local, contract, "va")
    assert push_as(local, contract, "va", "hungary", own) == grpc.StatusCode.FAILED_PRECONDITION


def test_a_removed_member_is_refused_at_the_handshake_and_cannot_read_later_rounds(
    swarm,
) -> None:
    local, contract = swarm
    gone = local.addresses["va"]
    old_key = swarm_key(local, 0, "va")
    before = chain_state(contract)
    with admin(local, "cleveland") as cleveland:
        refused = refusal(lambda: cleveland.remove(gone))
    assert refused.status == 403, "cleveland handed the admin role to hungary"
    assert chain_state(contract) == before
    va_credentials = member_credentials(local, contract, "va")
    with admin(local, "hungary") as hungary:
        removal = hungary.remove(gone)
    assert removal.failed == [] and gone not in removal.delivered
    assert not contract.member(gone).active

    assert push_as(local, contract, "va", "hungary", va_credentials) == \
        grpc.StatusCode.UNAVAILABLE, "the remover trusts the new member set at once"
    deadline = time.monotonic() + TTL_S + 5
    for other in ("cleveland", NEWCOMER):
        while (code := push_as(local, contract, "va", other, va_credentials)) != \
                grpc.StatusCode.UNAVAILABLE:
            assert code == grpc.StatusCode.PERMISSION_DENIED, code
            assert time.monotonic() < deadline, f"{other} still accepts va's handshake"
            time.sleep(0.3)
    for caller, target in (("cleveland", "hungary"), ("hungary", NEWCOMER),
                           (NEWCOMER, "cleveland")):
        code = push_as(local, contract, caller, target,
                       member_credentials(local, contract, caller))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (caller, target, code)

    epoch, from_round = removal.key_epoch, removal.from_round
    assert contract.key_epoch(epoch)[0] == from_round
    stayers = tuple(n for n in (*FOUNDERS, NEWCOMER) if n != "va")
    local.wait_until(lambda: bool(round_digests(local, stayers, from_round))
                     and all(from_round in committed_rounds(local, n) for n in stayers),
                     180, f"round {from_round} under the new key")
    params = contract.he_parameters()
    emitted = contract.aggregated_blocks(from_round)
    _, _, weight_sum = contract.round_weights(from_round)
    blocks = [emitted[i].coefficients for i in range(params.block_count)]
    model = swarm_key(local, epoch, "cleveland").decrypt(blocks, params.param_count) / weight_sum
    assert round_digests(local, stayers, from_round) == {weights_digest(model)}
    garbage = old_key.decrypt(blocks, params.param_count) / weight_sum
    assert np.median(np.abs(garbage - model)) > 1.0

    with pytest.raises(ContractRejected, match="NotMember"):
        contract.enrol(contract.current_round(), epoch, 10)

    # "Rotate now": only the admin's node may, every member gets the key, rounds go on.
    with admin(local, "cleveland") as cleveland:
        assert refusal(cleveland.rotate_key).status == 403
    with admin(local, "hungary") as hungary:
        rotation = hungary.rotate_key()
    assert rotation.key_epoch == epoch + 1 and rotation.failed == []
    assert sorted(rotation.delivered) == sorted(
        m.address for m in contract.members() if m.address != local.addresses["hungary"])
    later = rotation.from_round
    local.wait_until(lambda: bool(round_digests(local, stayers, later))
                     and all(later in committed_rounds(local, n) for n in stayers),
                     180, f"round {later} under the rotated key")
    emitted = contract.aggregated_blocks(later)
    _, _, weight_sum = contract.round_weights(later)
    blocks = [emitted[i].coefficients for i in range(params.block_count)]
    rotated = swarm_key(local, epoch + 1, NEWCOMER)
    model = rotated.decrypt(blocks, params.param_count) / weight_sum
    assert round_digests(local, stayers, later) == {weights_digest(model)}


def test_no_secret_key_appears_in_logs_api_or_chain(swarm) -> None:
    local, contract = swarm
    fragments = secret_key_fragments(swarm_key(local))
    private = [identity(local, n).private_key.removeprefix("0x").encode()
               for n in (*FOUNDERS, NEWCOMER)]
    private += [identity(local, n).x25519_private.encode() for n in (*FOUNDERS, NEWCOMER)]
    for log_file in Path(local.out / "logs").glob("*.log"):
        text = log_file.read_bytes()
        assert not leaks(text, fragments), log_file
        assert b"PRIVATE KEY" not in text and not any(p in text for p in private), log_file
    for name in ("cleveland", "hungary"):
        for path in ("/v1/status", "/v1/rounds", "/v1/model", "/metrics", "/v1/health",
                     "/v1/identity", "/v1/swarm"):
            body = httpx.get(f"{api(local, name)}{path}", headers=admin_headers()).content
            assert not leaks(body, fragments), (name, path)
            assert b"PRIVATE KEY" not in body and not any(p in body for p in private)
    w3 = contract.w3
    for number in range(w3.eth.block_number + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            data = bytes(tx["input"])
            assert not leaks(data, fragments), (number, tx["hash"].hex())
            assert b"PRIVATE KEY" not in data


def test_under_the_majority_rule_any_member_proposes_a_newcomer(tmp_path: Path) -> None:
    options = DemoOptions(mode="swarm", rounds=0, out_dir=tmp_path, admin_token=TOKEN,
                          round_deadline_s=10.0, min_peers=2, membership="majority")
    with LocalSwarm(options, (*FOUNDERS, NEWCOMER), joiners=(NEWCOMER,)) as local:
        local.found()
        local.start_all()
        local.wait_until(lambda: all(committed_rounds(local, n) for n in FOUNDERS), 120,
                         "round 1")
        sponsor = api(local, "va")
        with admin(local, "va") as va:
            invite = va.create_invite().invite
        local.start(NEWCOMER, ["--join", sponsor, "--invite", invite])
        with admin(local, NEWCOMER) as newcomer:

            def state() -> str:
                try:
                    return newcomer.join_progress().state
                except AdminUnreachable:
                    return "starting"

            local.wait_until(lambda: state() == "awaiting approval", 120, "the proposal")
            proposal = newcomer.join_progress()
            assert proposal.approvals == 1 and proposal.needed == 2
            address = proposal.address
            assert address is not None
            with admin(local, "hungary") as hungary, admin(local, "cleveland") as cleveland:
                assert hungary.approve(address).member is True
                assert refusal(lambda: cleveland.approve(address)).status == 409
            assert newcomer.follow_join(120).state == "member"
        local.wait_until(lambda: bool(committed_rounds(local, NEWCOMER)), 180,
                         "the newcomer's first round")
