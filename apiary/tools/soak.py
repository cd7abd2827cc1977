"""The soak run: real node processes for many rounds while things go wrong on purpose.

Five (or more) hospital nodes run as OS processes on a devnet kept in a state file. A chaos
loop kills a random node with SIGKILL and restarts it, pauses one with SIGSTOP and resumes
it, and restarts the devnet once. One member is malicious: it joined through a sponsor's
admin API like any hospital, and in some rounds it commits and then withholds its blocks,
in others it commits blocks of random coefficients (a valid ciphertext that decrypts to
garbage), and every round it first tries to enrol with 2^32 - 1 samples. At the end every
honest node must hold the same weights, no round may have stayed open much past its
windows, and no honest node may have adopted a poisoned aggregate.

`apiary bench soak` runs it in full and writes a JSON report; the test suite runs a short
form.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from eth_account import Account
from web3 import Web3

from apiary.chain.binding import ContractRejected, SwarmContract, send_ether
from apiary.chain.devnet import dev_private_keys, free_port
from apiary.core.data.datasets import DatasetSpec
from apiary.core.errors import ApiaryError
from apiary.core.he import HEContext
from apiary.core.keywrap import WrappedSecret, unwrap, wrap_context
from apiary.core.rundirs import claim_run_directory
from apiary.core.tls import create_self_signed
from apiary.node.client import AdminClient
from apiary.node.guard import ModelGuard
from apiary.node.identity import Identity
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.node.rounds import RoundFailed
from apiary.node.swarm import SwarmRound
from apiary.node.trust import MemberTrust
from apiary.tools.bench.report import machine
from apiary.tools.demo import DemoOptions, LocalSwarm
from apiary.tools.progress import as_progress

log = logging.getLogger("apiary.tools.soak")

ATTACKER_SAMPLES = 40
"""The malicious member's registered dataset size (it claims far more every round)."""
OVERSIZED = 2**32 - 1
ROUND_MARGIN_S = 60.0
"""How long past its windows a round may stay open before the run counts it as stuck."""


class SoakFailed(ApiaryError, RuntimeError):
    """The swarm did not hold up: a check at the end of the soak run failed."""


@dataclass
class SoakOptions:
    nodes: int = 5
    rounds: int = 50
    window_s: int = 6
    """The swarm's enrolment and commit windows."""
    chaos_every_s: float = 25.0
    poison_every: int = 10
    """The malicious member poisons rounds 3, 3 + poison_every, … and withholds in rounds
    that fall halfway between."""
    seed: int = 0
    out_dir: Path = Path("runs/soak")
    timeout_s: float = 3600.0


@dataclass
class SoakReport:
    nodes: int
    rounds: int
    seconds: float
    rounds_per_minute: float
    finalized: int
    abandoned: int
    rejected: list[int]
    poisoned: list[int]
    withheld: list[int]
    oversized_refused: int
    chaos: list[dict[str, Any]]
    recovery_s: list[float]
    longest_round_s: float
    round_bound_s: float
    identical_weights: bool
    weights_digest: str
    machine: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            f"soak: {self.nodes} nodes + 1 malicious member, {self.rounds} rounds in "
            f"{self.seconds:.0f} s ({self.rounds_per_minute:.2f} rounds/min)",
            f"  finalized {self.finalized}, abandoned {self.abandoned}; poisoned rounds "
            f"{self.poisoned} rejected by every honest node: {self.rejected}",
            f"  withheld in {self.withheld}; oversized enrolments refused: "
            f"{self.oversized_refused}",
            f"  chaos: {', '.join(c['what'] for c in self.chaos) or 'none'}",
            f"  recovery after a kill (s): {', '.join(f'{s:.0f}' for s in self.recovery_s)}",
            f"  longest round {self.longest_round_s:.0f} s (bound {self.round_bound_s:.0f} s); "
            f"identical weights on every honest node: {self.identical_weights}",
        ]
        return "\n".join(lines)


