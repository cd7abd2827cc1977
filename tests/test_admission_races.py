"""Admission under attack, on a real devnet with the real Sponsor behind real uvicorn: one
invite raced by four requests admits exactly one node; a failed admission releases or keeps
its invite as the chain says; a join that failed after the sponsor answered is resumed with
the same identity; nobody resumes another node's join."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
import uvicorn
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import free_port
from apiary.core.he import HEContext
from apiary.core.settings import NodeSettings
from apiary.core.tasks import SwarmConfig, TaskIdentity
from apiary.core.tls import TlsFiles, create_self_signed
from apiary.node import joining
from apiary.node.api import create_app
from apiary.node.client import AdminApiError, AdminClient
from apiary.node.identity import Identity
from apiary.node.invites import InviteBook
from apiary.node.joining import JOIN_FILE, Joiner, JoiningNode
from apiary.node.keys import KeyRing
from apiary.node.onboarding import Handover, JoinRequest, Pending, Sponsor
from apiary.node.ports import SwarmLink
from apiary.node.resumption import HandoverRequest, sign_handover_request
from apiary.node.state import NodeState
from tests.test_api import TOKEN, TRAINING, FakeFounding, FakeNode

pytestmark = pytest.mark.chain

PARAMS = 8
DATASET_SIZE = 120
WEIGHTS = np.arange(PARAMS, dtype=np.float32) / 10


@dataclass
class Newcomer:
    identity: Identity
    tls: TlsFiles
    endpoint: str

    def request(self, invite: str, **changes: Any) -> JoinRequest:
        return JoinRequest.model_validate({
            "invite": invite, "address": self.identity.address,
            "x25519_public_key": self.identity.x25519_public, "endpoint": self.endpoint,
            "tls_certificate": self.tls.cert.decode(), "dataset_size": DATASET_SIZE,
            "training": TRAINING.as_json(), **changes})


def newcomer(name: str, port: int = 50070) -> Newcomer:
    return Newcomer(Identity.create(name), create_self_signed(name, ["127.0.0.1"]),
                    f"127.0.0.1:{port}")


@dataclass
class SponsorNode:
    url: str
    contract: SwarmContract
    invites: InviteBook
    model: list[np.ndarray | None]
    """What the sponsor's current_model answers with; None: no global model yet."""

    def members(self) -> set[str]:
        return {m.address for m in self.contract.members()}


