"""`apiary compare`: is joining the swarm worth it for a hospital?

On the same shards, seeds and budget it trains five ways — central (pooled), local (each
hospital alone), plaintext FedAvg in-process, and the real system as swarm (node processes,
gRPC, CKKS, on-chain aggregation) and federated (through the coordinator) — and scores
every model on every hospital's test split and on their union. The in-process methods run
in a small pool of worker processes first; the real runs follow, one at a time, since their
node processes already fill the machine.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apiary.core.data.datasets import DatasetSpec
from apiary.core.data.shards import Shard
from apiary.core.errors import ApiaryError, InvalidInput
from apiary.core.flat import load_flat
from apiary.core.models import build_model
from apiary.core.rundirs import clear_run_directory
from apiary.core.training import DEFAULT_TRAINING, Metrics, TrainingConfig, evaluate
from apiary.tools.baselines import (
    MethodRun,
    run_central,
    run_fedavg,
    run_local,
    union_test,
)
from apiary.tools.demo import DemoFailed, DemoOptions, LocalSwarm
from apiary.tools.progress import Task, as_progress

__all__ = ["IN_PROCESS", "LABELS", "METHODS", "CompareFailed", "CompareOptions", "run_compare"]

METHODS: tuple[str, ...] = ("central", "local", "fedavg", "swarm", "federated")
IN_PROCESS: tuple[str, ...] = ("fedavg", "central", "local")
REAL: tuple[str, ...] = ("swarm", "federated")
LABELS: dict[str, str] = {
    "central": "central (pooled)",
    "local": "local (own data)",
    "local_best": "local (best model)",
    "fedavg": "FedAvg (plaintext)",
    "swarm": "swarm (CKKS, chain)",
    "federated": "federated (CKKS)",
}
Emit = Callable[[str], None]


class CompareFailed(ApiaryError, RuntimeError):
    """A real run did not complete: a node died, or rounds timed out."""


@dataclass
class CompareOptions:
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    seeds: int = 3
    rounds: int = DEFAULT_TRAINING.rounds
    epochs: int = DEFAULT_TRAINING.epochs
    lr: float = DEFAULT_TRAINING.lr
    batch_size: int = DEFAULT_TRAINING.batch_size
    server_optimizer: str = DEFAULT_TRAINING.server_optimizer
    server_lr: float | None = DEFAULT_TRAINING.server_lr
    server_momentum: float = DEFAULT_TRAINING.server_momentum
    server_beta1: float = DEFAULT_TRAINING.server_beta1
    server_beta2: float = DEFAULT_TRAINING.server_beta2
    server_tau: float = DEFAULT_TRAINING.server_tau
    fedprox_mu: float = DEFAULT_TRAINING.fedprox_mu
    methods: tuple[str, ...] = METHODS
    out_dir: Path = Path("runs/compare")
    workers: int = 2
    round_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise InvalidInput(f"unknown method(s) {sorted(unknown)}; known: "
                               f"{', '.join(METHODS)}")
        if self.seeds < 1 or self.rounds < 1 or self.epochs < 1:
            raise InvalidInput("seeds, rounds and epochs must be at least 1")
        self.train_config(0)  # refuses bad server optimiser and FedProx parameters

    def train_config(self, seed: int) -> TrainingConfig:
        """How every method trains for one seed; the real runs' nodes get the same."""
        return TrainingConfig(model=self.dataset.model, rounds=self.rounds, epochs=self.epochs,
                              lr=self.lr, batch_size=self.batch_size, seed=seed,
                              server_optimizer=self.server_optimizer, server_lr=self.server_lr,
                              server_momentum=self.server_momentum,
                              server_beta1=self.server_beta1, server_beta2=self.server_beta2,
                              server_tau=self.server_tau, fedprox_mu=self.fedprox_mu)


# ---------------------------------------------------------------------- in-process methods

@lru_cache(maxsize=4)
def _shards(dataset: DatasetSpec, seed: int) -> dict[str, Shard]:
    return dataset.load(seed)


