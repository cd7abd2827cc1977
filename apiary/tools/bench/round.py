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
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import Devnet, dev_private_keys, free_port, running_devnet
from apiary.core.flat import flatten, load_flat, param_count, weights_digest
from apiary.core.he import HEContext
from apiary.core.models import build_mlp_with_params
from apiary.core.processes import stop_processes
from apiary.core.tasks.config import SwarmConfig, TaskIdentity, architecture
from apiary.core.tls import create_self_signed
from apiary.core.training import DEFAULT_TRAINING, TrainingConfig, train_local
from apiary.node.founding import found_swarm
from apiary.node.identity import Identity
from apiary.node.peer import Inbox, PeerService, start_peer_server
from apiary.node.rounds import RoundOutcome
from apiary.node.swarm import SwarmRound
from apiary.tools.bench.report import load_average, machine, median, table
from apiary.tools.progress import Task, as_progress

PHASES = ("train", "enrol", "encrypt", "mask", "exchange", "commit", "aggregate", "decrypt")
TARGET_NODES = 5
TARGETS_SECONDS_EXCLUDING_TRAIN = {100_000: 1.5, 1_000_000: 5.0}
"""Non-training seconds per round that 5 nodes should stay within, by model size."""

INPUT_DIM = 15
NUM_CLASSES = 2
ROWS_PER_NODE = 256
DATASET_SIZE = ROWS_PER_NODE
MAX_AGGREGATE_ERROR = 1e-4
"""CKKS at scale 2^40 averages to ~1e-8; anything near this bound means a broken round."""
STOP_GRACE_S = 10.0
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
) -> dict[str, Any]:
    """Run `rounds` swarm rounds per (node count, model size) and time each phase on each
    node.

    Per round and phase the median and the maximum across nodes; the slowest relay's own
    "aggregate" (its aggregate transactions plus its wait for every commit) separately; then
    the median of each figure over the rounds. Gas is every transaction of the round, of
    every node; memory the peak resident size of each node process.
    """
    if not node_counts or not param_targets:
        raise ValueError("need at least one node count and one parameter count")
    if min(node_counts) < 1 or rows < 1 or rounds < 1:
        raise ValueError("node counts, rows and rounds must be at least 1")
    say = as_progress(progress)
    facts = machine()
    task = say.task(len(node_counts) * len(param_targets), "warming up torch, starting a devnet")
    # One thread per node trains at once: more torch threads would only oversubscribe.
    torch.set_num_threads(1)
    _warm_up_torch(seed)
    he = HEContext.create()
    keys = dev_private_keys(max(node_counts) + 1)
    results = []
    with running_devnet() as devnet:
        for nodes in node_counts:
            for target in param_targets:
                results.append(_one_config(devnet, he, keys, nodes, target, rows, rounds,
                                           round_timeout_s, seed, say, task))
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
    }


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
) -> dict[str, Any]:
    model = build_mlp_with_params(target, INPUT_DIM, NUM_CLASSES, seed)
    params = param_count(model)
    training = SwarmConfig.of(_BenchTask.identity(model), TRAINING)
    label = f"{nodes} nodes, {params:,} params"
    task.describe(f"{label}: deploying the contract, starting {nodes} node processes")
    identities = [Identity.create(f"node{i}", keys[i + 1]) for i in range(nodes)]
    ports = [free_port() for _ in identities]
    founders = [
        ident.public(f"127.0.0.1:{port}", create_self_signed(ident.name, ["127.0.0.1"]),
                     DATASET_SIZE)
        for ident, port in zip(identities, ports, strict=True)
    ]
    contract = found_swarm(devnet.web3(), keys[0], he, params, founders, min_peers=nodes,
                           training=training)
    context = multiprocessing.get_context("spawn")
    ready, go, done = context.Queue(), context.Event(), context.Queue()
    specs = [
        _NodeSpec(devnet.rpc_url, contract.address, ident.name, ident.private_key,
                  bytes.fromhex(ident.x25519_private), port, he.secret_bytes(), params, rows,
                  rounds, round_timeout_s, seed, index)
        for index, (ident, port) in enumerate(zip(identities, ports, strict=True))
    ]  # fmt: skip
    processes = [context.Process(target=_node_main, args=(spec, ready, go, done), daemon=True)
                 for spec in specs]
    for process in processes:
        process.start()
    try:
        for answered in range(len(processes)):
            task.describe(f"{label}: waiting for {nodes - answered} nodes to start")
            ready.get(timeout=120)
        started = time.perf_counter()
        go.set()
        reports: list[dict[str, Any]] = []
        for _ in processes:
            task.describe(f"{label}: waiting for {nodes - len(reports)} nodes to finish "
                          f"{rounds} round{'s' if rounds > 1 else ''}")
            reports.append(done.get(timeout=rounds * round_timeout_s + 60))
        wall = time.perf_counter() - started
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
    row = _median_row(nodes, params, per_round)
    row["round_wall_seconds"] = wall / rounds
    row["peak_rss_mib"] = {"median": median([r["peak_rss_mib"] for r in reports]),
                           "max": max(r["peak_rss_mib"] for r in reports)}
    say(f"{label}: {row['seconds_excluding_train']:.2f} s excluding training (median of "
        f"{rounds} rounds), {row['gas_per_round'] / 1e6:,.0f} M gas a round")
    return row


