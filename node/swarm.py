"""One swarm round as a node sees it: train, enrol, encrypt, mask, exchange, commit, relay,
decrypt.

A round has two steps on chain. Each member trains, then enrols with its sample count and
the key epoch it encrypts under; once every active member enrolled (or the enrolment window
closed with at least ``minPeers``), the contract fixes the participants and their weights.
Each participant then adds its pairwise mask for exactly that set (`apiary.core.masking`),
so its ciphertext decrypts to noise even under the swarm key, commits the masked blocks'
digests and only then streams the blocks to every member. When a participant has not
committed by the end of the commit window, any participant drops it on chain; the others
re-mask the *same* ciphertext for the smaller set and commit again. No mask is ever
revealed, and because blocks leave a node only after its commit, a participant dropped for
not committing has sent nothing: no complete set of a failed attempt's ciphertexts exists,
so nobody can set a failed attempt's sum against the final one. Only the weighted sum over
the final set decrypts.

Every member receives every participant's blocks, so whichever member relays holds them; a
relay that misses some fetches them from any member that holds them, and a dead relay is
replaced by the next member of ``relayOrder``. When every participant committed but one's
blocks reach no relay for twice the commit window, it is dropped as withholding. The
contract checks every block against the committed digests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from eth_utils import keccak

from apiary.chain.binding import (
    ContractRejected,
    MemberInfo,
    RoundInfo,
    RoundTiming,
    SwarmContract,
)
from apiary.core.coefficients import block_digest, block_from_bytes, block_to_bytes, weighted_sum
from apiary.core.he import HEContext
from apiary.core.masking import Masker, MaskSet
from apiary.core.transport import (
    ReceivedUpdate,
    TransportError,
    fetch_update,
    push_update,
    sign_update,
)
from apiary.node.contribution import ContributionStore, SavedContribution
from apiary.node.keys import KeyRing
from apiary.node.metrics import NodeMetrics
from apiary.node.peer import Inbox
from apiary.node.rounds import NotAMember, RoundAbandoned, RoundFailed, RoundOutcome
from apiary.wire import apiary_pb2

log = logging.getLogger("apiary.node.swarm")

POLL_SECONDS = 0.2
# Rejections that only mean the chain moved on while we acted: another member was quicker
# (fixing the participants, dropping the absent, relaying), or a new attempt began.
CHAIN_RACES = frozenset({
    "BlockAlreadyAggregated", "RoundNotOpen", "WrongContributionCount", "WrongAttempt",
    "ParticipantsFixedAlready", "NobodyAbsent", "WindowOpen", "RoundSealedAlready",
    "NotEnoughContributors", "AlreadyCommitted", "NotParticipant",
})
PUSH_TIMEOUT_S = 30.0
PUSH_WORKERS = 8
"""Pushes this node runs at once; the rest queue. With every member pushing to every other
at once, 50 members on one machine ran ~2,500 streams side by side and most missed their
deadline; a few at a time each finishes in its share of the bandwidth."""
FETCH_TIMEOUT_S = 10.0
ENROL_TRIES = 3
FETCH_EVERY_S = 2.0
CLOCK_SLACK_S = 1.0
"""How much the chain's clock may run ahead of our estimate of it."""
CHAIN_CLOCK_EVERY_S = 2.0
RELAY_ORDER_TTL_S = 5.0

Train = Callable[[], tuple[np.ndarray, float, int]]


@dataclass
class _Contribution:
    """This node's part in one round: encrypted once, re-masked for each attempt."""

    epoch: int
    blocks: list[bytes]
    samples: int
    train_loss: float
    committed_attempt: int = 0