@dataclass
class MaliciousMember:
    """A member that joined through a sponsor's API and misbehaves on a schedule; it runs
    the node's own round code, with its exchange or its blocks replaced when it attacks."""

    contract: SwarmContract
    driver: SwarmRound
    weights: np.ndarray
    poison_rounds: set[int]
    withhold_rounds: set[int]
    stop: threading.Event = field(default_factory=threading.Event)
    oversized_refused: int = 0
    attacked: dict[str, list[int]] = field(default_factory=lambda: {"poison": [],
                                                                    "withhold": []})
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="malicious", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        honest_mask = self.driver._masked
        honest_exchange = self.driver._exchange
        rng = np.random.default_rng(7)
        guard = ModelGuard()
        while not self.stop.is_set():
            try:
                round_number = self.contract.current_round()
                self._try_oversized(round_number)
                if round_number in self.poison_rounds:
                    self.attacked["poison"].append(round_number)
                    self.driver._masked = lambda r, a, p, blocks: [  # type: ignore[method-assign]
                        rng.integers(0, self.driver.params.modulus, len(b) // 8,
                                     dtype=np.uint64).astype(">u8").tobytes() for b in blocks]
                else:
                    self.driver._masked = honest_mask  # type: ignore[method-assign]
                if round_number in self.withhold_rounds:
                    self.attacked["withhold"].append(round_number)
                    self.driver._exchange = lambda *a: None  # type: ignore[method-assign]
                else:
                    self.driver._exchange = honest_exchange  # type: ignore[method-assign]
                outcome = self.driver.run(round_number, self._train, self.weights.size)
                if guard.verdict(outcome.weights, self.weights, [], consecutive=False) is None:
                    self.weights = outcome.weights
            except (RoundFailed, ContractRejected, OSError) as exc:
                log.info("malicious member: round failed (%s)", exc)
                self.stop.wait(1.0)
            except Exception as exc:  # the chain restarts under it; keep going
                log.info("malicious member: %s: %s", type(exc).__name__, exc)
                self.stop.wait(1.0)

    def _try_oversized(self, round_number: int) -> None:
        info = self.contract.round_info(round_number)
        if info.participants_fixed or self.contract.commitment(round_number,
                                                               self.contract.sender)[0]:
            return
        try:
            epoch = self.contract.round_timing(round_number).key_epoch
            self.contract.enrol(round_number, epoch, OVERSIZED)
        except ContractRejected as exc:
            if exc.error == "SampleCountAboveDataset":
                self.oversized_refused += 1

    def _train(self) -> tuple[np.ndarray, float, int]:
        return self.weights, 0.0, ATTACKER_SAMPLES