@pytest.fixture
def sponsor(w3: Web3, dev_keys: list[str], he: HEContext, tmp_path: Path
            ) -> Iterator[SponsorNode]:
    """A fresh contract whose admin's node sponsors, its admin API on real uvicorn."""
    admin = SwarmContract.deploy(w3, dev_keys[0], param_count=PARAMS, modulus=he.modulus,
                                 context_digest=he.public_digest(), min_peers=2,
                                 training_digest=TRAINING.digest())
    keys = KeyRing(tmp_path / "sponsor")
    keys.put(0, he.secret_bytes(), he.public_digest())
    invites = InviteBook(tmp_path / "sponsor")
    model: list[np.ndarray | None] = [WEIGHTS]
    link = SwarmLink(contract=admin, rpc_url=str(w3.provider.endpoint_uri),  # type: ignore[attr-defined]
                     trust=None)
    sponsor = Sponsor(node="sponsor", funding_wei=0, invites=invites, keys=keys,
                      current_model=lambda: (0, model[0], None), link=lambda: link,
                      training=TRAINING)
    settings = NodeSettings(name="sponsor", admin_token=TOKEN, state_dir=tmp_path / "sponsor")
    app = create_app(settings, node=FakeNode(link=link),
                     history=NodeState.open(tmp_path / "sponsor"), invites=invites,
                     sponsor=sponsor, founding=FakeFounding(), joiner=None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    yield SponsorNode(f"http://127.0.0.1:{port}", admin, invites, model)
    server.should_exit = True
    thread.join(10)


def admit(sponsor: SponsorNode, request: JoinRequest) -> Handover | Pending:
    """The sponsor's answer to an admission request, through the client a joiner uses."""
    with AdminClient(sponsor.url, timeout_s=60) as client:
        return client.request_admission(request)


def handover(sponsor: SponsorNode, address: str, request: HandoverRequest) -> Handover:
    """The sponsor's answer to a member's request for its hand-over again."""
    with AdminClient(sponsor.url, timeout_s=60) as client:
        return client.resume_handover(address, request)


def refused(call: Callable[[], object]) -> AdminApiError:
    """The refusal (AdminApiError) that `call()` ends with."""
    with pytest.raises(AdminApiError) as refusal:
        call()
    return refusal.value


Answer = Handover | Pending | AdminApiError


def answer_or_refusal(call: Callable[[], Handover | Pending]) -> Answer:
    try:
        return call()
    except AdminApiError as refusal:
        return refusal


def concurrently(calls: list[Callable[[], Answer]]) -> list[Answer]:
    barrier = threading.Barrier(len(calls))
    replies: list[Answer | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        replies[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return [cast(Answer, r) for r in replies]


# ---------------------------------------------------------------------- one invite, one node


def test_four_concurrent_admissions_with_one_invite_admit_exactly_one(
        sponsor: SponsorNode) -> None:
    invite, _ = sponsor.invites.create(60)
    before = sponsor.members()
    nodes = [newcomer(f"racer{i}") for i in range(4)]
    replies = concurrently([
        lambda n=n: answer_or_refusal(lambda: admit(sponsor, n.request(invite)))
        for n in nodes])
    refusals = [r for r in replies if isinstance(r, AdminApiError)]
    handed_over = [n for n, r in zip(nodes, replies, strict=True) if isinstance(r, Handover)]
    assert len(handed_over) == 1 and [r.status for r in refusals] == [409, 409, 409], replies
    (winner,) = handed_over
    assert sponsor.members() - before == {winner.identity.address}
    (stored,) = sponsor.invites.snapshot().values()
    assert stored["used_by"] == winner.identity.address
    for refusal in refusals:
        assert refusal.detail in {
            "invite already used",
            "an admission with this invite is in progress; wait for its answer (one "
            "invite admits one node)"}


def test_a_newcomer_that_trains_otherwise_is_refused_before_anything_changes(
        sponsor: SponsorNode) -> None:
    invite, _ = sponsor.invites.create(60)
    before, invites = sponsor.members(), sponsor.invites.snapshot()
    block = sponsor.contract.w3.eth.block_number
    other_task = SwarmConfig(TaskIdentity("tiny", "1", "c" * 64, "d" * 64, PARAMS),
                             TRAINING.training)
    slower = SwarmConfig(TRAINING.task, {**TRAINING.training, "lr": 0.0001})
    late = newcomer("late")
    for config, named in ((other_task, "task: the newcomer tiny, the swarm heart"),
                          (slower, "lr: the newcomer 0.0001, the swarm 0.003")):
        refusal = refused(lambda c=config: admit(sponsor, late.request(
            invite, training=c.as_json())))
        assert refusal.status == 409 and named in refusal.detail
        assert "handover" not in refusal.detail.lower()
    assert sponsor.members() == before and sponsor.invites.snapshot() == invites
    assert sponsor.contract.w3.eth.block_number == block, "no transaction"
    body = late.request(invite).model_dump()
    malformed = httpx.post(f"{sponsor.url}/v1/members", json={**body, "training": {"task": 1}})
    assert malformed.status_code == 422 and "training" in malformed.text
    assert isinstance(admit(sponsor, late.request(invite)), Handover), "the invite still works"


def test_a_reverted_admission_releases_its_invite(sponsor: SponsorNode, he: HEContext) -> None:
    removed = newcomer("removed")
    sponsor.contract.add_member(removed.identity.address, removed.endpoint, bytes([7]) * 32,
                                removed.tls.cert, DATASET_SIZE)
    sponsor.contract.remove_member(removed.identity.address, HEContext.create().public_digest())
    invite, _ = sponsor.invites.create(60)
    reverted = refused(lambda: admit(sponsor, removed.request(invite)))
    assert reverted.status == 409 and "MemberExists" in reverted.detail
    assert sponsor.invites.snapshot()[_digest(invite)]["reserved_for"] is None
    other = newcomer("other")
    admitted = admit(sponsor, other.request(invite))
    assert isinstance(admitted, Handover) and admitted.address == other.identity.address
    assert other.identity.address in sponsor.members()


def test_a_hand_over_that_fails_after_the_chain_admitted_keeps_the_invite_for_that_node(
        sponsor: SponsorNode) -> None:
    invite, _ = sponsor.invites.create(60)
    node, attacker = newcomer("slow"), newcomer("attacker")
    sponsor.model[0] = None  # the sponsor has no model to hand over yet: 503 after the tx
    first = refused(lambda: admit(sponsor, node.request(invite)))
    assert first.status == 503 and first.may_pass
    assert node.identity.address in sponsor.members()
    assert sponsor.invites.snapshot()[_digest(invite)]["reserved_for"] == node.identity.address
    sponsor.model[0] = WEIGHTS
    # Someone else with the invite: refused, whether as itself or posing as the node with
    # its own X25519 key (the hand-over would be sealed to the chain's key anyway).
    other = refused(lambda: admit(sponsor, attacker.request(invite)))
    assert other.status == 409 and other.detail == "invite already used"
    posing = node.request(invite, x25519_public_key=attacker.identity.x25519_public)
    impostor = refused(lambda: admit(sponsor, posing))
    assert impostor.status == 409 and "another X25519 key" in impostor.detail
    retried = admit(sponsor, node.request(invite))
    assert isinstance(retried, Handover) and retried.address == node.identity.address
    assert sponsor.invites.snapshot()[_digest(invite)]["used_by"] == node.identity.address
    assert attacker.identity.address not in sponsor.members()


def _digest(invite: str) -> str:
    import hashlib
    return hashlib.sha256(invite.encode()).hexdigest()


# ---------------------------------------------------------------------- resuming a join


@dataclass
class Joined:
    weights: list[np.ndarray]


def joiner_for(node: Newcomer, state_dir: Path, w3: Web3) -> tuple[Joiner, Joined, KeyRing]:
    """A real Joiner for `node`; it checks the hand-over against the real chain."""
    joined = Joined([])
    keys = KeyRing(state_dir)

    def connect(address: str, _rpc_url: str, private_key: str) -> SwarmContract:
        return SwarmContract.at(w3, address, private_key)

    def adopt(weights: np.ndarray, _round: int, _digest: str) -> None:
        joined.weights.append(weights)

    joining_node = JoiningNode(
        name=node.identity.name, state_dir=state_dir, endpoint=node.endpoint,
        identity=node.identity, tls=node.tls, param_count=PARAMS, dataset_size=DATASET_SIZE,
        training=TRAINING, keys=keys, connect=connect, activate=lambda: cast(Any, None),
        adopt=adopt)
    return Joiner(joining_node), joined, keys


def wait(joiner: Joiner) -> None:
    assert joiner._thread is not None
    joiner._thread.join(60)
    assert not joiner.busy


def test_a_join_whose_answer_was_lost_is_resumed_with_the_same_identity(
        sponsor: SponsorNode, w3: Web3, he: HEContext, tmp_path: Path) -> None:
    invite, _ = sponsor.invites.create(60)
    node = newcomer("lost")
    # The admission went through, but its answer never reached the node.
    lost = admit(sponsor, node.request(invite))
    assert isinstance(lost, Handover)
    joiner, joined, keys = joiner_for(node, tmp_path / "lost", w3)
    joiner.start(sponsor.url, invite)
    wait(joiner)
    assert joiner.state == "member", joiner.error
    assert joiner.address == node.identity.address
    assert np.array_equal(joined.weights[0], WEIGHTS)
    stored = keys.get(0)
    assert stored is not None and stored.public_digest() == he.public_digest()
    record = sponsor.contract.member(node.identity.address)
    assert record.x25519_public_key.hex() == node.identity.x25519_public
    assert not joiner.resumable


def test_a_restarted_node_resumes_its_admitted_join(
        sponsor: SponsorNode, w3: Web3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run was admitted, then its chain check failed each time (the chain did
    not answer) and the node was stopped; the restarted node finishes the join."""
    monkeypatch.setattr(joining, "JOIN_ATTEMPTS", 2)
    monkeypatch.setattr(joining, "RETRY_FIRST_S", 0.05)
    invite, _ = sponsor.invites.create(60)
    node = newcomer("restarted")
    state_dir = tmp_path / "restarted"
    first, _, _ = joiner_for(node, state_dir, w3)

    def unreachable(*_args: Any) -> SwarmContract:
        raise ConnectionError("the chain does not answer")

    first.node = JoiningNode(**{**first.node.__dict__, "connect": unreachable})
    first.start(sponsor.url, invite)
    wait(first)
    assert first.state == "failed" and "does not answer" in (first.error or "")
    assert node.identity.address in sponsor.members()
    second, joined, _ = joiner_for(node, state_dir, w3)  # the node after its restart
    assert second.resumable
    second.resume()
    wait(second)
    assert second.state == "member", second.error
    assert np.array_equal(joined.weights[0], WEIGHTS)
    assert (state_dir / JOIN_FILE).stat().st_mode & 0o077 == 0


def test_nobody_resumes_another_nodes_join(sponsor: SponsorNode) -> None:
    invite, _ = sponsor.invites.create(60)
    victim, attacker = newcomer("victim"), newcomer("thief")
    assert isinstance(admit(sponsor, victim.request(invite)), Handover)

    def ask(address: str, request: HandoverRequest) -> AdminApiError:
        return refused(lambda: handover(sponsor, address, request))

    victim_address = victim.identity.address
    # The attacker's key signs for the victim's address: refused.
    _, forged = sign_handover_request(attacker.identity.private_key, invite)
    reply = ask(victim_address, forged)
    assert reply.status == 403 and "not signed by" in reply.detail
    # The attacker asks for itself with the victim's invite: that invite admitted another.
    reply = ask(attacker.identity.address, forged)
    assert reply.status == 403 and "no such invite" in reply.detail
    # A stale signature of the victim's (replayed later) and a made-up invite: refused.
    _, stale = sign_handover_request(victim.identity.private_key, invite, now=1_000_000.0)
    assert ask(victim_address, stale).status == 403
    _, other_invite = sign_handover_request(victim.identity.private_key, "x" * 43)
    assert ask(victim_address, other_invite).status == 403
    # Only the victim's own signed request gets the hand-over, sealed to its key on chain.
    _, own = sign_handover_request(victim.identity.private_key, invite)
    assert handover(sponsor, victim_address, own).address == victim.identity.address
    assert attacker.identity.address not in sponsor.members()