@dataclass
class SwarmRound:
    """Runs rounds for one member against one contract."""

    contract: SwarmContract
    he: HEContext
    inbox: Inbox
    private_key: str
    node: str
    relay_takeover_s: float
    round_timeout_s: float
    keys: KeyRing | None = None
    credentials: Callable[[], grpc.ChannelCredentials] | None = None
    """Makes the TLS credentials of one peer call (the members trusted change over time);
    None for plaintext."""
    x25519_private: bytes | None = None
    store: ContributionStore | None = None
    """Where the round's encrypted update is kept, so a restart re-sends the same blocks."""
    metrics: NodeMetrics | None = None
    """Where the exchange and relay takeovers are counted (the node's; else one of its own)."""
    _masker: Masker | None = field(default=None, init=False, repr=False)
    _masker_peers: set[str] = field(default_factory=set, init=False, repr=False)
    _relay_clock: dict[tuple[int, int], tuple[float, int, float]] = field(
        default_factory=dict, init=False, repr=False)
    """(round, attempt) → (ready since, blocks aggregated when last seen, seen since)."""
    _fetched_at: dict[tuple[int, int], float] = field(default_factory=dict, init=False,
                                                      repr=False)
    _took_over: set[tuple[int, int]] = field(default_factory=set, init=False, repr=False)
    """(round, attempt) this node announced it relays as a backup."""
    _own_share_sent: set[tuple[int, int]] = field(default_factory=set, init=False, repr=False)
    """(round, attempt) whose blocks of our own relay share we sent."""
    _deadlines: dict[tuple[str, int, int], tuple[int, float, float]] = field(
        default_factory=dict, init=False, repr=False)
    """(window, round, attempt) → (chain time it closes, our monotonic estimate of that, when
    we last read the chain's clock)."""
    _pusher: futures.ThreadPoolExecutor = field(
        default_factory=lambda: futures.ThreadPoolExecutor(PUSH_WORKERS, "push"), init=False,
        repr=False)
    """Sends our blocks to the other members while the round loop goes on."""
    _pushes: dict[int, list[futures.Future[None]]] = field(default_factory=dict, init=False,
                                                           repr=False)
    """round → its pushes, waited for before the round's outcome is handed back."""
    _relay_orders: dict[tuple[int, int], tuple[float, list[str]]] = field(
        default_factory=dict, init=False, repr=False)
    """round → (read at, relay order): read again every RELAY_ORDER_TTL_S."""

    def __post_init__(self) -> None:
        self.params = self.contract.he_parameters()
        self._metrics = self.metrics or NodeMetrics(self.node)

    def context_for(self, round_number: int, epoch: int | None = None) -> HEContext:
        """The secret context of the key epoch that encrypts `round_number`.

        After a rotation the admin delivers the new key; wait for it rather than encrypt
        under a key the swarm has retired.
        """
        if epoch is None:
            epoch = self.contract.round_timing(round_number).key_epoch
        if self.keys is None:
            if epoch != 0:
                raise RoundFailed(f"round {round_number} uses key epoch {epoch}; "
                                  "this node only holds the founding key")
            return self.he
        give_up = time.monotonic() + self.round_timeout_s
        while (he := self.keys.get(epoch)) is None:
            if time.monotonic() > give_up:
                raise RoundFailed(f"round {round_number}: key epoch {epoch} never arrived")
            log.info("node=%s round=%d waiting for HE key epoch %d", self.node, round_number,
                     epoch)
            time.sleep(1.0)
        return he

    @property
    def me(self) -> str:
        return self.contract.sender

    def _credentials(self) -> grpc.ChannelCredentials | None:
        return self.credentials() if self.credentials is not None else None

    def current_round(self) -> int:
        return self.contract.current_round()

    def last_finalized_round(self) -> int:
        return self.contract.last_finalized_round()

    # ------------------------------------------------------------------ one round

    def run(self, round_number: int, train: Train, param_count: int) -> RoundOutcome:
        """Take part in `round_number`; returns the decrypted global weights.

        Raises RoundAbandoned when the round closed without an aggregate (too few
        participants were left), so the caller keeps its model.
        """
        seconds: dict[str, float] = {}
        give_up = time.monotonic() + self.round_timeout_s
        mine = self._enrol(round_number, train, seconds)
        relayed = False
        waiting_since = time.perf_counter()
        while True:
            if self.contract.current_round() > round_number:
                break
            if time.monotonic() > give_up:
                raise RoundFailed(f"round {round_number} did not finalize within "
                                  f"{self.round_timeout_s:.0f} s")
            info = self.contract.round_info(round_number)
            if not info.participants_fixed:
                self._fix_when_due(round_number, info)
            elif not info.sealed:
                participants = self.contract.participants(round_number)
                if (mine is not None and self.me in participants
                        and mine.committed_attempt < info.attempt):
                    self._contribute(round_number, info.attempt, participants, mine, seconds)
                    waiting_since = time.perf_counter()
                    continue
                if info.committed < info.contributors:
                    self._drop_when_due(round_number, info)
                else:
                    self._drop_withheld_when_due(round_number, info, participants)
            if info.participants_fixed and info.committed == info.contributors:
                relayed = self._relay_if_our_turn(round_number, info) or relayed
            self.inbox.wait(POLL_SECONDS)
        seconds["aggregate"] = time.perf_counter() - waiting_since
        self._relay_clock = {k: v for k, v in self._relay_clock.items() if k[0] > round_number}
        self._fetched_at = {k: v for k, v in self._fetched_at.items() if k[0] > round_number}
        self._took_over = {k for k in self._took_over if k[0] > round_number}
        self._own_share_sent = {k for k in self._own_share_sent if k[0] > round_number}
        self._deadlines = {k: v for k, v in self._deadlines.items() if k[1] > round_number}
        self._relay_orders = {k: v for k, v in self._relay_orders.items() if k[0] > round_number}

        final = self.contract.round_info(round_number)
        try:
            if not final.finalized:
                raise RoundAbandoned(f"round {round_number} closed without an aggregate (fewer "
                                     f"than {self.params.min_peers} participants were left, "
                                     "or a member was removed while it ran)")
            started = time.perf_counter()
            outcome = (self._sum_locally(round_number, final.attempt, param_count)
                       or self.fetch_aggregate(round_number, param_count))
            seconds["decrypt"] = time.perf_counter() - started
        finally:
            self._settle_pushes(round_number)
            self.inbox.prune(round_number + 1)
            if self.store is not None:
                self.store.discard_through(round_number)
        outcome.seconds = seconds
        outcome.train_loss = mine.train_loss if mine else None
        outcome.committed = mine is not None and mine.committed_attempt > 0
        outcome.relay = relayed
        return outcome

    def _enrol(self, round_number: int, train: Train,
               seconds: dict[str, float]) -> _Contribution | None:
        """Train, enrol and encrypt, unless the round's participants are fixed without us."""
        record = self.contract.member(self.me)
        if not record.active:
            raise NotAMember(f"{self.me} is not an active member of the swarm any more")
        info = self.contract.round_info(round_number)
        count, _, _ = self.contract.commitment(round_number, self.me)
        if count == 0 and (info.participants_fixed or info.sealed):
            log.info("node=%s round=%d started without us; waiting for it", self.node,
                     round_number)
            return None
        saved = self.store.load(round_number) if self.store is not None else None
        if count != 0 and saved is not None and saved.samples == count:
            log.info("node=%s round=%d resumes with the update it encrypted before it "
                     "restarted", self.node, round_number)
            return _Contribution(saved.epoch, saved.blocks, saved.samples, saved.train_loss)
        started = time.perf_counter()
        weights, train_loss, samples = train()
        seconds["train"] = time.perf_counter() - started
        if samples > record.dataset_size:
            log.warning("node=%s round=%d: %d training samples, but the swarm approved %d at "
                        "admission; enrolling with %d", self.node, round_number, samples,
                        record.dataset_size, record.dataset_size)
            samples = record.dataset_size
        epoch = self.contract.round_timing(round_number).key_epoch
        if count == 0:
            started = time.perf_counter()
            for _ in range(ENROL_TRIES):
                try:
                    self.contract.enrol(round_number, epoch, samples)
                    break
                except ContractRejected as exc:
                    if exc.error == "NotMember":
                        raise NotAMember(str(exc)) from exc
                    if exc.error == "WrongKeyEpoch":
                        # A rotation landed first: enrol under the epoch it started.
                        epoch = self.contract.round_timing(round_number).key_epoch
                        log.warning("node=%s round=%d: the key epoch moved to %d while we "
                                    "enrolled", self.node, round_number, epoch)
                        continue
                    if exc.error not in CHAIN_RACES:
                        raise
                    log.warning("node=%s round=%d closed to newcomers before we enrolled "
                                "(%s)", self.node, round_number, exc.error)
                    return None
            else:
                raise RoundFailed(f"round {round_number}: the key epoch kept changing while we "
                                  "enrolled")
            seconds["enrol"] = time.perf_counter() - started
        else:
            samples = count
        started = time.perf_counter()
        blocks = self.context_for(round_number, epoch).encrypt(weights)
        seconds["encrypt"] = time.perf_counter() - started
        if self.store is not None:
            self.store.save(SavedContribution(round_number, epoch, samples, train_loss, blocks))
        log.info("node=%s round=%d enrolled with %d samples under key epoch %d", self.node,
                 round_number, samples, epoch)
        return _Contribution(epoch, blocks, samples, train_loss)

    def _fix_when_due(self, round_number: int, info: RoundInfo) -> None:
        """Fix the participants once the enrolment window closed with enough members."""
        if info.contributors < self.params.min_peers:
            return
        everyone = info.contributors >= self.contract.active_member_count()
        if not everyone and not self._window_closed(
                "enrol", round_number, info.attempt,
                lambda t: t.opened_at + self.params.enrol_window_s):
            return
        self._send_racing(lambda: self.contract.fix_participants(round_number))

    def _drop_when_due(self, round_number: int, info: RoundInfo) -> None:
        """Drop the participants that did not commit once the commit window closed."""
        if not self._window_closed("commit", round_number, info.attempt,
                                   lambda t: t.attempt_started_at + self.params.commit_window_s):
            return
        if self._send_racing(lambda: self.contract.drop_absent(round_number)):
            log.warning("node=%s round=%d attempt=%d dropped the participants that did not "
                        "commit in time", self.node, round_number, info.attempt)

    def _window_closed(self, window: str, round_number: int, attempt: int,
                       closes_at: Callable[[RoundTiming], int]) -> bool:
        """Whether the chain's clock passed one of the attempt's deadlines.

        Every member asks at every poll while it waits for the others. The deadline is read
        once per attempt; the chain's clock when the local clock says the deadline may have
        come, and at least every CHAIN_CLOCK_EVERY_S in case the chain's clock jumped.
        """
        key = (window, round_number, attempt)
        now = time.monotonic()
        if key not in self._deadlines:
            due = closes_at(self.contract.round_timing(round_number))
            self._deadlines[key] = (due, now + due - self.contract.chain_time(), now)
        due, local_due, read_at = self._deadlines[key]
        if now < local_due - CLOCK_SLACK_S and now - read_at < CHAIN_CLOCK_EVERY_S:
            return False
        chain_now = self.contract.chain_time()
        self._deadlines[key] = (due, now + due - chain_now, now)
        return chain_now >= due

    def _drop_withheld_when_due(self, round_number: int, info: RoundInfo,
                                participants: list[str]) -> None:
        """Drop committed participants whose blocks nobody could give us, once the round
        has been stuck for twice the commit window."""
        if not self._window_closed(
                "withheld", round_number, info.attempt,
                lambda t: t.attempt_started_at + 2 * self.params.commit_window_s):
            return
        _, missing = self._collect(round_number, info.attempt, participants)
        if not missing:
            return
        if self._send_racing(lambda: self.contract.drop_withheld(round_number, missing)):
            log.warning("node=%s round=%d attempt=%d dropped %s: committed, but no member "
                        "holds their blocks", self.node, round_number, info.attempt,
                        ", ".join(missing))

    def _collect(self, round_number: int, attempt: int,
                 participants: list[str]) -> tuple[dict[str, ReceivedUpdate], list[str]]:
        """The participants' updates that match their commitments for this attempt, and the
        participants whose updates we still lack after asking the other members for them
        (at most every FETCH_EVERY_S)."""
        held, wanted = self._held(round_number, attempt, participants)
        now = time.monotonic()
        key = (round_number, attempt)
        if not wanted:
            return held, []
        # The first miss only starts the clock: the update is usually still on its way.
        if now - self._fetched_at.setdefault(key, now) < FETCH_EVERY_S:
            return held, list(wanted)
        self._fetched_at[key] = now
        members = [m for m in self.contract.members() if m.address != self.me]
        for sender, digests in wanted.items():
            if any(self._fetch(round_number, attempt, sender, m.endpoint) for m in members):
                update = self.inbox.matching(round_number, attempt, sender, digests)
                if update is not None:
                    held[sender] = update
        return held, [s for s in participants if s not in held]

    def _held(self, round_number: int, attempt: int, participants: list[str]
              ) -> tuple[dict[str, ReceivedUpdate], dict[str, list[bytes]]]:
        """The participants' updates in our inbox that match their commitments for this
        attempt, and the committed digests of those we lack."""
        held: dict[str, ReceivedUpdate] = {}
        wanted: dict[str, list[bytes]] = {}
        for sender in participants:
            _, committed_attempt, digests = self.contract.commitment(round_number, sender)
            update = (self.inbox.matching(round_number, attempt, sender, digests)
                      if committed_attempt == attempt else None)
            if update is None:
                wanted[sender] = digests
            else:
                held[sender] = update
        return held, wanted

    def _fetch(self, round_number: int, attempt: int, sender: str, endpoint: str) -> bool:
        try:
            update = fetch_update(endpoint, round_number, attempt, sender,
                                  modulus=self.params.modulus,
                                  expected_blocks=self.params.block_count,
                                  contract_address=self.contract.address,
                                  timeout=FETCH_TIMEOUT_S, credentials=self._credentials())
        except TransportError as exc:
            log.info("node=%s round=%d attempt=%d could not fetch %s's blocks from %s: %s",
                     self.node, round_number, attempt, sender, endpoint, exc,
                     extra={"peer": endpoint})
            return False
        self.inbox.put(round_number, attempt, sender, update)
        self._metrics.received(update.blocks)
        log.info("node=%s round=%d attempt=%d fetched %s's blocks from %s", self.node,
                 round_number, attempt, sender, endpoint, extra={"peer": endpoint})
        return True

    def _send_racing(self, send: Callable[[], object]) -> bool:
        """Send a transaction another member may have sent first; True if ours landed."""
        try:
            send()
            return True
        except ContractRejected as exc:
            if exc.error == "NotMember":
                raise NotAMember(str(exc)) from exc
            if exc.error not in CHAIN_RACES:
                raise
            return False

    def _contribute(self, round_number: int, attempt: int, participants: list[str],
                    mine: _Contribution, seconds: dict[str, float]) -> None:
        """Mask our blocks for this attempt's participants, send them, commit."""
        started = time.perf_counter()
        blocks = self._masked(round_number, attempt, participants, mine.blocks)
        digests = [block_digest(b) for b in blocks] if blocks is not None else []
        seconds["mask"] = seconds.get("mask", 0.0) + time.perf_counter() - started
        if blocks is None:
            return

        _, committed_attempt, committed = self.contract.commitment(round_number, self.me)
        if committed_attempt == attempt:
            mine.committed_attempt = attempt
            if committed != digests:
                log.error("node=%s round=%d attempt=%d committed before a restart, but the "
                          "update it committed is lost: the swarm will drop this node from the "
                          "round", self.node, round_number, attempt)
                return
            log.info("node=%s round=%d attempt=%d committed before a restart; sending the "
                     "same blocks again", self.node, round_number, attempt)
            self._exchange(round_number, attempt, blocks, digests, mine.samples, seconds)
            return

        started = time.perf_counter()
        landed = self._send_racing(
            lambda: self.contract.commit(round_number, attempt, mine.epoch, digests))
        mine.committed_attempt = attempt
        seconds["commit"] = seconds.get("commit", 0.0) + time.perf_counter() - started
        if not landed:
            log.warning("node=%s round=%d attempt=%d closed before our commit", self.node,
                        round_number, attempt)
            return
        log.info("node=%s round=%d attempt=%d committed %d masked blocks for %d participants",
                 self.node, round_number, attempt, len(blocks), len(participants))

        self._exchange(round_number, attempt, blocks, digests, mine.samples, seconds)

    def _masked(self, round_number: int, attempt: int, participants: list[str],
                blocks: list[bytes]) -> list[bytes] | None:
        if len(participants) < 2:
            log.warning("node=%s round=%d has a single participant: its update is the "
                        "aggregate, so it cannot be masked", self.node, round_number)
            return blocks
        ordered, weights, _ = self.contract.round_weights(round_number)
        if ordered != participants:
            return None  # a new attempt began meanwhile: the round loop starts over
        mask_set = MaskSet(tuple(ordered), tuple(weights), round_number, attempt)
        return self._masker_for(participants).mask_bytes(blocks, mask_set)

    def _masker_for(self, participants: list[str]) -> Masker:
        """The masker, rebuilt when a participant's public key is not in it yet."""
        if self.x25519_private is None:
            raise RoundFailed("this node holds no X25519 key, so it cannot mask its update")
        if self._masker is None or not set(participants) <= self._masker_peers:
            peers = {m.address: m.x25519_public_key
                     for m in self.contract.members(active_only=False)}
            self._masker = Masker(self.me, self.x25519_private, peers, self.contract.address,
                                  self.params.modulus)
            self._masker_peers = set(peers)
        return self._masker

    def _exchange(self, round_number: int, attempt: int, blocks: list[bytes],
                  digests: list[bytes], samples: int, seconds: dict[str, float]) -> None:
        """Start pushing our committed blocks to every other member, and return: the round
        loop goes on meanwhile, so a relay starts aggregating as soon as it holds every
        participant's blocks rather than after its own slowest push. `seconds["exchange"]`
        is set once the last push ended."""
        header = apiary_pb2.UpdateHeader(
            round=round_number, attempt=attempt, sender=self.me, sample_count=samples,
            block_count=len(blocks), block_digests=digests,
        )
        header = sign_update(header, self.contract.address, self.private_key)
        members = [m for m in self.contract.members() if m.address != self.me]
        self.inbox.put(round_number, attempt, self.me, ReceivedUpdate(header, list(blocks)))
        if not members:
            return
        started = time.perf_counter()
        lock = threading.Lock()
        outcome = {"left": len(members), "delivered": 0}
        credentials = self._credentials()

        def push(member: MemberInfo) -> None:
            try:
                push_update(member.endpoint, header, blocks, timeout=PUSH_TIMEOUT_S,
                            credentials=credentials)
                self._metrics.sent(blocks)
                delivered = 1
            except TransportError as exc:
                delivered = 0
                log.warning("node=%s round=%d attempt=%d push to %s (%s) failed: %s",
                            self.node, round_number, attempt, member.address,
                            member.endpoint, exc,
                            extra={"peer": member.name, "peer_address": member.address})
            with lock:
                outcome["left"] -= 1
                outcome["delivered"] += delivered
                last = outcome["left"] == 0
            if last:
                seconds["exchange"] = seconds.get("exchange", 0.0) + (
                    time.perf_counter() - started)
                if outcome["delivered"] == 0:
                    log.error("node=%s round=%d attempt=%d: no other member accepted our "
                              "update", self.node, round_number, attempt)

        self._pushes.setdefault(round_number, []).extend(
            self._pusher.submit(push, member) for member in members)

    def _settle_pushes(self, round_number: int) -> None:
        """Wait for the round's pushes still running (almost always none: the relays needed
        them), so its outcome's seconds and the byte counters are complete."""
        pending = self._pushes.pop(round_number, [])
        if pending:
            futures.wait(pending, timeout=PUSH_TIMEOUT_S)

    # ------------------------------------------------------------------ relay duty

    def _relay_if_our_turn(self, round_number: int, info: RoundInfo) -> bool:
        """Aggregate the blocks that are ours to relay now; True if we aggregated any.

        The blocks of a round are spread over the relay order's participants: block i is
        relayed by the one at position i mod K (K participants), so K members send their
        transactions at once. Every other member is a backup of that block, in order after
        its relay: the member r places later waits r × `relay_takeover_s` after the round
        became ready *and* after the last block the chain saw aggregated, so a slow but live
        relay is never raced.
        """
        now = time.monotonic()
        key = (round_number, info.attempt)
        ready_since, blocks_seen, seen_since = self._relay_clock.get(key, (now, -1, now))
        if info.aggregated_blocks != blocks_seen:
            blocks_seen, seen_since = info.aggregated_blocks, now
        self._relay_clock[key] = (ready_since, blocks_seen, seen_since)
        if info.aggregated_blocks >= self.params.block_count:
            return False
        # Only participants relay: they committed, so they were up a moment ago, whereas an
        # active member that sat the round out may be down and would cost a takeover delay.
        order = self._relay_order(round_number, info.attempt)
        if self.me not in order:
            return False
        position, relays = order.index(self.me), len(order)
        elapsed = now - max(ready_since, seen_since)
        ranks_due = (relays if self.relay_takeover_s <= 0
                     else min(relays, int(elapsed / self.relay_takeover_s) + 1))
        if ranks_due == 1 and key in self._own_share_sent:
            return False  # our share is sent, and no other relay's blocks are ours yet
        pending = [i for i, digest in enumerate(self.contract.aggregate_digests(round_number))
                   if digest == bytes(32)]
        due = [i for i in pending if (position - i) % relays < ranks_due]
        if not due:
            return False
        if any((position - i) % relays > 0 for i in due) and key not in self._took_over:
            self._took_over.add(key)
            self._metrics.relay_takeover()
            log.warning("node=%s round=%d attempt=%d taking over blocks of a relay that "
                        "stalled (position %d of %d)", self.node, round_number, info.attempt,
                        position, relays)
        done = self._aggregate(round_number, info.attempt, due)
        if done is not None:
            self._own_share_sent.add(key)
        return bool(done)

    def _relay_order(self, round_number: int, attempt: int) -> list[str]:
        """The attempt's relays: the round's relay order without the members that sat it
        out, read again every RELAY_ORDER_TTL_S (the order changes only when a member is
        admitted or removed, and every member asks at every poll)."""
        now = time.monotonic()
        key = (round_number, attempt)
        read_at, order = self._relay_orders.get(key, (-RELAY_ORDER_TTL_S, []))
        if now - read_at >= RELAY_ORDER_TTL_S:
            participants = set(self.contract.participants(round_number))
            order = [a for a in self.contract.relay_order(round_number) if a in participants]
            self._relay_orders[key] = (now, order)
        return order

    def _aggregate(self, round_number: int, attempt: int, indices: list[int]) -> list[int] | None:
        """Send the `indices` blocks' aggregates in batches; the blocks that landed, or None
        while we still lack some participant's update."""
        participants = self.contract.participants(round_number)
        held, missing = self._collect(round_number, attempt, participants)
        if missing:
            return None
        results = self.contract.aggregate_batches(
            round_number, {i: [held[p].blocks[i] for p in participants] for i in indices})
        done = [i for r in results if not isinstance(r.outcome, ContractRejected)
                for i in r.blocks]
        for result in results:
            if isinstance(result.outcome, ContractRejected):
                if result.outcome.error == "NotMember":
                    raise NotAMember(str(result.outcome)) from result.outcome
                if result.outcome.error not in CHAIN_RACES:
                    raise result.outcome
        if done:
            gas = sum(r.outcome.gas_used for r in results
                      if not isinstance(r.outcome, ContractRejected))
            log.info("node=%s round=%d attempt=%d relay aggregated %d of %d blocks of %d "
                     "participants in %d transactions (gas %d)", self.node, round_number,
                     attempt, len(done), self.params.block_count, len(participants),
                     len(results), gas)
        return done

    # ------------------------------------------------------------------ result

    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome:
        """Read a finalized round's aggregate from the chain's logs, check it, decrypt it."""
        emitted = self.contract.aggregated_blocks(round_number)
        count = self.params.block_count
        if not emitted:
            raise RoundFailed(f"round {round_number}: finalized on chain, but the chain holds "
                              "none of its aggregate's logs (a devnet that lost blocks it had "
                              "written, or an RPC node that prunes logs?)")
        if sorted(emitted) != list(range(count)):
            raise RoundFailed(f"round {round_number}: the chain holds blocks "
                              f"{sorted(emitted)}, expected 0..{count - 1}")
        ordered = [emitted[i] for i in range(count)]
        for block in ordered:
            if keccak(block.coefficients) != block.digest:
                raise RoundFailed(f"round {round_number}: aggregate block {block.block_index} "
                                  "does not match its digest")
        root = self.contract.finalized_root(round_number)
        if root != keccak(b"".join(b.digest for b in ordered)):
            raise RoundFailed(f"round {round_number}: the aggregate blocks do not match the "
                              "root the contract finalized")
        contributors, _, weight_sum = self.contract.round_weights(round_number)
        if any(b.weight_sum != weight_sum for b in ordered):
            raise RoundFailed(f"round {round_number}: weight sums disagree")
        return self._decrypted(round_number, [b.coefficients for b in ordered],
                               [b.digest for b in ordered],
                               [b.transaction_hash for b in ordered], param_count,
                               contributors, weight_sum)

    def _sum_locally(self, round_number: int, attempt: int,
                     param_count: int) -> RoundOutcome | None:
        """The round's aggregate computed from the participants' blocks we hold, accepted
        only when every block's digest equals the one the contract computed and recorded.

        Every member receives every participant's blocks, so it can compute Σ wᵢ·ctᵢ mod q
        itself (the same arithmetic the contract runs) and compare digests with the chain,
        instead of reading every aggregate block back from the chain's logs: the chain
        still decides the result, the node only saves downloading it. None when an update
        is missing or any digest differs; the caller then reads the logs.
        """
        participants = self.contract.participants(round_number)
        held, wanted = self._held(round_number, attempt, participants)
        if wanted or not participants:
            return None
        finalization = self.contract.finalization(round_number)
        on_chain = self.contract.aggregate_digests(round_number)
        if finalization is None or keccak(b"".join(on_chain)) != finalization[0]:
            return None
        ordered, weights, weight_sum = self.contract.round_weights(round_number)
        if ordered != participants:
            return None
        q = self.params.modulus
        blocks = []
        for index, digest in enumerate(on_chain):
            total = weighted_sum([block_from_bytes(held[p].blocks[index], q) for p in ordered],
                                 weights, q)
            block = block_to_bytes(total)
            if keccak(block) != digest:
                log.warning("node=%s round=%d: our sum of block %d differs from the chain's; "
                            "reading the aggregate from the chain", self.node, round_number,
                            index)
                return None
            blocks.append(block)
        outcome = self._decrypted(round_number, blocks, on_chain, [finalization[1]],
                                  param_count, ordered, weight_sum)
        outcome.summed_locally = True
        return outcome

    def _decrypted(self, round_number: int, blocks: list[bytes], digests: list[bytes],
                   transactions: list[str], param_count: int, contributors: list[str],
                   weight_sum: int) -> RoundOutcome:
        he = self.context_for(round_number)
        total = he.decrypt(blocks, param_count)
        return RoundOutcome(
            round=round_number,
            weights=total / weight_sum,
            weight_sum=weight_sum,
            contributors=contributors,
            aggregate_digests=["0x" + d.hex() for d in digests],
            aggregate_transactions=transactions,
        )