class _BenchTask:
    """The benchmark's model as a task identity: an MLP of the requested size."""

    @staticmethod
    def identity(model: torch.nn.Module) -> TaskIdentity:
        return TaskIdentity(name="bench-mlp", version="1", architecture=architecture(model),
                            initial_weights=weights_digest(flatten(model)),
                            parameters=param_count(model))


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


def _node_main(spec: _NodeSpec, ready: Any, go: Any, done: Any) -> None:
    """One member in its own process, as a hospital runs it: its gRPC peer server, its Web3
    connections, its copy of the swarm key, its data and model; `rounds` rounds when told to.

    Reports each round's outcome, trained weights and the gas of the transactions this node
    sent in it, and the process's peak resident memory."""
    try:
        torch.set_num_threads(1)
        _warm_up_torch(spec.seed)
        w3 = Web3(Web3.HTTPProvider(spec.rpc_url, request_kwargs={"timeout": 120}))
        contract = SwarmContract.at(w3, spec.contract, spec.private_key)
        gas = [0]
        contract.on_mined = lambda tx: gas.__setitem__(-1, gas[-1] + tx.gas_used)
        inbox = Inbox()
        peer = SwarmContract.at(Web3(Web3.HTTPProvider(spec.rpc_url)), spec.contract,
                                spec.private_key)
        server = start_peer_server(PeerService(peer, inbox, spec.name), "127.0.0.1", spec.port)
        driver = SwarmRound(
            contract, HEContext.from_bytes(spec.secret), inbox, spec.private_key, spec.name,
            relay_takeover_s=spec.round_timeout_s,
            round_timeout_s=spec.round_timeout_s, x25519_private=spec.x25519_private,
        )  # fmt: skip
        model = build_mlp_with_params(spec.params, INPUT_DIM, NUM_CLASSES, spec.seed)
        x, y = _synthetic_data(spec.rows, spec.seed * 1000 + spec.index)
        trained: list[np.ndarray] = []

        def train() -> tuple[np.ndarray, float, int]:
            loss = _train(model, x, y, spec.seed + spec.index)
            trained.append(flatten(model))
            return trained[-1], loss, spec.rows

        ready.put(spec.name)
        go.wait()
        outcomes, cpu = [], []
        for number in range(1, spec.rounds + 1):
            started = time.process_time()
            outcomes.append(driver.run(number, train, spec.params))
            cpu.append(time.process_time() - started)
            if number < spec.rounds:
                model_weights = outcomes[-1].weights
                load_flat(model, model_weights)
                gas.append(0)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        done.put({"address": contract.sender, "outcomes": outcomes, "trained": trained,
                  "gas": gas, "cpu_seconds": cpu, "peak_rss_mib": peak_kib / 1024})
        server.stop(grace=None).wait()
    except Exception as exc:  # reported to the parent, which fails the benchmark
        ready.put(spec.name)
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
        missing = [p for p in PHASES if p not in outcome.seconds]
        if missing or not outcome.committed:
            raise RuntimeError(f"a node did not take part in every phase (missing {missing})")
    relays = [o for o in outcomes if o.relay]
    if not relays:
        raise RuntimeError("no node relayed the round's aggregate")
    per_node = [sum(o.seconds[p] for p in PHASES if p != "train") for o in outcomes]
    return {
        "seconds": {p: median([o.seconds[p] for o in outcomes]) for p in PHASES},
        "seconds_max": {p: max(o.seconds[p] for o in outcomes) for p in PHASES},
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
        )
        for r in result["results"]
    ]
    headers = ("nodes", "params", *PHASES, "relay aggregate", "all but train", "wall",
               "M gas", "CPU s", "peak MiB")
    rounds = result["rounds"]
    lines = [
        table(headers, rows),
        f"(seconds, median of {rounds} round{'s' if rounds > 1 else ''}; phases are the "
        "median across nodes; 'all but train' is the median of each node's encrypt→decrypt "
        "time; gas of every transaction of a round; CPU s: median CPU time of a node process "
        "in a round; peak resident memory of the largest node)",
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
    lines.append(
        f"(machine: {result['processor']}, {result['cpus']} CPUs, one process per node; load "
        f"average {result['load_average_at_start']} at the start, "
        f"{result['load_average_at_end']} at the end)"
    )
    return "\n".join(lines)