def _say(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def train_in_process(method: str, dataset: DatasetSpec, cfg: TrainingConfig,
                     verbose: bool = True) -> MethodRun:
    """One in-process method for one seed (a worker-process entry point: one torch thread,
    as the nodes use, so weights match theirs bit for bit)."""
    torch.set_num_threads(1)
    shards = _shards(dataset, cfg.seed)
    label = f"{method} seed {cfg.seed}"
    if verbose:
        _say(f"{label}: training")
    if method == "central":
        return run_central(shards, cfg)
    if method == "local":
        return run_local(shards, cfg)

    def on_round(round_number: int, accuracy: float) -> None:
        if verbose:
            _say(f"{label}: round {round_number}/{cfg.rounds}, held-out accuracy {accuracy:.3f}")

    return run_fedavg(shards, cfg, on_round)


def _run_in_process(options: CompareOptions, seeds: list[int], emit: Emit,
                    task: Task) -> dict[tuple[str, int], MethodRun]:
    tasks = [(m, s) for s in seeds for m in IN_PROCESS if m in options.methods]
    results: dict[tuple[str, int], MethodRun] = {}
    if not tasks:
        return results
    if options.workers <= 1:
        for method, seed in tasks:
            task.describe(f"{method} seed {seed}: training in process")
            results[method, seed] = train_in_process(method, options.dataset,
                                                     options.train_config(seed))
            task.advance()
        return results
    emit(f"{len(tasks)} in-process trainings on {options.workers} worker processes")
    task.describe(f"waiting for {len(tasks)} in-process trainings")
    # Workers write to the terminal itself, which would draw over a redrawn progress bar.
    verbose = not as_progress(emit).redraws
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(options.workers, len(tasks)), mp_context=context) as pool:
        pending = {pool.submit(train_in_process, m, options.dataset, options.train_config(s),
                               verbose): (m, s) for m, s in tasks}
        for left, future in enumerate(as_completed(pending), start=1):
            method, seed = pending[future]
            results[method, seed] = future.result()
            emit(f"{method} seed {seed}: done in {results[method, seed].seconds:.1f} s")
            task.advance(what=f"waiting for {len(tasks) - left} in-process trainings")
    return results


# ---------------------------------------------------------------------- the real system

def run_real(mode: str, options: CompareOptions, seed: int, emit: Emit,
             task: Task | None = None) -> tuple[MethodRun, dict[str, bool]]:
    """Swarm or federated: one `apiary node` process per hospital, all hospitals every round;
    `task` advances a step a round."""
    names = options.dataset.hospital_names
    out = options.out_dir / options.dataset.name / f"seed{seed}" / mode
    clear_run_directory(out, "apiary compare")
    demo = DemoOptions.training_with(options.train_config(seed), mode=mode,
                                     min_peers=len(names), out_dir=out,
                                     round_deadline_s=options.round_timeout_s,
                                     dataset=options.dataset)
    label = f"{mode} seed {seed}"
    stage = f"seed {seed + 1}/{options.seeds}: {mode}"
    task = task or as_progress(None).task(options.rounds, stage)
    task.describe(f"{stage}: founding, starting {len(names)} node processes")
    started = time.perf_counter()
    with LocalSwarm(demo) as swarm:
        swarm.found()
        nodes = swarm.start_all()
        emit(f"{label}: {len(nodes)} node processes, logs in {out / 'logs'}")
        task.describe(f"{stage} round 1/{options.rounds}")
        shown: set[int] = set()

        def finished() -> bool:
            for record in swarm.history(names[0]):
                if record["round"] not in shown:
                    shown.add(record["round"])
                    emit(f"{label}: round {record['round']}/{options.rounds}, held-out "
                         f"accuracy {record['heldout_accuracy']:.3f} "
                         f"({time.perf_counter() - started:.0f} s)")
                    following = len(shown) + 1
                    task.advance(what=f"{stage} round {following}/{options.rounds}"
                                 if following <= options.rounds else f"{stage}: nodes stopping")
            return all(n.process.poll() is not None for n in nodes)

        try:
            swarm.wait_until(finished, 120 + options.rounds * options.round_timeout_s,
                             f"{options.rounds} {mode} rounds")
        except DemoFailed as exc:
            raise CompareFailed(f"{label}: {exc}") from exc
        failed = [n for n in nodes if n.process.returncode != 0]
        if failed:
            raise CompareFailed(f"{label}: node {failed[0].name} exited with "
                                f"{failed[0].process.returncode}; see {failed[0].log_path}")
        histories = {n: {r["round"]: r for r in swarm.history(n)} for n in names}
        finals = [np.load(swarm.state_dir(n) / "global.npy") for n in names]
    seconds = time.perf_counter() - started
    rounds = range(1, options.rounds + 1)
    if any(r not in histories[n] for n in names for r in rounds):
        raise CompareFailed(f"{label}: a node's history lacks a round; see {out / 'logs'}")
    checks = {
        "identical_weights_across_nodes": all(np.array_equal(finals[0], f) for f in finals)
        and all(len({histories[n][r]["weights_digest"] for n in names}) == 1 for r in rounds),
        "all_hospitals_every_round": all(
            len(histories[n][r]["contributors"]) == len(names) for n in names for r in rounds),
    }
    curve = [float(histories[names[0]][r]["heldout_accuracy"]) for r in rounds]
    return MethodRun({"global": finals[0]}, curve, seconds), checks


