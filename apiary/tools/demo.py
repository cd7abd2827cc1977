"""`apiary demo`: a whole swarm on one machine — devnet, one process per hospital, rounds.

The four hospitals of the UCI Heart Disease study each get their own shard, state
directory, ports and OS process (`apiary node …`, exactly as an operator runs it). The
demo follows their admin APIs and prints a row per round as it completes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from apiary.chain.devnet import free_port, running_devnet
from apiary.core.data.datasets import DatasetSpec
from apiary.core.data.heart import HOSPITALS
from apiary.core.data.shards import Shard
from apiary.core.errors import ApiaryError
from apiary.core.processes import stop_processes
from apiary.core.rundirs import clear_run_directory
from apiary.core.settings import ChainSettings, FoundingSettings
from apiary.core.tls import COORDINATOR_CERT
from apiary.core.training import DEFAULT_TRAINING, TrainingConfig
from apiary.node.client import AdminApiError, AdminClient, AdminUnreachable
from apiary.node.founder import found
from apiary.node.state import saved_history
from apiary.node.trainer import LocalTrainer
from apiary.tools.progress import Task, as_progress

PHASES = ("train", "encrypt", "exchange", "commit", "aggregate", "decrypt")
STOP_GRACE_S = 15.0
DEVNET_RESTART_S = 120.0
"""How long a restarted devnet may take to load its state file (it grows with the chain)."""
NODE_START_S = 240.0
"""How long a node process may take to answer on its admin API: several nodes importing
PyTorch and TenSEAL at once on a loaded 2-core machine take over a minute; a node that exits
is reported at once."""


class DemoFailed(ApiaryError, RuntimeError):
    """A node process died or the rounds did not complete in time."""


@dataclass
class DemoOptions:
    """A local swarm run; the training fields default to :data:`DEFAULT_TRAINING`'s."""

    mode: str = "swarm"
    rounds: int = DEFAULT_TRAINING.rounds
    epochs: int = DEFAULT_TRAINING.epochs
    lr: float = DEFAULT_TRAINING.lr
    batch_size: int = DEFAULT_TRAINING.batch_size
    seed: int = DEFAULT_TRAINING.seed
    server_optimizer: str = DEFAULT_TRAINING.server_optimizer
    server_lr: float | None = DEFAULT_TRAINING.server_lr
    server_momentum: float = DEFAULT_TRAINING.server_momentum
    server_beta1: float = DEFAULT_TRAINING.server_beta1
    server_beta2: float = DEFAULT_TRAINING.server_beta2
    server_tau: float = DEFAULT_TRAINING.server_tau
    fedprox_mu: float = DEFAULT_TRAINING.fedprox_mu
    min_peers: int = 2
    model: str = DEFAULT_TRAINING.model
    """The task every node runs (``--task``): a built-in or an entry point."""
    out_dir: Path = Path("runs/demo")
    round_deadline_s: float = 20.0
    """The swarm's enrolment and commit windows on chain (and the coordinator's deadline)."""
    timeout_s: float = 280.0
    admin_token: str = field(default_factory=lambda: os.urandom(12).hex())
    onboard: bool = False
    held_back: str = "switzerland"
    onboard_after: int = 2
    membership: str = "admin"
    dataset: DatasetSpec = field(default_factory=DatasetSpec)

    @classmethod
    def training_with(cls, training: TrainingConfig, **options: Any) -> DemoOptions:
        """Options whose nodes train as ``training`` says."""
        return cls(**asdict(training), **options)

    @property
    def training(self) -> TrainingConfig:
        return TrainingConfig(**{f.name: getattr(self, f.name) for f in fields(TrainingConfig)})


@dataclass
class NodeProcess:
    name: str
    api_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    state_dir: Path | None = None


def write_data(out_dir: Path, seed: int, dataset: DatasetSpec | None = None,
               ) -> tuple[dict[str, Path], Path, Shard]:
    """Each hospital's shard, and the union of their test splits as the held-out set."""
    shards = (dataset or DatasetSpec()).load(seed)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, shard in shards.items():
        paths[name] = data_dir / f"{name}.npz"
        shard.save(paths[name])
    first = next(iter(shards.values()))
    x = np.concatenate([s.x_test for s in shards.values()])
    y = np.concatenate([s.y_test for s in shards.values()])
    heldout = Shard("heldout", x, y, x, y, first.feature_names, first.num_classes)
    heldout_path = data_dir / "heldout.npz"
    heldout.save(heldout_path)
    return paths, heldout_path, first


