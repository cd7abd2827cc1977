"""The one command line: `apiary devnet | compile | node | coordinator | demo | bench …`."""

from __future__ import annotations

import signal
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from apiary.cli.admin import admin
from apiary.cli.boundary import ErrorBoundaryGroup
from apiary.cli.settings_options import settings_command
from apiary.cli.strategy import strategy_options
from apiary.core.settings import (
    ChainSettings,
    CoordinatorSettings,
    FoundingSettings,
    NodeSettings,
    SampleDataSettings,
)
from apiary.core.training import DEFAULT_TRAINING

if TYPE_CHECKING:
    from apiary.tools.progress import Progress

DEFAULT_DEVNET_STATE = Path("devnet/state.json")
GOOD_STATE_EVERY_S = 30.0
"""How often `apiary devnet` keeps a copy of a state file that parses (state.json.good)."""
"""Where `apiary devnet` keeps the chain unless told otherwise."""

def _progress() -> AbstractContextManager[Progress]:
    """A long command's progress on stderr, with the time left (plain lines off a terminal)."""
    from apiary.tools.progress import progress_on_stderr

    return progress_on_stderr()


json_option = click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None,
    help="also write the figures to this JSON file",
)


@click.group(cls=ErrorBoundaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="apiary")
@click.option("--debug", is_flag=True, envvar="APIARY_DEBUG",
              help="show the traceback of an error [env APIARY_DEBUG]")
def app(debug: bool) -> None:
    """Apiary: swarm learning for hospitals with CKKS-encrypted updates averaged on chain."""


@app.command()
@click.option("--host", default=None, help="listen address [env APIARY_DEVNET_HOST]")
@click.option("--port", type=int, default=None, help="listen port [env APIARY_DEVNET_PORT]")
@click.option("--gas-limit", type=int, default=None,
              help="block gas limit [env APIARY_BLOCK_GAS_LIMIT]")
@click.option("--state", "state_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="keep the chain in this file across restarts "
              "[env APIARY_DEVNET_STATE; default devnet/state.json]")
@click.option("--in-memory", is_flag=True, help="keep no state file: a restart starts empty")
def devnet(host: str | None, port: int | None, gas_limit: int | None,
           state_file: Path | None, in_memory: bool) -> None:
    """Run a local anvil devnet in the foreground (Ctrl-C stops it)."""
    settings = ChainSettings.load(devnet_host=host, devnet_port=port, block_gas_limit=gas_limit,
                                  devnet_state=state_file)
    if in_memory:
        settings = settings.model_copy(update={"devnet_state": None})
    elif settings.devnet_state is None:
        settings = settings.model_copy(update={"devnet_state": DEFAULT_DEVNET_STATE})
    from apiary.chain.devnet import DEV_MNEMONIC, Devnet

    with Devnet(settings) as chain:
        kept = (f"state kept in {settings.devnet_state}" if settings.devnet_state
                else "state in memory only")
        click.echo(f"anvil devnet on {chain.rpc_url} (chain id 31337); {kept}")
        click.echo(f"dev accounts from the mnemonic: {DEV_MNEMONIC}")
        click.echo(f"block gas limit {settings.block_gas_limit:,}; Ctrl-C to stop")
        stopping: list[bool] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        copied_at = time.monotonic()
        try:
            while not stopping and chain.process is not None and chain.process.poll() is None:
                time.sleep(0.5)
                if time.monotonic() - copied_at > GOOD_STATE_EVERY_S:
                    chain.keep_good_state()
                    copied_at = time.monotonic()
        except KeyboardInterrupt:
            pass
    click.echo("devnet stopped")


@app.command("compile")
def compile_contract() -> None:
    """Recompile contracts/SwarmLearning.sol and rewrite the committed artifact."""
    from apiary.chain.compiler import ARTIFACT_PATH, write_artifact

    artifact = write_artifact()
    click.echo(f"{artifact['compiler']}: wrote {ARTIFACT_PATH}")


def _run_node(settings: Any) -> None:
    from apiary.node.main import run_node

    run_node(settings)


app.add_command(settings_command(
    "node", NodeSettings, _run_node,
    "Run one hospital node: train locally, exchange encrypted weights, average them on chain "
    "(or through a coordinator with --mode federated). Every flag also reads an APIARY_* "
    "environment variable.",
))


def _run_found(settings: Any) -> None:
    from apiary.node.founder import found

    found(settings, click.echo)


