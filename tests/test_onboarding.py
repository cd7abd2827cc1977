"""Onboarding, transport identity and removal with real node processes and a real devnet."""

from __future__ import annotations

import base64
import time
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
from apiary.core.tls import TlsFiles, create_ca, create_key_and_csr, node_files
from apiary.core.transport import TransportError, push_update, sign_update
from apiary.node.keys import KeyRing
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


def committed_rounds(swarm: LocalSwarm, name: str) -> list[int]:
    return [r["round"] for r in swarm.history(name) if r["committed"]]


def round_digests(swarm: LocalSwarm, names: tuple[str, ...], round_number: int) -> set[str]:
    return {r["weights_digest"] for n in names for r in swarm.history(n)
            if r["round"] == round_number}


def chain_state(contract: SwarmContract) -> dict[str, Any]:
    return {"members": contract.members(active_only=False),
            "epochs": contract.key_epoch_count()}


def secret_key_fragments(he: HEContext) -> list[bytes]:
    """Byte runs of the secret context that its public part does not contain."""
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
        admin_key = local.identities["cleveland"].private_key
        yield local, SwarmContract.at(w3, local.contract_address, admin_key)


def test_refused_invites_change_nothing(swarm) -> None:
    local, contract = swarm
    url = api(local, "cleveland")
    hungary = local.identities["hungary"]
    before, invites_before = chain_state(contract), _invite_file(local)

    _, csr = create_key_and_csr("newcomer")

    def join_request(invite: str, address: str, request: str = "not a csr") -> httpx.Response:
        return httpx.post(f"{url}/v1/members", timeout=30, json={
            "invite": invite, "address": address, "x25519_public_key": "11" * 32,
            "endpoint": "127.0.0.1:1", "csr": request})

    assert join_request("x" * 43, "0x" + "12" * 20).status_code == 403
    short = httpx.post(f"{url}/v1/invites", headers=admin_headers(), json={"ttl_s": 0.5}).json()
    time.sleep(1.0)
    expired = join_request(short["invite"], "0x" + "12" * 20)
    assert expired.status_code == 410 and "expired" in expired.json()["detail"]
    fresh = httpx.post(f"{url}/v1/invites", headers=admin_headers(), json={}).json()
    bad_csr = join_request(fresh["invite"], "0x" + "12" * 20)
    assert bad_csr.status_code == 422
    member_again = join_request(fresh["invite"], hungary.address, csr.decode())
    assert member_again.status_code == 409 and "already a member" in member_again.json()["detail"]
    assert httpx.post(f"{url}/v1/invites", json={}).status_code == 401
    assert httpx.post(f"{url}/v1/members", json={"invite": "x"}).status_code == 422
    assert chain_state(contract) == before
    after = _invite_file(local)
    assert {k: v for k, v in after.items() if k in invites_before} == invites_before
    assert all(v["used_by"] is None for v in after.values())


def _invite_file(local: LocalSwarm) -> dict[str, Any]:
    import json

    path = local.state_dir("cleveland") / "invites.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_fourth_hospital_joins_through_the_api_and_trains_with_the_swarm(swarm) -> None:
    local, contract = swarm
    url = api(local, "cleveland")
    created = httpx.post(f"{url}/v1/invites", headers=admin_headers(), json={"ttl_s": 600})
    assert created.status_code == 201
    invite = created.json()["invite"]
    assert invite not in (local.state_dir("cleveland") / "invites.json").read_text()
    started = time.monotonic()
    local.start(NEWCOMER, ["--join", url, "--invite", invite])

    def joined() -> bool:
        try:
            reply = httpx.get(f"{api(local, NEWCOMER)}/v1/join", headers=admin_headers())
        except httpx.HTTPError:
            return False
        assert reply.json()["state"] != "failed", reply.json()
        return reply.json()["state"] == "member"

    local.wait_until(joined, 120, "the join")
    progress = httpx.get(f"{api(local, NEWCOMER)}/v1/join", headers=admin_headers()).json()
    address = progress["address"]
    assert contract.member(address).active
    assert time.monotonic() - started < 120

    def took_part() -> bool:
        mine = committed_rounds(local, NEWCOMER)
        return bool(mine) and all(mine[0] in committed_rounds(local, n) for n in FOUNDERS)

    local.wait_until(took_part, 180, "the newcomer's first round")
    round_number = committed_rounds(local, NEWCOMER)[0]
    assert address in contract.participants(round_number)
    assert len(round_digests(local, (*FOUNDERS, NEWCOMER), round_number)) == 1

    reused = httpx.post(f"{url}/v1/members", timeout=30, json={
        "invite": invite, "address": "0x" + "34" * 20, "x25519_public_key": "22" * 32,
        "endpoint": "127.0.0.1:2", "csr": "x"})
    assert reused.status_code == 409 and "already used" in reused.json()["detail"]