def _node_command(name: str, options: DemoOptions, data: Path, heldout: Path, state: Path,
                  api_port: int, grpc_port: int, extra: list[str]) -> list[str]:
    training = options.training
    return [
        sys.executable, "-m", "apiary.cli", "node",
        "--name", name, "--mode", options.mode, "--task", training.model,
        "--data", str(data), "--heldout", str(heldout), "--state-dir", str(state),
        "--api-port", str(api_port), "--grpc-port", str(grpc_port),
        "--rounds", str(training.rounds), "--epochs", str(training.epochs),
        "--lr", str(training.lr), "--batch-size", str(training.batch_size),
        "--seed", str(training.seed), "--relay-takeover-s", "3",
        *_strategy_flags(training), *extra,
    ]  # fmt: skip


def _strategy_flags(training: TrainingConfig) -> list[str]:
    """The server optimiser and FedProx flags, only where they differ from the defaults."""
    names = ("server_optimizer", "server_lr", "server_momentum", "server_beta1",
             "server_beta2", "server_tau", "fedprox_mu")
    flags: list[str] = []
    for name in names:
        value = getattr(training, name)
        if value != getattr(DEFAULT_TRAINING, name):
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def _spawn(name: str, command: list[str], log_dir: Path, api_url: str,
           state_dir: Path | None = None) -> NodeProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return NodeProcess(name, api_url, process, log_path, state_dir)


def _history(node: NodeProcess, token: str) -> list[dict[str, Any]] | None:
    """The node's round history from its API; from its state file once it has exited."""
    if node.process.poll() is not None and node.state_dir is not None:
        return saved_history(node.state_dir) or None
    try:
        with AdminClient(node.api_url, token, timeout_s=5) as client:
            history = client.rounds()
    except AdminApiError:
        return None
    return [entry.model_dump() for entry in history.rounds]


def follow_rounds(
    nodes: list[NodeProcess],
    options: DemoOptions,
    emit: Callable[[str], None],
    columns: list[str] | None = None,
    after_round: Callable[[int], list[tuple[NodeProcess, int]]] | None = None,
    task: Task | None = None,
) -> list[dict[str, Any]]:
    """Poll the nodes' APIs; emit a table row per completed round; return the run's rounds.

    `after_round(r)` may bring in new nodes (onboarding) as (node, first round it reports);
    `columns` fixes the table's node columns so a late node has one from the start; `task`
    advances a step a round and names the nodes the round waits for.
    """
    task = task or as_progress(None).task(options.rounds, "rounds")
    deadline = time.monotonic() + options.timeout_s
    expected_from = {n.name: 1 for n in nodes}
    watched = list(nodes)
    reported: dict[str, dict[int, dict[str, Any]]] = {n.name: {} for n in nodes}
    rows: list[dict[str, Any]] = []
    names = columns or [n.name for n in nodes]
    header = ["round", *names, "held-out", *(f"{p} s" for p in PHASES)]
    widths = [max(len(h), 6) for h in header]
    emit(_line(header, widths))
    emit(_line(["-" * w for w in widths], widths))
    next_round = 1
    while next_round <= options.rounds:
        if time.monotonic() > deadline:
            raise DemoFailed(f"round {next_round} did not complete within {options.timeout_s} s")
        due = [n for n in watched if expected_from[n.name] <= next_round]
        for node in due:
            code = node.process.poll()
            for record in _history(node, options.admin_token) or []:
                reported[node.name][record["round"]] = record
            if code is not None and next_round not in reported[node.name]:
                raise DemoFailed(f"node {node.name} exited with {code}; see {node.log_path}")
        missing = [n.name for n in due if next_round not in reported[n.name]]
        task.describe(f"round {next_round}/{options.rounds}: waiting for {', '.join(missing)}"
                      if missing else f"round {next_round}/{options.rounds}")
        if not missing:
            records = {n.name: reported[n.name][next_round] for n in due}
            row = summarise_round(next_round, records)
            rows.append(row)
            cells = [next_round, *(row["node_accuracy"].get(name) for name in names),
                     row["heldout_accuracy"], *(row["seconds"].get(p, 0.0) for p in PHASES)]
            emit(_line(cells, widths))
            task.advance()
            if after_round is not None and next_round < options.rounds:
                for node, first in after_round(next_round):
                    watched.append(node)
                    expected_from[node.name] = first
                    reported[node.name] = {}
            next_round += 1
        else:
            time.sleep(0.3)
    return rows