app.add_command(settings_command(
    "found", FoundingSettings, _run_found,
    "Found a swarm with nodes that are already running: the first founder creates the HE "
    "key, the contract is deployed and admits every founder as its GET /v1/identity says, "
    "each is told its swarm and gets the key sealed to it. Holds and writes no hospital's "
    "key. Does nothing if the swarm directory already names a live contract. Every flag "
    "also reads an APIARY_* environment variable.",
))


def _run_sample_data(settings: Any) -> None:
    from apiary.core.data.sample import write_sample_shard

    shard = write_sample_shard(settings.hospital, settings.data, settings.seed)
    click.echo(f"wrote {settings.data}: {settings.hospital}, {len(shard.y_train)} training "
               f"and {len(shard.y_test)} test patients")


app.add_command(settings_command(
    "sample-data", SampleDataSettings, _run_sample_data,
    "Write one hospital's shard of the bundled UCI Heart Disease data (demos and the compose "
    "deployment; a real hospital uses its own file). Every flag also reads an APIARY_* "
    "environment variable.",
))


@app.command()
@click.option("--mode", type=click.Choice(["swarm", "federated"]), default="swarm",
              show_default=True, help="average on chain, or through a coordinator")
@click.option("--rounds", type=int, default=DEFAULT_TRAINING.rounds, show_default=True,
              help="rounds to run")
@click.option("--epochs", type=int, default=DEFAULT_TRAINING.epochs, show_default=True,
              help="local epochs a round")
@click.option("--lr", type=float, default=DEFAULT_TRAINING.lr, show_default=True,
              help="learning rate")
@click.option("--seed", type=int, default=DEFAULT_TRAINING.seed, show_default=True,
              help="data split and model seed")
@click.option("--min-peers", type=int, default=2, show_default=True,
              help="fewest hospitals a round may close with")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"),
              show_default=True,
              help="where shards, node state and logs go (an earlier run's are replaced)")
@click.option("--onboard", is_flag=True,
              help="hold one hospital back and onboard it through the HTTP API after round 2")
@click.option("--split", type=click.Choice(["apiary", "flamby"]), default="apiary",
              show_default=True,
              help="the hospitals' train/test split and features: apiary's, or FLamby's "
                   "Fed-Heart-Disease exactly")
@click.option("--task", default=DEFAULT_TRAINING.model, show_default=True,
              help="the task every node runs: a built-in (heart, fashion, mlp, cnn), "
                   "package.module:name, or path/to/file.py[:name]")
@strategy_options
@json_option
def demo(mode: str, rounds: int, epochs: int, lr: float, seed: int, min_peers: int,
         out_dir: Path, onboard: bool, split: str, task: str, json_path: Path | None,
         strategy: dict[str, Any]) -> None:
    """Run the four UCI Heart Disease hospitals as a swarm on this machine, then stop."""
    from apiary.core.data.datasets import DatasetSpec
    from apiary.tools.demo import DemoOptions, run_demo, summary_lines

    if onboard and mode != "swarm":
        raise click.UsageError("--onboard needs --mode swarm (members join on chain)")
    options = DemoOptions(mode=mode, rounds=rounds, epochs=epochs, lr=lr, seed=seed,
                          min_peers=min_peers, out_dir=out_dir, onboard=onboard, model=task,
                          dataset=DatasetSpec("heart", split=split), **strategy)
    with _progress() as progress:
        result = run_demo(options, click.echo, progress)
    _report_run(summary_lines(result), result, json_path)


def _report_run(summary: list[str], result: dict[str, Any], json_path: Path | None) -> None:
    """A run's summary lines, and its JSON when asked for."""
    from apiary.tools.bench.report import write_json

    for line in summary:
        click.echo(line)
    if json_path is not None:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


@app.command()
@click.option("--dataset", type=click.Choice(["heart", "fashion", "letters"]), default="heart",
              show_default=True,
              help="heart: the 4 UCI Heart Disease hospitals (MLP); fashion: Fashion-MNIST over "
                   "5 sites with Dirichlet label skew (CNN); letters: UCI Letter Recognition, "
                   "26 classes over 5 sites with Dirichlet label skew (wide MLP)")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="seeds 0..N-1: data split, initial model and shuffling")
@click.option("--rounds", type=int, default=DEFAULT_TRAINING.rounds, show_default=True,
              help="rounds; central and local train rounds × epochs epochs")
@click.option("--epochs", type=int, default=DEFAULT_TRAINING.epochs, show_default=True,
              help="local epochs a round")
@click.option("--lr", type=float, default=DEFAULT_TRAINING.lr, show_default=True,
              help="Adam learning rate")
