"""`apiary bench round`: per-phase wall time of one real swarm round.

Every node is the real node code (`node.swarm.SwarmRound` with its gRPC `PeerService`)
running in a process of its own, as a hospital runs it, against one real anvil devnet and
a contract deployed per configuration. Training is real local training of an MLP of the requested
size on a small synthetic dataset, so the "train" column means something, but the
target concerns everything else.

Reading the figures: all nodes share this machine's CPUs, so phases that run on every
node at once (encryption, gRPC streaming and its block checks, chain polling, decryption)
contend as separate hospitals would not. Conversely loopback
gRPC and an anvil that mines each transaction at once hide network and block latency.
A node's "aggregate" is the relay's aggregate transactions, or for the others their wait
until the round finalizes (which includes waiting for the slowest member to commit).

Many members (`members_per_process` > 1, automatic above MAX_PROCESSES members): a process
per member does not fit one machine (each imports torch, ~400 MB), so several members share
a process, each in a thread of its own. What stays real: every member has its own gRPC peer
server on its own port, its own Web3 connections, contract binding, `SwarmRound`, swarm key
copy, model and data, and its own account on the one anvil; the ciphertexts, masks, pushes,
commits and aggregate transactions are those of a real round against the real contract, so
the gas figures are exactly a real swarm's. What changes: the members of a process share its
GIL (and every process this machine's 2 cores), so their seconds, CPU time and the
process's peak memory are an upper bound of what one hospital's node would take on its own
machine; "peak MiB" is then per process, not per member.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import Devnet, dev_private_keys, free_port, running_devnet
from apiary.core.errors import ConfigError
from apiary.core.flat import flatten, load_flat, param_count
from apiary.core.he import HEContext
from apiary.core.models import build_mlp_with_params
from apiary.core.processes import stop_processes
from apiary.core.settings import ChainSettings
from apiary.core.tasks.config import SwarmConfig, TaskIdentity
from apiary.core.tls import create_self_signed
from apiary.core.training import DEFAULT_TRAINING, TrainingConfig, train_local
from apiary.node.founding import found_swarm
from apiary.node.identity import Identity
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.node.rounds import RoundOutcome
from apiary.node.swarm import SwarmRound
from apiary.tools.bench.cost import GAS_KINDS, MAX_MEMBERS, linear_fit
from apiary.tools.bench.report import load_average, machine, median, table
from apiary.tools.progress import Task, as_progress

PHASES = ("train", "enrol", "encrypt", "mask", "exchange", "commit", "aggregate", "decrypt")
TARGET_NODES = 5
MAX_PROCESSES = 10
"""Above this many members, members share processes (~400 MB each with torch)."""
TARGETS_SECONDS_EXCLUDING_TRAIN = {100_000: 1.5, 1_000_000: 5.0}
"""Non-training seconds per round that 5 nodes should stay within, by model size."""

INPUT_DIM = 15
NUM_CLASSES = 2
ROWS_PER_NODE = 256
DATASET_SIZE = ROWS_PER_NODE
MAX_AGGREGATE_ERROR = 1e-4
"""CKKS at scale 2^40 averages to ~1e-8; anything near this bound means a broken round."""
STOP_GRACE_S = 10.0
WINDOW_S = 600
TRAINING = TrainingConfig(rounds=1, epochs=1, lr=0.01, batch_size=32, seed=DEFAULT_TRAINING.seed)
"""One quick epoch on the synthetic rows: the benchmark times the round, not the learning."""


def bench_round(
    node_counts: Sequence[int] = (3, 5),
    param_targets: Sequence[int] = (10_000, 100_000, 1_000_000),
    rows: int = ROWS_PER_NODE,
    rounds: int = 3,
    round_timeout_s: float = 600.0,
    seed: int = TRAINING.seed,
    progress: Callable[[str], None] | None = None,
    members_per_process: int | None = None,
) -> dict[str, Any]:
    """Run `rounds` swarm rounds per (node count, model size) and time each phase on each
    node; `members_per_process` members share a process (None: one each up to
    MAX_PROCESSES members, else as few per process as keep MAX_PROCESSES processes).

    Per round and phase the median and the maximum across nodes; the slowest relay's own
    "aggregate" (its aggregate transactions plus its wait for every commit) separately; then
    the median of each figure over the rounds. Gas is every transaction of the round, of
    every node; memory the peak resident size of each node process.
    """
    check_round_flags(node_counts, param_targets, rows, rounds, members_per_process)
    say = as_progress(progress)
    facts = machine()
    task = say.task(len(node_counts) * len(param_targets), "warming up torch, starting a devnet")
    # One thread per node trains at once: more torch threads would only oversubscribe.
    torch.set_num_threads(1)
    _warm_up_torch(seed)
    he = HEContext.create()
    keys = dev_private_keys(max(node_counts) + 1)
    settings = ChainSettings.load()
    # One funded account per member and the admin's.
    accounts = max(settings.devnet_accounts, max(node_counts) + 1)
    results = []
    with running_devnet(settings.model_copy(update={"devnet_accounts": accounts})) as devnet:
        for nodes in node_counts:
            per_process = members_per_process or auto_members_per_process(nodes)
            for target in param_targets:
                results.append(_one_config(devnet, he, keys, nodes, target, rows, rounds,
                                           round_timeout_s, seed, say, task, per_process))
                task.advance()
    return {
        "benchmark": "round",
        **facts,
        "torch_threads": torch.get_num_threads(),
        "rows_per_node": rows,
        "rounds": rounds,
        "targets": {
            "nodes": TARGET_NODES,
            "max_seconds_excluding_train": {str(p): s for p, s in
                                            TARGETS_SECONDS_EXCLUDING_TRAIN.items()},
        },
        "load_average_at_end": load_average(),
        "results": results,
        "scaling": scaling(results),
    }


def check_round_flags(
    node_counts: Sequence[int], param_targets: Sequence[int], rows: int, rounds: int,
    members_per_process: int | None,
) -> None:
    """Refuse a configuration no swarm can run, before anything starts."""
    if not node_counts or not param_targets:
        raise ConfigError("need at least one node count (--nodes) and one model size (--params)")
    if min(node_counts) < 1:
        raise ConfigError(f"--nodes {min(node_counts)}: a swarm needs at least 1 member")
    if max(node_counts) > MAX_MEMBERS:
        raise ConfigError(f"--nodes {max(node_counts)}: the contract admits at most "
                          f"{MAX_MEMBERS} members (MAX_MEMBERS)")
    if min(param_targets) < 1:
        raise ConfigError(f"--params {min(param_targets)}: a model needs at least 1 parameter")
    if rows < 1 or rounds < 1:
        raise ConfigError("--rows and --rounds must be at least 1")
    if members_per_process is not None and members_per_process < 1:
        raise ConfigError(f"--members-per-process {members_per_process}: must be at least 1")


def auto_members_per_process(members: int) -> int:
    """One member per process up to MAX_PROCESSES members, then as few per process as keep
    the processes at MAX_PROCESSES."""
    return max(1, math.ceil(members / MAX_PROCESSES))


def process_groups(count: int, per_process: int) -> list[range]:
    """Member indices 0..count-1 in consecutive groups of at most `per_process`."""
    return [range(start, min(start + per_process, count))
            for start in range(0, count, per_process)]


def scaling(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model size run with several member counts: the least-squares line of gas, seconds
    (all but training) and wall time per round against the number of members."""
    lines = []
    for params in sorted({r["params"] for r in results}):
        rows = [r for r in results if r["params"] == params]
        if len({r["nodes"] for r in rows}) < 2:
            continue
        members = [float(r["nodes"]) for r in rows]
        fits = {key: linear_fit(members, [float(r[key]) for r in rows])
                for key in ("gas_per_round", "seconds_excluding_train", "round_wall_seconds")}
        lines.append({
            "params": params,
            "members": [r["nodes"] for r in rows],
            "gas_per_member": fits["gas_per_round"][0],
            "gas_intercept": fits["gas_per_round"][1],
            "seconds_per_member": fits["seconds_excluding_train"][0],
            "seconds_intercept": fits["seconds_excluding_train"][1],
            "wall_seconds_per_member": fits["round_wall_seconds"][0],
            "wall_seconds_intercept": fits["round_wall_seconds"][1],
        })
    return lines