def _line(cells: list[Any], widths: list[int]) -> str:
    shown = [f"{c:.3f}" if isinstance(c, float) else "-" if c is None else str(c) for c in cells]
    return "  ".join(c.rjust(w) for c, w in zip(shown, widths, strict=True))


def summarise_round(round_number: int, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    digests = {r["weights_digest"] for r in records.values()}
    first = next(iter(records.values()))
    seconds = {p: float(np.median([r["seconds"].get(p, 0.0) for r in records.values()]))
               for p in PHASES}
    return {
        "round": round_number,
        "heldout_accuracy": first["heldout_accuracy"],
        "heldout_auc": first["heldout_auc"],
        "node_accuracy": {name: r["accuracy"] for name, r in records.items()},
        "seconds": seconds,
        "contributors": len(first["contributors"]),
        "identical_weights": len(digests) == 1,
        "weights_digest": first["weights_digest"],
    }


class LocalSwarm:
    """Hospitals as OS processes on this machine, on a devnet or around a coordinator.

    Founds the swarm as a deployment does: the founders' nodes start with nothing but their
    data and make their own keys, then the founding ceremony (`apiary found`'s code, in this
    process) drives them over their admin APIs; in federated mode the coordinator follows
    with the public HE context. Starts, stops and restarts nodes by name. Used by
    `apiary demo` and by the end-to-end tests.
    """

    def __init__(self, options: DemoOptions, hospitals: tuple[str, ...] | None = None,
                 emit: Callable[[str], None] | None = None,
                 joiners: tuple[str, ...] = (), keep_devnet_state: bool = False) -> None:
        self.options = options
        self.keep_devnet_state = keep_devnet_state
        """Keep the devnet's chain in a state file, so that it can be restarted."""
        self.hospitals = hospitals or options.dataset.hospital_names
        self.joiners = joiners
        self.emit = emit or (lambda _msg: None)
        self.out = options.out_dir
        self.nodes: dict[str, NodeProcess] = {}
        self.extra_flags: list[str] = []
        self.contract_address: str | None = None
        self.rpc_url: str | None = None
        self.addresses: dict[str, str] = {}
        """Each founder's account, as the ceremony registered it."""
        self._stack = contextlib.ExitStack()
        self._children: list[NodeProcess] = []
        self.coordinator: NodeProcess | None = None

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        stop_processes([node.process for node in self._children], STOP_GRACE_S)
        self._stack.close()

    def found(self) -> None:
        """Start the founders' nodes and found the swarm with them (the nodes keep running)."""
        self.start_founders()
        self.run_ceremony()

    def run_ceremony(self) -> None:
        """Found the swarm with the founders' running nodes, as `apiary found` does."""
        founded = found(self.founding_settings(), lambda line: self.emit(f"found: {line}"))
        self.contract_address, self.addresses = founded.contract, dict(founded.members)
        if self.options.mode == "federated":
            self.start_coordinator()

    def start_founders(self) -> list[NodeProcess]:
        """Shards, the devnet, and every founder's node with nothing but its data: each makes
        its own keys and waits to be founded."""
        options, out = self.options, self.out
        if options.mode not in ("swarm", "federated"):
            raise ValueError(f"unknown mode {options.mode!r}: use swarm or federated")
        clear_run_directory(out, "apiary demo",
                            ("data", "state", "logs", "coordinator", "swarm", "devnet"))
        self.emit(f"writing the hospitals' shards to {out / 'data'}")
        self.data, self.heldout_path, _ = write_data(out, options.seed, options.dataset)
        first = self.founders[0]
        self.params = LocalTrainer.at_site(first, self.data[first], self.heldout_path,
                                           options.training).param_count
        self.ports = {name: (free_port(), free_port()) for name in self.hospitals}
        chain_settings = (ChainSettings.load(devnet_state=out / "devnet" / "state.json")
                          if self.keep_devnet_state else None)
        chain = self._stack.enter_context(running_devnet(chain_settings))
        self.devnet = chain
        self.rpc_url = chain.rpc_url
        self.coordinator_port = free_port()
        self.coordinator_metrics_port = free_port()
        if options.mode == "federated":
            self.extra_flags = ["--coordinator", f"127.0.0.1:{self.coordinator_port}",
                                "--coordinator-cert", str(self.out / "swarm" / COORDINATOR_CERT)]
        nodes = [self.start(name) for name in self.founders]
        for node in nodes:
            _wait_healthy(node)
        self.emit(f"anvil devnet on {chain.rpc_url}; {len(nodes)} founders made their own "
                  "keys and wait to be founded")
        return nodes

    @property
    def founders(self) -> list[str]:
        return [n for n in self.hospitals if n not in self.joiners]

    def founding_settings(self) -> FoundingSettings:
        """What `apiary found` is given for this swarm: the founders' admin API URLs and
        token, the chain; the first founder is handed the contract's admin role."""
        options = self.options
        if self.rpc_url is None:
            raise DemoFailed("start the founders first (start_founders)")
        window = max(1, round(options.round_deadline_s))
        first = self.founders[0]
        return FoundingSettings(
            rpc_url=self.rpc_url,
            founding_members=",".join(f"{n}={self.nodes[n].api_url}" for n in self.founders),
            admin_token=options.admin_token, admin=first, swarm_dir=self.out / "swarm",
            model=options.model, dataset=str(self.data[first]), min_peers=options.min_peers,
            membership=options.membership, enrol_window_s=window, commit_window_s=window,
        )

    def start_coordinator(self) -> NodeProcess:
        """Start the coordinator (again, after `kill_coordinator`: on the same port and
        state directory, so it resumes at its round)."""
        options, port = self.options, self.coordinator_port
        command = [sys.executable, "-m", "apiary.cli", "coordinator",
                   "--coordinator-port", str(port),
                   "--coordinator-metrics-port", str(self.coordinator_metrics_port),
                   "--coordinator-swarm", str(self.out / "swarm"),
                   "--coordinator-state", str(self.out / "coordinator"),
                   "--min-peers", str(options.min_peers),
                   "--round-deadline-s", str(options.round_deadline_s)]
        self.coordinator = _spawn("coordinator", command, self.out / "logs", "")
        self._children.append(self.coordinator)
        self.emit(f"coordinator on 127.0.0.1:{port} (mutual TLS with the members; public HE "
                  "context only)")
        return self.coordinator

    def kill_coordinator(self) -> None:
        """SIGKILL the coordinator: it gets no chance to write anything on the way out."""
        if self.coordinator is not None:
            self.coordinator.process.kill()
            self.coordinator.process.wait()

    def state_dir(self, name: str) -> Path:
        return self.out / "state" / name

    def endpoint(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name][1]}"

    def start(self, name: str, extra: list[str] | None = None) -> NodeProcess:
        """Start a node; a founder that took part in the ceremony finds its swarm in its
        state dir, a joiner gets `extra` (`--join URL --invite TOKEN`)."""
        api_port, grpc_port = self.ports[name]
        command = _node_command(name, self.options, self.data[name], self.heldout_path,
                                self.state_dir(name), api_port, grpc_port,
                                self.extra_flags + (extra or []))
        command += ["--admin-token", self.options.admin_token]
        node = _spawn(name, command, self.out / "logs", f"http://127.0.0.1:{api_port}",
                      self.state_dir(name))
        self.nodes[name] = node
        self._children.append(node)
        return node

    def start_all(self) -> list[NodeProcess]:
        """Every founding member's node, started unless it runs already."""
        running = [name for name, node in self.nodes.items() if node.process.poll() is None]
        return [self.nodes[name] if name in running else self.start(name)
                for name in self.founders]

    def restart_devnet(self) -> None:
        """Stop the devnet (it writes its state file) and start it again on the same port."""
        if not self.keep_devnet_state:
            raise DemoFailed("the devnet keeps no state file: a restart would lose the swarm")
        self.devnet.stop()
        self.devnet.start(timeout=DEVNET_RESTART_S)
        self.emit(f"devnet restarted on {self.devnet.rpc_url} from its state file")

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.process.kill()
        node.process.wait()

    def history(self, name: str) -> list[dict[str, Any]]:
        return saved_history(self.state_dir(name))

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout} s waiting for {what}")
            for node in self.nodes.values():
                code = node.process.poll()
                if code not in (None, 0, -9):
                    raise DemoFailed(f"node {node.name} exited with {code}; see {node.log_path}")
            time.sleep(0.1)