def test_a_grpc_client_without_the_swarm_certificate_is_refused(swarm) -> None:
    local, contract = swarm
    target = local.endpoint("hungary")
    he = local.he
    blocks = he.encrypt(np.zeros(contract.he_parameters().param_count))
    header = apiary_pb2.UpdateHeader(round=contract.current_round(), sample_count=1,
                                     block_count=len(blocks),
                                     block_digests=[block_digest(b) for b in blocks])
    header = sign_update(header, contract.address, local.identities["va"].private_key)
    with pytest.raises(TransportError) as plain:
        push_update(target, header, blocks, timeout=5)
    assert plain.value.code == grpc.StatusCode.UNAVAILABLE
    key, cert = create_ca("impostor")
    stranger = node_files(key, cert, "stranger", ["127.0.0.1"])
    with pytest.raises(TransportError) as forged:
        push_update(target, header, blocks, timeout=5,
                    credentials=stranger.channel_credentials())
    assert forged.value.code == grpc.StatusCode.UNAVAILABLE
    member = TlsFiles.load(local.state_dir("va") / "tls")
    assert member is not None
    with pytest.raises(TransportError) as duplicate_or_ok:
        push_update(target, header, blocks, timeout=5, credentials=member.channel_credentials())
    assert duplicate_or_ok.value.code in (grpc.StatusCode.ALREADY_EXISTS,
                                          grpc.StatusCode.FAILED_PRECONDITION)


def test_removed_member_cannot_read_later_aggregates_or_commit(swarm) -> None:
    local, contract = swarm
    gone = local.identities["va"]
    old_key = KeyRing(local.state_dir("va")).get(0)
    assert old_key is not None
    reply = httpx.delete(f"{api(local, 'cleveland')}/v1/members/{gone.address}",
                         headers=admin_headers(), timeout=60)
    assert reply.status_code == 200, reply.text
    removal = reply.json()
    assert removal["failed"] == [] and gone.address not in removal["delivered"]
    assert not contract.member(gone.address).active
    epoch, from_round = removal["key_epoch"], removal["from_round"]
    assert contract.key_epoch(epoch)[0] == from_round

    stayers = tuple(n for n in (*FOUNDERS, NEWCOMER) if n != "va")
    local.wait_until(lambda: bool(round_digests(local, stayers, from_round))
                     and all(from_round in committed_rounds(local, n) for n in stayers),
                     180, f"round {from_round} under the new key")
    params = contract.he_parameters()
    emitted = contract.aggregated_blocks(from_round)
    _, _, weight_sum = contract.round_weights(from_round)
    blocks = [emitted[i].coefficients for i in range(params.block_count)]
    new_key = KeyRing(local.state_dir("hungary")).get(epoch)
    assert new_key is not None
    model = new_key.decrypt(blocks, params.param_count) / weight_sum
    assert round_digests(local, stayers, from_round) == {weights_digest(model)}
    garbage = old_key.decrypt(blocks, params.param_count) / weight_sum
    assert np.median(np.abs(garbage - model)) > 1.0

    va_contract = contract.as_account(gone.private_key)
    with pytest.raises(ContractRejected, match="NotMember"):
        va_contract.enrol(contract.current_round(), epoch, 10)


def test_the_secret_key_never_appears_in_logs_api_or_chain(swarm) -> None:
    local, contract = swarm
    fragments = secret_key_fragments(local.he)
    for log_file in Path(local.out / "logs").glob("*.log"):
        assert not leaks(log_file.read_bytes(), fragments), log_file
    for name in ("cleveland", "hungary"):
        for path in ("/v1/status", "/v1/rounds", "/v1/model", "/metrics", "/v1/health"):
            body = httpx.get(f"{api(local, name)}{path}", headers=admin_headers()).content
            assert not leaks(body, fragments), (name, path)
    w3 = contract.w3
    for number in range(w3.eth.block_number + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            assert not leaks(bytes(tx["input"]), fragments), (number, tx["hash"].hex())


def test_under_the_majority_rule_a_newcomer_waits_for_approvals(tmp_path: Path) -> None:
    options = DemoOptions(mode="swarm", rounds=0, out_dir=tmp_path, admin_token=TOKEN,
                          round_deadline_s=10.0, min_peers=2, membership="majority")
    with LocalSwarm(options, (*FOUNDERS, NEWCOMER), joiners=(NEWCOMER,)) as local:
        local.found()
        local.start_all()
        local.wait_until(lambda: all(committed_rounds(local, n) for n in FOUNDERS), 120,
                         "round 1")
        sponsor = api(local, "cleveland")
        invite = httpx.post(f"{sponsor}/v1/invites", headers=admin_headers(), json={}).json()
        local.start(NEWCOMER, ["--join", sponsor, "--invite", invite["invite"]])

        def progress() -> dict[str, Any]:
            try:
                return httpx.get(f"{api(local, NEWCOMER)}/v1/join",
                                 headers=admin_headers()).json()
            except httpx.HTTPError:
                return {"state": "starting"}

        local.wait_until(lambda: progress()["state"] == "awaiting approval", 120,
                         "the proposal")
        state = progress()
        assert state["approvals"] == 1 and state["needed"] == 2
        address = state["address"]
        reply = httpx.post(f"{api(local, 'va')}/v1/members/{address}/approval",
                           headers=admin_headers(), timeout=30)
        assert reply.status_code == 200 and reply.json()["member"] is True
        again = httpx.post(f"{api(local, 'hungary')}/v1/members/{address}/approval",
                           headers=admin_headers(), timeout=30)
        assert again.status_code == 409
        local.wait_until(lambda: progress()["state"] == "member", 120, "the hand-over")
        local.wait_until(lambda: bool(committed_rounds(local, NEWCOMER)), 180,
                         "the newcomer's first round")