@click.option("--batch-size", type=int, default=DEFAULT_TRAINING.batch_size, show_default=True,
              help="mini-batch size")
@click.option("--methods", default="central,local,fedavg,swarm,federated", show_default=True,
              help="comma-separated subset of the methods to run")
@click.option("--split", type=click.Choice(["apiary", "flamby"]), default="apiary",
              show_default=True,
              help="heart: apiary = stratified 2/3 per hospital drawn per seed, 15 features; "
                   "flamby = FLamby's Fed-Heart-Disease split and 13 features, exactly")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="fashion, letters: Dirichlet label-skew concentration (smaller: more skew)")
@click.option("--images", type=int, default=12_500, show_default=True,
              help="fashion: images drawn (class-balanced) before the split; 80 % train")
@click.option("--workers", type=int, default=2, show_default=True,
              help="processes for the in-process methods (1: none)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              default=Path("runs/compare"), show_default=True,
              help="node state and logs of the real runs; default place of JSON and figure")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="write the numbers here [OUT/DATASET.json]")
@click.option("--figure", "figure_path", type=click.Path(path_type=Path), default=None,
              help="write the PNG figure here [OUT/DATASET.png]")
@strategy_options
def compare(dataset: str, seeds: int, rounds: int, epochs: int, lr: float, batch_size: int,
            methods: str, split: str, alpha: float, images: int, workers: int, out_dir: Path,
            json_path: Path | None, figure_path: Path | None, strategy: dict[str, Any]) -> None:
    """Is joining the swarm worth it? Train central, local (each hospital alone), plaintext
    FedAvg, swarm and federated on the same data, split and seeds; score every model on every
    hospital's test split and on their union. Prints tables; writes JSON and a PNG."""
    from apiary.core.data.datasets import DatasetSpec
    from apiary.tools.bench.report import write_json
    from apiary.tools.compare import CompareOptions, dataset_strategy, run_compare
    from apiary.tools.compare_table import format_tables
    from apiary.tools.plot import plot_comparison

    spec = DatasetSpec(dataset, alpha=alpha, images=images, split=split)
    options = CompareOptions(
        dataset=spec, seeds=seeds,
        rounds=rounds, epochs=epochs, lr=lr, batch_size=batch_size,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        out_dir=out_dir, workers=workers, **dataset_strategy(dataset, strategy))
    with _progress() as progress:
        result = run_compare(options, progress)
    click.echo(format_tables(result))
    json_path = json_path or out_dir / f"{spec.label}.json"
    write_json(json_path, result)
    figure = plot_comparison(result, figure_path or out_dir / f"{spec.label}.png")
    click.echo(f"wrote {json_path} and {figure}")


@app.group()
def bench() -> None:
    """Measure speed, size and gas; print a table, optionally write JSON."""


@bench.command("he")
@click.option("--params", type=int, default=102_400, show_default=True,
              help="parameters in the vector (25 full blocks by default)")
@click.option("--nodes", type=int, default=5, show_default=True,
              help="ciphertexts in the weighted sum")
@click.option("--repeats", type=int, default=5, show_default=True,
              help="repetitions; medians are reported")
@json_option
def bench_he_command(params: int, nodes: int, repeats: int, json_path: Path | None) -> None:
    """CKKS codec: encrypt/decrypt and weighted-sum throughput, bytes per parameter."""
    from apiary.tools.bench.he import bench_he, format_he_table
    from apiary.tools.bench.report import write_json

    with _progress() as progress:
        result = bench_he(params=params, nodes=nodes, repeats=repeats, progress=progress)
    click.echo(format_he_table(result))
    write_json(json_path, result)


@bench.command("chain")
@click.option("--nodes", type=int, multiple=True, help="node counts (repeatable) [3, 5, 10]")
@click.option("--params", type=int, default=100_000, show_default=True,
              help="parameters per update")
@json_option
def bench_chain_command(nodes: tuple[int, ...], params: int, json_path: Path | None) -> None:
    """On-chain aggregation on a fresh anvil: gas and seconds per parameter per node."""
    from apiary.tools.bench.chain import bench_chain, format_chain_table
    from apiary.tools.bench.report import write_json

    with _progress() as progress:
        result = bench_chain(node_counts=nodes or (3, 5, 10), params=params, progress=progress)
    click.echo(format_chain_table(result))
    write_json(json_path, result)


@bench.command("round")
@click.option("--nodes", type=int, multiple=True, help="node counts (repeatable) [3, 5]")
@click.option("--params", type=int, multiple=True,
              help="approximate model sizes (repeatable) [10000, 100000, 1000000]")