def _one_config(
    devnet: Devnet,
    he: HEContext,
    keys: list[str],
    nodes: int,
    target: int,
    rows: int,
    rounds: int,
    round_timeout_s: float,
    seed: int,
    say: Callable[[str], None],
    task: Task,
    members_per_process: int = 1,
) -> dict[str, Any]:
    model = build_mlp_with_params(target, INPUT_DIM, NUM_CLASSES, seed)
    params = param_count(model)
    training = SwarmConfig.of(TaskIdentity.named("bench-mlp", "1", model), TRAINING)
    label = f"{nodes} nodes, {params:,} params"
    groups = process_groups(nodes, members_per_process)
    task.describe(f"{label}: deploying the contract, starting {len(groups)} node processes")
    identities = [Identity.create(f"node{i}", keys[i + 1]) for i in range(nodes)]
    ports = [free_port() for _ in identities]
    founders = [
        ident.public(f"127.0.0.1:{port}", create_self_signed(ident.name, ["127.0.0.1"]),
                     DATASET_SIZE)
        for ident, port in zip(identities, ports, strict=True)
    ]
    # Every member takes part in every round: windows long enough that no member is dropped
    # for being slow on a loaded machine (the benchmark times rounds, not dropouts).
    contract = found_swarm(devnet.web3(), keys[0], he, params, founders, min_peers=nodes,
                           enrol_window_s=WINDOW_S, commit_window_s=WINDOW_S,
                           training=training)
    context = multiprocessing.get_context("spawn")
    ready, go, done = context.Queue(), context.Event(), context.Queue()
    specs = [
        _NodeSpec(devnet.rpc_url, contract.address, ident.name, ident.private_key,
                  bytes.fromhex(ident.x25519_private), port, he.secret_bytes(), params, rows,
                  rounds, round_timeout_s, seed, index)
        for index, (ident, port) in enumerate(zip(identities, ports, strict=True))
    ]  # fmt: skip
    processes = [context.Process(target=_process_main,
                                 args=([specs[i] for i in group], ready, go, done), daemon=True)
                 for group in groups]
    for process in processes:
        process.start()
    try:
        for answered in range(nodes):
            task.describe(f"{label}: waiting for {nodes - answered} nodes to start")
            ready.get(timeout=120 + 30 * members_per_process)
        chain_cpu_started = _process_cpu_seconds(devnet)
        started = time.perf_counter()
        go.set()
        reports: list[dict[str, Any]] = []
        for _ in specs:
            task.describe(f"{label}: waiting for {nodes - len(reports)} nodes to finish "
                          f"{rounds} round{'s' if rounds > 1 else ''}")
            reports.append(done.get(timeout=rounds * round_timeout_s + 60))
        wall = time.perf_counter() - started
        chain_cpu = _process_cpu_seconds(devnet) - chain_cpu_started
    finally:
        stop_processes(processes, STOP_GRACE_S)
    failures = [r["error"] for r in reports if "error" in r]
    if failures:
        raise RuntimeError(f"{label}: a node failed: {failures[0]}")
    per_round = []
    for number in range(1, rounds + 1):
        if not contract.round_info(number).finalized:
            raise RuntimeError(f"{label}: round {number} did not finalize")
        outcomes = [r["outcomes"][number - 1] for r in reports]
        trained = {r["address"]: r["trained"][number - 1] for r in reports}
        error = _aggregate_error(contract, number, trained, outcomes)
        if error > MAX_AGGREGATE_ERROR:
            raise RuntimeError(f"{label}: round {number}'s decrypted average is off by {error:g}")
        gas = sum(r["gas"][number - 1] for r in reports)
        cpu = [r["cpu_seconds"][number - 1] for r in reports]
        per_round.append(_summarise(nodes, params, outcomes, error, gas, cpu))
        per_round[-1]["gas_by_kind"] = {
            kind: sum(r["gas_by_kind"][number - 1].get(kind, 0) for r in reports)
            for kind in GAS_KINDS}
        per_round[-1]["aggregate_transactions"] = sum(
            r["aggregate_transactions"][number - 1] for r in reports)
    row = _median_row(nodes, params, per_round)
    row["blocks"] = contract.he_parameters().block_count
    row["gas_by_kind"] = {kind: int(median([r["gas_by_kind"][kind] for r in per_round]))
                          for kind in GAS_KINDS}
    row["aggregate_transactions"] = int(median([r["aggregate_transactions"]
                                                for r in per_round]))
    row["finalized"] = True  # every round was checked above
    row["members_per_process"] = members_per_process
    row["processes"] = len(groups)
    row["round_wall_seconds"] = wall / rounds
    # How busy the machine's CPUs were while the rounds ran: near 1, running phases side by
    # side (e.g. aggregating while blocks still stream) can only reshuffle the same work.
    node_cpu = sum(sum(r["cpu_seconds"]) for r in reports)
    row["chain_cpu_seconds_per_round"] = chain_cpu / rounds
    row["cpu_utilisation"] = (node_cpu + chain_cpu) / (wall * (os.cpu_count() or 1))
    # Members of one process report that process's peak: count each process once.
    peaks = list({r["process"]: r["peak_rss_mib"] for r in reports}.values())
    row["peak_rss_mib"] = {"median": median(peaks), "max": max(peaks),
                           "per": "process" if members_per_process > 1 else "node"}
    say(f"{label}: {row['seconds_excluding_train']:.2f} s excluding training (median of "
        f"{rounds} rounds), {row['gas_per_round'] / 1e6:,.0f} M gas a round")
    return row


