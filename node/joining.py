"""The newcomer's side: from nothing but data and an invite to a full swarm member.

The node made its own Ethereum account, X25519 key pair and TLS key and certificate when it
first started (:func:`apiary.node.identity.ensure_identity`). It asks its sponsor to admit
it with their public halves, and accepts the hand-over only after checking it against the
chain: it is listed as a member with its own X25519 key and certificate, every unwrapped HE
context matches its epoch's digest on chain, and the global weights equal its own
decryption of the latest on-chain aggregate.

A join survives failures after the sponsor answered: it keeps its progress in the state
directory (``join.json``: sponsor, invite, whether the sponsor admitted it), retries what
may pass later (a sponsor or chain that does not answer, a 5xx) with growing pauses, and,
once admitted, asks the sponsor for its hand-over again, signed with its own Ethereum key
(:mod:`apiary.node.resumption`), rather than for an admission its spent invite no longer
gets. A restarted node resumes a join it had not finished.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from apiary.chain.binding import SwarmContract
from apiary.core.backoff import Backoff
from apiary.core.errors import ApiaryError, ConfigError
from apiary.core.files import write_private_json
from apiary.core.flat import weights_digest
from apiary.core.keywrap import WrappedSecret, unwrap, wrap_context
from apiary.core.tasks import SwarmConfig
from apiary.core.tls import TlsFiles
from apiary.node.client import AdminApiError, AdminClient, AdminUnreachable
from apiary.node.founding import write_swarm_file
from apiary.node.identity import Identity
from apiary.node.keys import KeyRing
from apiary.node.onboarding import Handover, JoinRequest, Pending
from apiary.node.ports import AggregateSource
from apiary.node.resumption import sign_handover_request
from apiary.node.rounds import RoundFailed
from apiary.node.schemas import JoinProgress, JoinState

log = logging.getLogger("apiary.node.join")

APPROVAL_POLL_S = 2.0
JOIN_FILE = "join.json"
JOIN_ATTEMPTS = 10
"""Tries of a join whose failures may pass: 1 + 2 + 4 + 8 + 16 + 4 × 30 s of pauses, long
enough for a sponsor that restarts, or for a round the chain lost to be run again."""
RETRY_FIRST_S = 1.0
SPONSOR_TIMEOUT_S = 120.0


class JoinFailed(ApiaryError, RuntimeError):
    """The sponsor refused, or its hand-over did not check out against the chain."""


class JoinRetry(ApiaryError, RuntimeError):
    """A failure that may pass: the sponsor answered 5xx, or its hand-over did not match
    the chain's latest aggregate (a round finished in between)."""


@dataclass(frozen=True)
class JoiningNode:
    """What a join uses of the node it turns into a swarm member."""

    name: str
    state_dir: Path
    endpoint: str
    """The gRPC endpoint peers will reach this node at."""
    identity: Identity
    tls: TlsFiles
    """This node's own TLS key and self-signed certificate."""
    param_count: int
    dataset_size: int
    """Its training samples, registered on chain at admission."""
    training: SwarmConfig
    """What it trains with: sent with its join request, checked against the swarm's."""
    keys: KeyRing
    connect: Callable[[str, str, str], SwarmContract]
    """(contract address, chain RPC URL, private key) -> the contract sending as this node."""
    activate: Callable[[], AggregateSource]
    """Become a member: connect, start the peer server; returns what fetches the chain's
    aggregates."""
    adopt: Callable[[np.ndarray, int, str], None]
    """Take the verified global weights of a round (and their digest) and start rounds."""
    model_after: Callable[[AggregateSource, int], np.ndarray] | None = None
    """The global model after a round as the swarm's aggregates make it (its server step);
    None: the round's aggregate itself (plain averaging)."""