def onboard(swarm: LocalSwarm, name: str, sponsor: str,
            emit: Callable[[str], None]) -> tuple[NodeProcess, int, float]:
    """Onboard `name` through the HTTP API exactly as the README tells a hospital's admin:
    an invite from the sponsor, then `POST /v1/join` on the new node."""
    newcomer = swarm.nodes[name]
    first, seconds = join_through_api(newcomer, swarm.nodes[sponsor].api_url,
                                      swarm.options.admin_token, emit)
    return newcomer, first, seconds


def join_through_api(newcomer: NodeProcess, sponsor_url: str, token: str,
                     emit: Callable[[str], None]) -> tuple[int, float]:
    """Invite, join, wait for membership; returns the round the newcomer surely takes part
    in, and the seconds onboarding took.

    That is the round after next of the model it was handed: the members may have fixed the
    next round's participants before the newcomer was admitted, and then it joins from the
    round after. (Not the round its status shows: it may have caught up a round since.)
    """
    name = newcomer.name
    started = time.monotonic()
    emit(f"onboarding {name}: POST {sponsor_url}/v1/invites")
    with AdminClient(sponsor_url, token) as sponsor:
        invite = sponsor.create_invite(600).invite
    emit(f"onboarding {name}: POST {newcomer.api_url}/v1/join "
         f'{{"sponsor_url": "{sponsor_url}", "invite": "…"}}')
    with AdminClient(newcomer.api_url, token) as client:
        client.start_join(sponsor_url, invite)
        try:
            progress = client.follow_join(120.0, poll_s=0.2)
        except AdminApiError as exc:
            raise DemoFailed(f"onboarding {name}: {exc}") from exc
        if progress.state == "failed":
            raise DemoFailed(f"onboarding {name} failed: {progress.error}")
        seconds = time.monotonic() - started
        held = progress.round if progress.round is not None else client.status().round
    emit(f"onboarding {name}: member {progress.address} after {seconds:.1f} s, "
         f"holding the round-{held} model")
    return held + 2, seconds