def _process_cpu_seconds(devnet: Devnet) -> float:
    """CPU seconds the devnet's anvil process used so far (0 where /proc is not there)."""
    if devnet.process is None:
        return 0.0
    try:
        fields = Path(f"/proc/{devnet.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _NodeSpec:
    rpc_url: str
    contract: str
    name: str
    private_key: str
    x25519_private: bytes
    port: int
    secret: bytes
    params: int
    rows: int
    rounds: int
    round_timeout_s: float
    seed: int
    index: int


def _process_main(specs: Sequence[_NodeSpec], ready: Any, go: Any, done: Any) -> None:
    """One process with one or several members, each set up as a hospital's node is, then
    each running its rounds in a thread of its own when told to. One report per member."""
    members: list[_Member] = []
    try:
        torch.set_num_threads(1)
        _warm_up_torch(specs[0].seed)
        for spec in specs:
            members.append(_Member(spec))
            ready.put(spec.name)
    except Exception as exc:  # reported to the parent, which fails the benchmark
        for spec in specs[len(members):]:
            ready.put(spec.name)
            done.put({"error": f"{spec.name}: {exc!r}"})
        specs = specs[:len(members)]
    go.wait()
    threads = [threading.Thread(target=member.run_rounds, args=(done, len(members)),
                                name=member.spec.name) for member in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for member in members:
        member.server.stop(grace=None).wait()


class _GasMeter:
    """The gas of each transaction a member's binding sends, per round and per kind
    (enrol, fix, commit, aggregate, drop): each sending method of the binding is wrapped to
    name the kind its mined transactions count under."""

    METHODS: ClassVar[dict[str, str]] = {
        "enrol": "enrol", "fix_participants": "fix", "commit": "commit",
        "aggregate_batches": "aggregate", "aggregate": "aggregate", "drop_absent": "drop",
        "drop_withheld": "drop",
    }

    def __init__(self, contract: SwarmContract) -> None:
        self.rounds: list[dict[str, int]] = [{}]
        self.aggregate_transactions = [0]
        self._kind = "other"
        contract.on_mined = self._mined
        for method, kind in self.METHODS.items():
            setattr(contract, method, self._named(getattr(contract, method), kind))

    def _named(self, send: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def sending(*args: Any, **kwargs: Any) -> Any:
            self._kind = kind
            try:
                return send(*args, **kwargs)
            finally:
                self._kind = "other"
        return sending

    def _mined(self, tx: Any) -> None:
        this_round = self.rounds[-1]
        this_round[self._kind] = this_round.get(self._kind, 0) + tx.gas_used
        if self._kind == "aggregate":
            self.aggregate_transactions[-1] += 1

    def next_round(self) -> None:
        self.rounds.append({})
        self.aggregate_transactions.append(0)

    def totals(self) -> list[int]:
        return [sum(kinds.values()) for kinds in self.rounds]


class _Member:
    """One member as a hospital runs it: its gRPC peer server, its Web3 connections and
    contract bindings, its copy of the swarm key, its data and model."""

    def __init__(self, spec: _NodeSpec) -> None:
        self.spec = spec
        w3 = Web3(Web3.HTTPProvider(spec.rpc_url, request_kwargs={"timeout": 120}))
        self.contract = SwarmContract.at(w3, spec.contract, spec.private_key)
        self.gas = _GasMeter(self.contract)
        inbox = Inbox()
        peer = SwarmContract.at(Web3(Web3.HTTPProvider(spec.rpc_url)), spec.contract,
                                spec.private_key)
        self.server = start_peer_server(PeerService(peer, inbox, spec.name), "127.0.0.1",
                                        spec.port)
        self.driver = SwarmRound(
            self.contract, HEContext.from_bytes(spec.secret), inbox, spec.private_key,
            spec.name, relay_takeover_s=spec.round_timeout_s,
            round_timeout_s=spec.round_timeout_s, x25519_private=spec.x25519_private,
        )  # fmt: skip
        self.model = build_mlp_with_params(spec.params, INPUT_DIM, NUM_CLASSES, spec.seed)
        self.x, self.y = _synthetic_data(spec.rows, spec.seed * 1000 + spec.index)
        self.trained: list[np.ndarray] = []

    def train(self) -> tuple[np.ndarray, float, int]:
        loss = _train(self.model, self.x, self.y, self.spec.seed + self.spec.index)
        self.trained.append(flatten(self.model))
        return self.trained[-1], loss, self.spec.rows

    def run_rounds(self, done: Any, sharing: int) -> None:
        """`rounds` rounds; reports each round's outcome, trained weights, the gas of the
        transactions this member sent in it, CPU time (the process's over the round,
        divided among the `sharing` members that run at once) and the peak memory."""
        spec = self.spec
        try:
            outcomes, cpu = [], []
            for number in range(1, spec.rounds + 1):
                started, cpu_started = time.perf_counter(), time.process_time()
                outcomes.append(self.driver.run(number, self.train, spec.params))
                cpu.append((time.process_time() - cpu_started) / sharing)
                outcomes[-1].seconds["run"] = time.perf_counter() - started
                if number < spec.rounds:
                    load_flat(self.model, outcomes[-1].weights)
                    self.gas.next_round()
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            done.put({"address": self.contract.sender, "outcomes": outcomes,
                      "trained": self.trained, "gas": self.gas.totals(),
                      "gas_by_kind": self.gas.rounds,
                      "aggregate_transactions": self.gas.aggregate_transactions,
                      "cpu_seconds": cpu, "peak_rss_mib": peak_kib / 1024,
                      "process": os.getpid()})
        except Exception as exc:  # reported to the parent, which fails the benchmark
            done.put({"error": f"{spec.name}: {exc!r}"})


def _warm_up_torch(seed: int) -> None:
    """torch's first backward/optimiser step costs ~1.5 s of one-off set-up; a running node
    pays it once at start, not each round, so keep it out of the "train" column."""
    x, y = _synthetic_data(32, seed)
    model = build_mlp_with_params(1_000, INPUT_DIM, NUM_CLASSES, seed)
    _train(model, x, y, seed)


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    return train_local(model, x, y, epochs=TRAINING.epochs, lr=TRAINING.lr,
                       batch_size=TRAINING.batch_size, seed=seed)


def _synthetic_data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features with labels from a fixed linear rule: learnable, deterministic."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, INPUT_DIM)).astype(np.float32)
    rule = np.random.default_rng(0).normal(size=INPUT_DIM)
    y = (x @ rule + rng.normal(scale=0.5, size=rows) > 0).astype(np.int64)
    return x, y


def _aggregate_error(
    contract: SwarmContract, number: int, by_address: dict[str, np.ndarray],
    outcomes: Sequence[RoundOutcome],
) -> float:
    """Largest deviation of any node's decrypted model from the plain weighted mean."""
    addresses, weights, total = contract.round_weights(number)
    expected = sum(w * by_address[a] for a, w in zip(addresses, weights, strict=True)) / total
    return max(float(np.max(np.abs(o.weights - expected))) for o in outcomes)


def _summarise(
    nodes: int, params: int, outcomes: Sequence[RoundOutcome], error: float, gas: int,
    cpu: Sequence[float],
) -> dict[str, Any]:
    """One round's figures across its nodes."""
    for outcome in outcomes:
        # The pushes of "exchange" run beside the round and may end just after it.
        missing = [p for p in PHASES if p not in outcome.seconds and p != "exchange"]
        if missing or not outcome.committed:
            raise RuntimeError(f"a node did not take part in every phase (missing {missing})")
    relays = [o for o in outcomes if o.relay]
    if not relays:
        raise RuntimeError("no node relayed the round's aggregate")
    # A node's round from the start of its part to its decrypted model, but its own training:
    # phases may overlap (a relay sends while blocks still arrive), so they are not summed.
    per_node = [o.seconds["run"] - o.seconds["train"] for o in outcomes]
    return {
        "seconds": {p: median(_phase(outcomes, p)) for p in PHASES},
        "seconds_max": {p: max(_phase(outcomes, p)) for p in PHASES},
        "relays": len(relays),
        "relay_aggregate_seconds": max(o.seconds["aggregate"] for o in relays),
        # Median over nodes of each node's own time from trained weights to decrypted model.
        "seconds_excluding_train": median(per_node),
        "seconds_excluding_train_max": max(per_node),
        "gas_per_round": gas,
        # CPU time of each node process over the round, training included: unlike wall
        # time, it hardly depends on what else runs on the machine.
        "cpu_seconds": median(cpu),
        "cpu_seconds_max": max(cpu),
        "summed_locally": sum(o.summed_locally for o in outcomes),
        "max_abs_error": error,
    }


def _phase(outcomes: Sequence[RoundOutcome], phase: str) -> list[float]:
    return [o.seconds[phase] for o in outcomes if phase in o.seconds] or [float("nan")]


def _median_row(nodes: int, params: int, per_round: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (the largest error), and the rounds themselves."""
    def over_rounds(key: str) -> float:
        return median([r[key] for r in per_round])

    return {
        "nodes": nodes,
        "params": params,
        "seconds": {p: median([r["seconds"][p] for r in per_round]) for p in PHASES},
        "seconds_max": {p: median([r["seconds_max"][p] for r in per_round]) for p in PHASES},
        "relays": int(over_rounds("relays")),
        "relay_aggregate_seconds": over_rounds("relay_aggregate_seconds"),
        "seconds_excluding_train": over_rounds("seconds_excluding_train"),
        "seconds_excluding_train_max": over_rounds("seconds_excluding_train_max"),
        "gas_per_round": int(over_rounds("gas_per_round")),
        "cpu_seconds": over_rounds("cpu_seconds"),
        "cpu_seconds_max": over_rounds("cpu_seconds_max"),
        "summed_locally": min(r["summed_locally"] for r in per_round),
        "max_abs_error": max(r["max_abs_error"] for r in per_round),
        "per_round": list(per_round),
    }


def _nearest_target(params: int) -> int | None:
    for target in TARGETS_SECONDS_EXCLUDING_TRAIN:
        if abs(params - target) <= 0.1 * target:
            return target
    return None


def format_round_table(result: dict[str, Any]) -> str:
    rows = [
        (
            r["nodes"],
            r["params"],
            *(r["seconds"][p] for p in PHASES),
            r["relay_aggregate_seconds"],
            r["seconds_excluding_train"],
            r["round_wall_seconds"],
            r["gas_per_round"] / 1e6,
            r["cpu_seconds"],
            r["peak_rss_mib"]["max"],
            r["members_per_process"],
        )
        for r in result["results"]
    ]
    headers = ("nodes", "params", *PHASES, "relay aggregate", "all but train", "wall",
               "M gas", "CPU s", "peak MiB", "per proc")
    rounds = result["rounds"]
    lines = [
        table(headers, rows),
        f"(seconds, median of {rounds} round{'s' if rounds > 1 else ''}; phases are the "
        "median across nodes; 'all but train' is the median of each node's round time less "
        "its own training; gas of every transaction of a round; CPU s: median CPU time of a "
        "node process in a round; peak resident memory of the largest node)",
    ]
    for r in result["results"]:
        target = TARGETS_SECONDS_EXCLUDING_TRAIN.get(_nearest_target(r["params"]))
        if r["nodes"] == TARGET_NODES and target is not None:
            ok = r["seconds_excluding_train"] <= target
            lines.append(
                f"target: all but training ≤ {target:g} s for {r['params']:,} params and "
                f"{TARGET_NODES} nodes: {r['seconds_excluding_train']:.2f} s, "
                f"{'met' if ok else 'MISSED'}"
            )
    if any(r["members_per_process"] > 1 for r in result["results"]):
        lines.append("(per proc > 1: that many members share a process, each in a thread "
                     "with its own gRPC server, Web3 connection and SwarmRound; their seconds "
                     "and CPU s are an upper bound of one hospital's, peak MiB is per process)")
    gas_rows = [(r["nodes"], r["params"], r["blocks"],
                 *(r["gas_by_kind"][k] / 1e6 for k in GAS_KINDS), r["aggregate_transactions"])
                for r in result["results"]]
    lines += ["", "gas per round by transaction kind (M gas; 'enrol' includes fixing the "
              "participants, done by the enrolment that completes the set):",
              table(("nodes", "params", "blocks", *GAS_KINDS, "aggregate txs"), gas_rows)]
    if result.get("scaling"):
        fit_rows = [(f["params"], ",".join(map(str, f["members"])), f["gas_per_member"] / 1e6,
                     f["gas_intercept"] / 1e6, f["seconds_per_member"],
                     f["seconds_intercept"], f["wall_seconds_per_member"])
                    for f in result["scaling"]]
        lines += ["", "against the number of members (least-squares line):",
                  table(("params", "members", "M gas/member", "M gas at 0",
                         "s/member", "s at 0", "wall s/member"), fit_rows)]
    lines.append(
        f"(machine: {result['processor']}, {result['cpus']} CPUs; load "
        f"average {result['load_average_at_start']} at the start, "
        f"{result['load_average_at_end']} at the end)"
    )
    return "\n".join(lines)