@dataclass
class Joiner:
    node: JoiningNode
    state: JoinState = "idle"
    sponsor: str | None = None
    address: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pending: Pending | None = None
    handed_round: int | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def progress(self) -> JoinProgress:
        seconds = None
        if self.started_at is not None:
            seconds = round((self.finished_at or time.time()) - self.started_at, 2)
        pending = self.pending
        return JoinProgress(state=self.state, sponsor=self.sponsor, address=self.address,
                            error=self.error, seconds=seconds,
                            approvals=pending.approvals if pending else None,
                            needed=pending.needed if pending else None,
                            round=self.handed_round)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, sponsor: str, invite: str) -> None:
        if self.busy:
            raise RuntimeError("a join is already in progress")
        self.sponsor = sponsor.rstrip("/")
        self.error, self.started_at, self.finished_at = None, time.time(), None
        self._thread = threading.Thread(target=self._run, args=(invite,), name="join",
                                        daemon=True)
        self._thread.start()

    @property
    def resumable(self) -> bool:
        """A join this node started and has not finished (before a restart, say)."""
        saved = self._saved()
        return bool(saved.get("sponsor") and saved.get("invite")) and not saved.get("member")

    def resume(self) -> None:
        """Take up the unfinished join kept in the state directory."""
        saved = self._saved()
        log.info("node=%s resumes its join through %s", self.node.name, saved["sponsor"])
        self.start(str(saved["sponsor"]), str(saved["invite"]))

    def _run(self, invite: str) -> None:
        backoff = Backoff(first_s=RETRY_FIRST_S)
        try:
            for attempt in range(1, JOIN_ATTEMPTS + 1):
                try:
                    self._join(invite)
                    self.state, self.error = "member", None
                    self._save(invite, admitted=True, member=True)
                    return
                except JoinFailed:
                    raise
                except Exception as exc:  # may pass: a sponsor or chain that did not answer
                    if attempt == JOIN_ATTEMPTS:
                        raise
                    pause = backoff.next()
                    self.error = f"attempt {attempt} of {JOIN_ATTEMPTS}: {exc}"
                    log.warning("node=%s join attempt %d through %s failed (%s); trying again "
                                "in %.0f s", self.node.name, attempt, self.sponsor, exc, pause)
                    time.sleep(pause)
        except Exception as exc:  # the join thread reports any failure through /v1/join
            self.state, self.error = "failed", str(exc)
            log.error("node=%s join through %s failed: %s", self.node.name, self.sponsor, exc)
        finally:
            self.finished_at = time.time()

    def _saved(self) -> dict[str, object]:
        try:
            saved = json.loads((self.node.state_dir / JOIN_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def _save(self, invite: str, *, admitted: bool, member: bool = False) -> None:
        """The join's progress, private (it holds the invite, which with this node's key
        gets its hand-over again)."""
        self.node.state_dir.mkdir(parents=True, exist_ok=True)
        write_private_json(self.node.state_dir / JOIN_FILE,
                           {"sponsor": self.sponsor, "invite": invite,
                            "address": self.node.identity.address, "admitted": admitted,
                            "member": member})

    def _admitted_before(self, invite: str) -> bool:
        saved = self._saved()
        return (saved.get("sponsor") == self.sponsor and saved.get("invite") == invite
                and bool(saved.get("admitted")))

    def _join(self, invite: str) -> None:
        identity = self.node.identity
        self.address = identity.address
        if self._admitted_before(invite):
            self.state = "requesting admission"
            handover = self._ask_again(invite, None)
        else:
            self._save(invite, admitted=False)
            handover = self._ask_admission(invite)
        self._save(invite, admitted=True)
        self._verify_and_adopt(handover)

    def _ask_admission(self, invite: str) -> Handover:
        node, identity = self.node, self.node.identity
        self.state = "requesting admission"
        try:
            request = JoinRequest(invite=invite, address=identity.address,
                                  x25519_public_key=identity.x25519_public,
                                  endpoint=node.endpoint, tls_certificate=node.tls.cert.decode(),
                                  dataset_size=node.dataset_size,
                                  training=node.training.as_json())
        except ValidationError as exc:
            raise JoinFailed(f"no sponsor would accept this join request: {exc}") from None
        with self._sponsor() as sponsor:
            while True:
                try:
                    answer = sponsor.request_admission(request)
                except AdminApiError as exc:
                    if exc.status == 409:
                        # Admitted already, its answer lost? The sponsor hands over again
                        # only to this node's key; otherwise the first refusal stands.
                        return self._ask_again(invite, exc)
                    raise _join_error(exc) from None
                if isinstance(answer, Handover):
                    return answer
                self.state = "awaiting approval"
                self.pending = answer
                time.sleep(APPROVAL_POLL_S)

    def _ask_again(self, invite: str, refusal: AdminApiError | None) -> Handover:
        address, request = sign_handover_request(self.node.identity.private_key, invite)
        with self._sponsor() as sponsor:
            try:
                handover = sponsor.resume_handover(address, request)
            except AdminApiError as exc:
                raise _join_error(refusal or exc) from None
        log.info("node=%s got its hand-over again from %s", self.node.name, self.sponsor)
        return handover

    def _sponsor(self) -> AdminClient:
        """The sponsor's API; a joiner holds no token of it, its invite authorises it."""
        return AdminClient(str(self.sponsor), timeout_s=SPONSOR_TIMEOUT_S)

    def _verify_and_adopt(self, handover: Handover) -> None:
        node, identity = self.node, self.node.identity
        self.state = "verifying"
        contract = node.connect(handover.contract, handover.rpc_url, identity.private_key)
        record = contract.member(identity.address)
        if not record.active:
            raise JoinFailed("the chain does not list this node as a member")
        if record.x25519_public_key != bytes.fromhex(identity.x25519_public):
            raise JoinFailed("the chain lists this node with another X25519 key")
        if record.tls_certificate != node.tls.cert:
            raise JoinFailed("the chain lists this node with another TLS certificate")
        if record.dataset_size != node.dataset_size:
            raise JoinFailed(f"the chain registers {record.dataset_size} samples for this node, "
                             f"not {node.dataset_size}")
        swarm = self._swarm_training(handover, contract)
        write_swarm_file(node.state_dir, handover.contract, handover.rpc_url, swarm)
        for item in handover.keys:
            _, digest = contract.key_epoch(item.epoch)
            secret = unwrap(WrappedSecret.from_json(item.wrapped),
                            bytes.fromhex(identity.x25519_private),
                            wrap_context(contract.address, identity.address, item.epoch))
            node.keys.put(item.epoch, secret, digest)
        weights = np.load(io.BytesIO(base64.b64decode(handover.weights)), allow_pickle=False)
        round_number = handover.round
        aggregates = node.activate()
        if round_number > 0:
            try:
                expected = (node.model_after(aggregates, round_number) if node.model_after
                            else aggregates.fetch_aggregate(round_number,
                                                            node.param_count).weights)
            except RoundFailed as exc:
                raise JoinRetry(f"the sponsor's model is of round {round_number}, which the "
                                f"chain does not hold ({exc}): not finalized, or lost by the "
                                "chain; the sponsor hands over a later round after the next "
                                "one") from None
            if weights_digest(expected) != weights_digest(weights):
                raise JoinRetry(f"the weights handed over differ from the model round "
                                f"{round_number}'s aggregates on chain give")
        log.info("node=%s joined the swarm as %s at round %d", node.name, identity.address,
                 round_number)
        node.adopt(weights, round_number, weights_digest(weights))
        self.handed_round = round_number


    def _swarm_training(self, handover: Handover, contract: SwarmContract) -> SwarmConfig:
        """The swarm's training configuration, if it is the one on chain and this node's."""
        try:
            swarm = SwarmConfig.from_json(handover.training)
        except ConfigError as exc:
            raise JoinFailed(f"the sponsor handed over no usable training configuration: "
                             f"{exc}") from None
        if swarm.digest() != contract.training_digest():
            raise JoinFailed("the training configuration the sponsor handed over is not the "
                             "one the contract records")
        problem = self.node.training.mismatch(swarm, "the contract's")
        if problem is not None:
            raise JoinFailed(f"{problem}: start this node with the swarm's settings")
        return swarm


def _join_error(exc: AdminApiError) -> JoinRetry | JoinFailed:
    """JoinRetry for what may pass (no answer, a 5xx), JoinFailed for a refusal."""
    if isinstance(exc, AdminUnreachable):
        return JoinRetry(str(exc))
    message = f"the sponsor refused ({exc.status}): {exc.detail}"
    return JoinRetry(message) if exc.may_pass else JoinFailed(message)