@click.option("--rows", type=int, default=256, show_default=True,
              help="synthetic training rows per node")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="rounds per configuration; figures are their medians")
@click.option("--members-per-process", type=int, default=None,
              help="members sharing one process, each in its own thread (default: one "
                   "each up to 10 members, then 10 processes)")
@json_option
def bench_round_command(nodes: tuple[int, ...], params: tuple[int, ...], rows: int,
                        rounds: int, members_per_process: int | None,
                        json_path: Path | None) -> None:
    """Real swarm rounds per configuration: seconds per phase, train to decrypt, gas and
    peak memory per node, and their slope against the number of members."""
    from apiary.tools.bench.report import write_json
    from apiary.tools.bench.round import bench_round, check_round_flags, format_round_table

    node_counts, targets = nodes or (3, 5), params or (10_000, 100_000, 1_000_000)
    check_round_flags(node_counts, targets, rows, rounds, members_per_process)
    with _progress() as progress:
        result = bench_round(node_counts=node_counts, param_targets=targets, rows=rows,
                             rounds=rounds, progress=progress,
                             members_per_process=members_per_process)
    click.echo(format_round_table(result))
    write_json(json_path, result)


@bench.command("cost")
@click.option("--members", type=click.IntRange(min=1), multiple=True,
              help="member counts (repeatable) [5, 10, 20, 50, 100]")
@click.option("--params", type=click.IntRange(min=1), multiple=True,
              help="model sizes (repeatable) [10000, 100000, 1000000, 10000000]")
@click.option("--gas-limit", type=click.IntRange(min=1), multiple=True,
              help="block gas limits of the chain (repeatable) [30M, 60M, 1G]")
@click.option("--block-time", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="seconds between two blocks")
@click.option("--fit", "fit_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="fit the model to this apiary bench round --json report instead of the "
                   "figures measured for the README")
@json_option
def bench_cost_command(members: tuple[int, ...], params: tuple[int, ...],
                       gas_limit: tuple[int, ...], block_time: float, fit_path: Path | None,
                       json_path: Path | None) -> None:
    """Gas per round against members × parameters, and rounds per hour on a chain."""
    import json

    from apiary.core.errors import ConfigError
    from apiary.tools.bench import cost
    from apiary.tools.bench.report import write_json

    model = cost.default_model()
    if fit_path is not None:
        try:
            model = cost.fit_model(cost.measured_from_round(json.loads(fit_path.read_text())))
        except ValueError as exc:
            raise ConfigError(f"--fit {fit_path}: {exc}") from None
    result = cost.cost_report(model, members or cost.MEMBER_COUNTS, params or cost.PARAM_COUNTS,
                              gas_limit or cost.GAS_LIMITS, block_time)
    click.echo(cost.format_cost_report(result))
    write_json(json_path, result)


@bench.command("soak")
@click.option("--nodes", type=int, default=5, show_default=True, help="honest node processes")
@click.option("--rounds", type=int, default=50, show_default=True, help="rounds to run")
@click.option("--chaos-every-s", type=float, default=25.0, show_default=True,
              help="seconds between two chaos actions (kill -9, pause, devnet restart)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/soak"),
              show_default=True, help="where the nodes keep their data, state and logs")
@json_option
def bench_soak_command(nodes: int, rounds: int, chaos_every_s: float, out_dir: Path,
                       json_path: Path | None) -> None:
    """Many rounds of real node processes under chaos and a malicious member."""
    from apiary.tools.soak import SoakOptions, run_soak, write_report

    if nodes < 3 or rounds < 4 or chaos_every_s <= 0:
        raise click.BadParameter("use at least 3 nodes, 4 rounds and a positive chaos period")
    with _progress() as progress:
        report = run_soak(SoakOptions(nodes=nodes, rounds=rounds, chaos_every_s=chaos_every_s,
                                      out_dir=out_dir), progress)
    click.echo(report.table())
    if json_path is not None:
        write_report(report, json_path)


def _run_coordinator(settings: Any) -> None:
    from apiary.coordinator.main import run_coordinator

    run_coordinator(settings)


app.add_command(settings_command(
    "coordinator", CoordinatorSettings, _run_coordinator,
    "Run the federated-mode coordinator until SIGTERM or Ctrl-C: members push their encrypted "
    "updates, it adds them with the public HE context only and serves the weighted sum. "
    "Every flag also reads an APIARY_* environment variable.",
))


app.add_command(admin)


def main() -> None:
    """The `apiary` command; `apiary.cli.boundary` turns its errors into one line each."""
    app()


if __name__ == "__main__":
    main()