def _schedule(options: SoakOptions) -> tuple[set[int], set[int]]:
    poison = set(range(3, options.rounds + 1, options.poison_every))
    withhold = {r + max(1, options.poison_every // 2) for r in poison}
    return poison, withhold - poison


def _join_attacker(swarm: LocalSwarm, options: SoakOptions,
                   poison: set[int], withhold: set[int]) -> tuple[MaliciousMember, Any]:
    """Admit the malicious member through the first founder's admin API."""
    sponsor = swarm.nodes[swarm.founders[0]].api_url
    with AdminClient(sponsor, swarm.options.admin_token) as client:
        invite = client.create_invite(600).invite
        # It claims the swarm's own training configuration: the sponsor checks only that.
        training = client.training().config
    identity = Identity.create("malicious")
    port = free_port()
    tls = create_self_signed("malicious", ["127.0.0.1"])
    reply = httpx.post(f"{sponsor}/v1/members", timeout=120, json={
        "invite": invite, "address": identity.address,
        "x25519_public_key": identity.x25519_public, "endpoint": f"127.0.0.1:{port}",
        "tls_certificate": tls.cert.decode(), "dataset_size": ATTACKER_SAMPLES,
        "training": training})
    if reply.status_code != 200:
        raise SoakFailed(f"the sponsor refused the malicious member: {reply.text[:300]}")
    handover = reply.json()
    w3 = Web3(Web3.HTTPProvider(handover["rpc_url"], request_kwargs={"timeout": 120}))
    send_ether(w3, Account.from_key(dev_private_keys(1)[0]), identity.address, 10**19)
    contract = SwarmContract.at(w3, handover["contract"], identity.private_key)
    (key,) = [k for k in handover["keys"] if k["epoch"] == 0]
    secret = unwrap(WrappedSecret.from_json(key["wrapped"]),
                    bytes.fromhex(identity.x25519_private),
                    wrap_context(contract.address, identity.address, 0))
    he = HEContext.from_bytes(secret)
    weights = np.load(io.BytesIO(base64.b64decode(handover["weights"])), allow_pickle=False)
    trust = MemberTrust(SwarmContract.at(w3, contract.address, identity.private_key), tls)
    inbox = Inbox()
    x25519 = bytes.fromhex(identity.x25519_private)
    server = start_peer_server(PeerService(SwarmContract.at(w3, contract.address,
                                                            identity.private_key),
                                           inbox, "malicious", None, x25519, trust),
                               "127.0.0.1", port, trust)
    driver = SwarmRound(contract, he, inbox, identity.private_key, "malicious",
                        relay_takeover_s=3, round_timeout_s=options.timeout_s,
                        credentials=trust.channel_credentials, x25519_private=x25519)
    return MaliciousMember(contract, driver, weights, poison, withhold), server


@dataclass
class Chaos:
    """Kills and restarts, pauses and resumes honest nodes; restarts the devnet once."""

    swarm: LocalSwarm
    options: SoakOptions
    log: list[dict[str, Any]] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    """Per kill: seconds from the restart until the node holds a newer round."""
    stop: threading.Event = field(default_factory=threading.Event)
    devnet_restarted: bool = False
    began: float = field(default_factory=time.monotonic)

    error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the soak run reports it and stops
            self.error = exc
            self.stop.set()

    def _run(self) -> None:
        rng = random.Random(self.options.seed)
        actions = ["kill", "pause", "devnet", "kill", "pause", "kill"]
        step = 0
        while not self.stop.wait(self.options.chaos_every_s):
            action = actions[step % len(actions)]
            step += 1
            if action == "devnet" and self.devnet_restarted:
                action = "kill"
            name = rng.choice(self.swarm.founders)
            if self.swarm.nodes[name].process.poll() is not None:
                continue  # it finished its rounds
            started = time.monotonic()
            if action == "kill":
                self.swarm.kill(name)
                self.stop.wait(2.0)
                round_then = _state_round(self.swarm, name)
                self.swarm.start(name)
                threading.Thread(target=self._time_recovery, args=(name, round_then),
                                 daemon=True).start()
            elif action == "pause":
                self.swarm.nodes[name].process.send_signal(signal.SIGSTOP)
                self.stop.wait(self.options.window_s * 1.5)
                self.swarm.nodes[name].process.send_signal(signal.SIGCONT)
            else:
                action, name = "restart", "devnet"
                self.swarm.restart_devnet()
                self.devnet_restarted = True
            self.log.append({"what": f"{action} {name}", "at_s": round(started - self.began, 1),
                             "seconds": round(time.monotonic() - started, 1)})


    def _time_recovery(self, name: str, round_then: int) -> None:
        restarted = time.monotonic()
        while not self.stop.wait(0.5):
            if _state_round(self.swarm, name) > round_then:
                self.recovery_s.append(round(time.monotonic() - restarted, 1))
                return


def _state_round(swarm: LocalSwarm, name: str) -> int:
    path = swarm.state_dir(name) / "state.json"
    try:
        return int(json.loads(path.read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def run_soak(options: SoakOptions, emit: Callable[[str], None]) -> SoakReport:
    poison, withhold = _schedule(options)
    demo = DemoOptions(rounds=options.rounds, epochs=1, out_dir=options.out_dir,
                       round_deadline_s=options.window_s, timeout_s=options.timeout_s,
                       min_peers=2, model="cnn",
                       dataset=DatasetSpec("fashion", images=150 * options.nodes,
                                           hospitals=options.nodes))
    claim_run_directory(options.out_dir, "apiary bench soak")
    started = time.monotonic()
    task = as_progress(emit).task(options.rounds, f"founding a swarm of {options.nodes} nodes")
    with LocalSwarm(demo, emit=emit, keep_devnet_state=True) as swarm:
        swarm.found()
        attacker, server = _join_attacker(swarm, options, poison, withhold)
        emit(f"malicious member {attacker.contract.sender} joined; it poisons rounds "
             f"{sorted(poison)} and withholds in {sorted(withhold)}")
        attacker.start()
        chaos = Chaos(swarm, options)
        chaos_thread = threading.Thread(target=chaos.run, name="chaos", daemon=True)
        chaos_thread.start()
        contract = attacker.contract
        try:
            last = 0
            def done() -> bool:
                nonlocal last
                finished = [_state_round(swarm, n) for n in swarm.founders]
                behind = sum(1 for r in finished if r <= min(finished))
                waiting = (f"round {min(finished) + 1}/{options.rounds}: waiting for {behind} "
                           f"of {len(finished)} honest nodes" if min(finished) < options.rounds
                           else "every honest node holds the last round; waiting for them to stop")
                if min(finished) > last:
                    task.advance(min(finished) - last, waiting)
                    last = min(finished)
                task.describe(waiting)
                if chaos.error is not None:
                    raise SoakFailed(f"the chaos loop failed: {chaos.error}")
                return all(swarm.nodes[n].process.poll() == 0 for n in swarm.founders)
            swarm.wait_until(done, options.timeout_s, f"{options.rounds} rounds")
        finally:
            chaos.stop.set()
            chaos_thread.join(60)
            attacker.stop.set()
            if attacker.thread is not None:
                attacker.thread.join(30)
            server.stop(grace=None)
        seconds = time.monotonic() - started
        return _report(swarm, options, contract, attacker, chaos, seconds)


def _report(swarm: LocalSwarm, options: SoakOptions, contract: SwarmContract,
            attacker: MaliciousMember, chaos: Chaos, seconds: float) -> SoakReport:
    histories = {n: swarm.history(n) for n in swarm.founders}
    digests = {n: json.loads((swarm.state_dir(n) / "state.json").read_text())["weights_digest"]
               for n in swarm.founders}
    params = contract.he_parameters()
    bound = params.enrol_window_s + 4 * params.commit_window_s + ROUND_MARGIN_S
    finalized = abandoned = 0
    longest = 0.0
    last = contract.current_round()
    for r in range(1, last):
        opened = contract.round_timing(r).opened_at
        closed = contract.round_timing(r + 1).opened_at
        longest = max(longest, float(closed - opened))
        if contract.round_info(r).finalized:
            finalized += 1
        else:
            abandoned += 1
    poisoned = sorted(r for r in set(attacker.attacked["poison"])
                      if contract.round_info(r).finalized
                      and attacker.contract.sender in contract.round_weights(r)[0])
    adopted_poison = {n: [e["round"] for e in h
                          if e["round"] in poisoned and e.get("status") == "adopted"]
                      for n, h in histories.items()}
    rejected = sorted({e["round"] for h in histories.values() for e in h
                       if e.get("status") == "rejected"})
    report = SoakReport(
        nodes=options.nodes, rounds=options.rounds, seconds=round(seconds, 1),
        rounds_per_minute=round(options.rounds / seconds * 60, 2), finalized=finalized,
        abandoned=abandoned, rejected=rejected, poisoned=poisoned,
        withheld=sorted(set(attacker.attacked["withhold"])),
        oversized_refused=attacker.oversized_refused, chaos=chaos.log,
        recovery_s=list(chaos.recovery_s), longest_round_s=longest,
        round_bound_s=bound, identical_weights=len(set(digests.values())) == 1,
        weights_digest=next(iter(digests.values())), machine=machine(),
    )
    problems = []
    if not report.identical_weights:
        problems.append(f"the honest nodes hold different weights: {digests}")
    if any(adopted_poison.values()):
        problems.append(f"honest nodes adopted poisoned aggregates: {adopted_poison}")
    if longest > bound:
        problems.append(f"a round stayed open {longest:.0f} s (bound {bound:.0f} s)")
    if problems:
        raise SoakFailed("; ".join(problems))
    return report


def write_report(report: SoakReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=1) + "\n")