# ---------------------------------------------------------------------- scoring

def _metric(m: Metrics) -> dict[str, float | None]:
    """AUC is None where a test split holds one class only (no ROC curve exists)."""
    return {"accuracy": m.accuracy, "auc": None if m.auc != m.auc else m.auc}


def score(weights: np.ndarray, shards: dict[str, Shard], model_name: str,
          seed: int) -> dict[str, Any]:
    """Accuracy and AUC on every hospital's test split and on their union."""
    heldout = union_test(shards)
    model = build_model(model_name, heldout.input_shape, heldout.num_classes, seed)
    load_flat(model, weights)
    per_node = {n: _metric(evaluate(model, s.x_test, s.y_test)) for n, s in shards.items()}
    return {
        "overall": _metric(evaluate(model, heldout.x_test, heldout.y_test)),
        "client_mean": _client_mean(per_node),
        "per_node": per_node,
    }


def _client_mean(per_node: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """FLamby's metric: the plain mean over hospitals of their test-split scores (each
    hospital counts once, whatever its size)."""
    return {k: _mean(m[k] for m in per_node.values()) for k in ("accuracy", "auc")}


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def score_local(run: MethodRun, shards: dict[str, Shard], model_name: str,
                seed: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Each hospital's own model on its own test split; overall, the mean of the local
    models on the union. Also the best local model (by union accuracy) and all of them."""
    models = {n: score(run.weights[n], shards, model_name, seed) for n in shards}
    local = {
        "overall": {k: _mean(m["overall"][k] for m in models.values())
                    for k in ("accuracy", "auc")},
        "per_node": {n: models[n]["per_node"][n] for n in shards},
    }
    local["client_mean"] = _client_mean(local["per_node"])
    best = max(models, key=lambda n: models[n]["overall"]["accuracy"])
    return local, {**models[best], "model": best}, models


def _stat(values: list[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation over seeds, ignoring nulls."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None}
    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return {"mean": float(np.mean(present)), "std": std}


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("accuracy", "auc")
    nodes = per_seed[0]["per_node"]
    return {
        "overall": {k: _stat([s["overall"][k] for s in per_seed]) for k in keys},
        "client_mean": {k: _stat([s["client_mean"][k] for s in per_seed]) for k in keys},
        "per_node": {n: {k: _stat([s["per_node"][n][k] for s in per_seed]) for k in keys}
                     for n in nodes},
    }


def _curve(curves: list[list[float]]) -> dict[str, list[float]]:
    matrix = np.array(curves, dtype=np.float64)
    std = matrix.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(matrix.shape[1])
    return {"mean": matrix.mean(axis=0).tolist(), "std": std.tolist()}


def _agreement(runs: dict[tuple[str, int], MethodRun], scores: dict[tuple[str, int], Any],
               method: str, seeds: list[int]) -> dict[str, float]:
    """How far a real run is from plaintext FedAvg: weights, final and per-round accuracy
    (worst seed), and the mean over seeds of the overall accuracy difference (signed)."""
    weight_diff, acc_diff, curve_diff, mean_diff = 0.0, 0.0, 0.0, 0.0
    for seed in seeds:
        mine, ref = runs[method, seed], runs["fedavg", seed]
        weight_diff = max(weight_diff, float(np.max(np.abs(
            mine.weights["global"] - ref.weights["global"]))))
        a, b = scores[method, seed], scores["fedavg", seed]
        mean_diff += (a["overall"]["accuracy"] - b["overall"]["accuracy"]) / len(seeds)
        pairs = [(a["overall"], b["overall"])] + [
            (a["per_node"][n], b["per_node"][n]) for n in a["per_node"]]
        acc_diff = max(acc_diff, *(abs(x["accuracy"] - y["accuracy"]) for x, y in pairs))
        curve_diff = max(curve_diff, *(abs(x - y) for x, y in zip(mine.curve, ref.curve,
                                                                  strict=True)))
    return {"max_weight_diff": weight_diff, "max_accuracy_diff_pp": 100 * acc_diff,
            "max_round_accuracy_diff_pp": 100 * curve_diff,
            "mean_overall_accuracy_diff_pp": 100 * mean_diff}


# ---------------------------------------------------------------------- the comparison

DATASET_STRATEGY: dict[str, dict[str, Any]] = {}
"""A data set's default server optimiser and FedProx settings in `apiary compare`."""


def dataset_strategy(dataset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The data set's defaults overridden by the flags ``given``; naming a server optimiser
    drops the data set's server step settings (they belong to its optimiser)."""
    defaults = dict(DATASET_STRATEGY.get(dataset, {}))
    if "server_optimizer" in given:
        defaults = {k: v for k, v in defaults.items() if not k.startswith("server_")}
    return {**defaults, **given}


def _strategy(options: CompareOptions) -> dict[str, Any]:
    """The server step and FedProx term that fedavg, swarm and federated share."""
    cfg = options.train_config(0)
    return {"server_optimizer": cfg.server_optimizer, "server_lr": cfg.server_step().eta,
            "server_momentum": cfg.server_momentum, "server_beta1": cfg.server_beta1,
            "server_beta2": cfg.server_beta2, "server_tau": cfg.server_tau,
            "fedprox_mu": cfg.fedprox_mu}


def run_compare(options: CompareOptions, emit: Emit = _say) -> dict[str, Any]:
    """Run every method for every seed; return the JSON-ready result."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _compare(options, emit, started)
    finally:
        torch.set_num_threads(threads)


def _compare(options: CompareOptions, emit: Emit, started: float) -> dict[str, Any]:
    seeds = list(range(options.seeds))
    spec, model_name = options.dataset, options.dataset.model
    emit(f"{spec.name}: {len(spec.hospital_names)} hospitals, model {model_name}, "
         f"{options.rounds} rounds × {options.epochs} epochs, seeds {seeds}, "
         f"methods {', '.join(options.methods)}")
    in_process = len(seeds) * len([m for m in IN_PROCESS if m in options.methods])
    real = len(seeds) * len([m for m in REAL if m in options.methods])
    # Steps: one per in-process training, one per round of a real run.
    task = as_progress(emit).task(in_process + real * options.rounds, "in-process trainings")
    runs = _run_in_process(options, seeds, emit, task)
    checks: dict[str, dict[str, Any]] = {m: {} for m in REAL if m in options.methods}
    for seed in seeds:
        for mode in REAL:
            if mode in options.methods:
                runs[mode, seed], seed_checks = run_real(mode, options, seed, emit, task)
                for key, ok in seed_checks.items():
                    checks[mode][key] = checks[mode].get(key, True) and ok

    scores: dict[tuple[str, int], Any] = {}
    local_best: list[dict[str, Any]] = []
    local_models: list[dict[str, Any]] = []
    samples: dict[str, dict[str, list[int]]] = {}
    for seed in seeds:
        shards = _shards(spec, seed)
        for name, shard in shards.items():
            counts = samples.setdefault(name, {"train": [], "test": []})
            counts["train"].append(shard.num_train)
            counts["test"].append(shard.num_test)
        for method in options.methods:
            run = runs[method, seed]
            if method == "local":
                scores[method, seed], best, models = score_local(run, shards, model_name, seed)
                local_best.append(best)
                local_models.append(models)
            else:
                scores[method, seed] = score(run.weights["global"], shards, model_name, seed)
    task.finish()

    methods: dict[str, Any] = {}
    for method in options.methods:
        entry = {"label": LABELS[method], **aggregate([scores[method, s] for s in seeds]),
                 "seconds": _stat([runs[method, s].seconds for s in seeds]),
                 "per_seed": [scores[method, s] for s in seeds]}
        if runs[method, seeds[0]].curve:
            entry["curve"] = _curve([runs[method, s].curve for s in seeds])
        methods[method] = entry
    if "fedavg" in options.methods:
        for mode in checks:
            checks[mode].update(_agreement(runs, scores, mode, seeds))

    result: dict[str, Any] = {
        "dataset": spec.describe(),
        "config": {"model": model_name, "rounds": options.rounds, "epochs": options.epochs,
                   "lr": options.lr, "batch_size": options.batch_size, "seeds": seeds,
                   "optimizer": "Adam", "weighting": "weights_from_sample_counts",
                   **_strategy(options),
                   "std": "sample standard deviation over seeds (ddof=1)"},
        "hospitals": list(spec.hospital_names),
        "samples": samples,
        "methods": methods,
        "checks": checks,
        "notes": [
            "overall: the union of the hospitals' test splits; per_node: each hospital's own "
            "test split",
            "local: per_node is each hospital's own model on its own test split; overall is the "
            "mean of the local models on the union (local_best: the best one)",
            "auc is null where a test split holds a single class; means ignore nulls",
            "client_mean: the mean over hospitals of their test-split scores (FLamby's metric); "
            "for local, of each hospital's own model on its own test split",
        ],
    }
    if local_best:
        result["local_best"] = {"label": LABELS["local_best"], **aggregate(local_best),
                                "models": [b["model"] for b in local_best]}
        result["local_models"] = local_models
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result