def _wait_healthy(node: NodeProcess, timeout: float = NODE_START_S) -> None:
    with AdminClient(node.api_url) as client:
        try:
            client.wait_healthy(timeout, alive=lambda: node.process.poll() is None)
        except AdminUnreachable as exc:
            raise DemoFailed(f"node {node.name}: {exc}; see {node.log_path}") from exc


def run_demo(options: DemoOptions, emit: Callable[[str], None],
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`emit` gets the messages and the per-round table; `progress` the rounds' progress."""
    started = time.monotonic()
    joiners = (options.held_back,) if options.onboard else ()
    result: dict[str, Any] = {}
    with LocalSwarm(options, emit=emit, joiners=joiners) as swarm:
        swarm.start_founders()
        if options.onboard:
            newcomer = swarm.start(options.held_back)
            emit(f"{options.held_back} is held back: it runs with only its data and waits to "
                 f"be onboarded after round {options.onboard_after}")
        swarm.run_ceremony()
        nodes = swarm.start_all()
        emit(f"started {len(nodes)} node processes (logs in {options.out_dir / 'logs'}); "
             f"{options.rounds} rounds of {options.epochs} local epochs")
        after_round = None
        if options.onboard:

            def after_round(round_number: int) -> list[tuple[NodeProcess, int]]:
                if round_number != options.onboard_after:
                    return []
                _wait_healthy(newcomer)
                node, first, seconds = onboard(swarm, options.held_back, nodes[0].name, emit)
                result["onboarding_seconds"] = round(seconds, 2)
                return [(node, first)]

        task = as_progress(progress).task(options.rounds, f"round 1/{options.rounds}")
        rounds = follow_rounds(nodes, options, emit, columns=list(swarm.hospitals),
                               after_round=after_round, task=task)
        for node in swarm.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=30)
        params = swarm.params
    return {
        "mode": options.mode,
        "nodes": list(HOSPITALS),
        "params": params,
        "rounds": rounds,
        **result,
        "seconds_total": round(time.monotonic() - started, 1),
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    rounds = result["rounds"]
    first, last = rounds[0], rounds[-1]
    lines = [
        f"{result['mode']} run: {len(result['nodes'])} hospitals, {result['params']} "
        f"parameters, {len(rounds)} rounds in {result['seconds_total']} s",
        f"held-out accuracy: round 1 {first['heldout_accuracy']:.3f} → "
        f"round {last['round']} {last['heldout_accuracy']:.3f}",
        "all nodes held bitwise identical weights after every round: "
        + ("yes" if all(r["identical_weights"] for r in rounds) else "NO"),
    ]
    return lines


