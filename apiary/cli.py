"""The one command line: `apiary devnet | compile | node | coordinator | demo | bench …`."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import click

from apiary.cli_settings import settings_command
from apiary.settings import ChainSettings, CoordinatorSettings, NodeSettings


def _progress(message: str) -> None:
    click.echo(f"  … {message}", err=True)


json_option = click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None,
    help="also write the figures to this JSON file",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="apiary")
def app() -> None:
    """Apiary: swarm learning for hospitals with CKKS-encrypted updates averaged on chain."""


@app.command()
@click.option("--host", default=None, help="listen address [env APIARY_DEVNET_HOST]")
@click.option("--port", type=int, default=None, help="listen port [env APIARY_DEVNET_PORT]")
@click.option("--gas-limit", type=int, default=None,
              help="block gas limit [env APIARY_BLOCK_GAS_LIMIT]")
def devnet(host: str | None, port: int | None, gas_limit: int | None) -> None:
    """Run a local anvil devnet in the foreground (Ctrl-C stops it)."""
    from contracts.devnet import DEV_MNEMONIC, Devnet

    settings = ChainSettings.load(devnet_host=host, devnet_port=port, block_gas_limit=gas_limit)
    with Devnet(settings) as chain:
        click.echo(f"anvil devnet on {chain.rpc_url} (chain id 31337)")
        click.echo(f"dev accounts from the mnemonic: {DEV_MNEMONIC}")
        click.echo(f"block gas limit {settings.block_gas_limit:,}; Ctrl-C to stop")
        stopping: list[bool] = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        try:
            while not stopping and chain.process is not None and chain.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    click.echo("devnet stopped")


@app.command("compile")
def compile_contract() -> None:
    """Recompile contracts/SwarmLearning.sol and rewrite the committed artifact."""
    from contracts.compiler import ARTIFACT_PATH, write_artifact

    artifact = write_artifact()
    click.echo(f"{artifact['compiler']}: wrote {ARTIFACT_PATH}")


def _run_node(settings: Any) -> None:
    from node.main import run_node

    run_node(settings)


app.add_command(settings_command(
    "node", NodeSettings, _run_node,
    "Run one hospital node: train locally, exchange encrypted weights, average them on chain "
    "(or through a coordinator with --mode federated). Every flag also reads an APIARY_* "
    "environment variable.",
))


@app.command()
@click.option("--mode", type=click.Choice(["swarm", "federated"]), default="swarm",
              show_default=True, help="average on chain, or through a coordinator")
@click.option("--rounds", type=int, default=10, show_default=True, help="rounds to run")
@click.option("--epochs", type=int, default=2, show_default=True, help="local epochs a round")
@click.option("--lr", type=float, default=0.003, show_default=True, help="learning rate")
@click.option("--seed", type=int, default=0, show_default=True, help="data split and model seed")
@click.option("--min-peers", type=int, default=2, show_default=True,
              help="fewest hospitals a round may close with")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"),
              show_default=True, help="where shards, node state and logs go")
@json_option
def demo(mode: str, rounds: int, epochs: int, lr: float, seed: int, min_peers: int,
         out_dir: Path, json_path: Path | None) -> None:
    """Run the four UCI Heart Disease hospitals as a swarm on this machine, then stop."""
    from apiary.demo import DemoFailed, DemoOptions, run_demo, summary_lines, write_result

    options = DemoOptions(mode=mode, rounds=rounds, epochs=epochs, lr=lr, seed=seed,
                          min_peers=min_peers, out_dir=out_dir)
    try:
        result = run_demo(options, click.echo)
    except DemoFailed as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary_lines(result):
        click.echo(line)
    if json_path is not None:
        write_result(json_path, result)
        click.echo(f"wrote {json_path}")


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
    from apiary.bench.he import bench_he, format_he_table
    from apiary.bench.report import write_json

    result = bench_he(params=params, nodes=nodes, repeats=repeats, progress=_progress)
    click.echo(format_he_table(result))
    write_json(json_path, result)


@bench.command("chain")
@click.option("--nodes", type=int, multiple=True, help="node counts (repeatable) [3, 5, 10]")
@click.option("--params", type=int, default=100_000, show_default=True,
              help="parameters per update")
@json_option
def bench_chain_command(nodes: tuple[int, ...], params: int, json_path: Path | None) -> None:
    """On-chain aggregation on a fresh anvil: gas and seconds per parameter per node."""
    from apiary.bench.chain import bench_chain, format_chain_table
    from apiary.bench.report import write_json

    result = bench_chain(node_counts=nodes or (3, 5, 10), params=params, progress=_progress)
    click.echo(format_chain_table(result))
    write_json(json_path, result)


@bench.command("round")
@click.option("--nodes", type=int, multiple=True, help="node counts (repeatable) [3, 5]")
@click.option("--params", type=int, multiple=True,
              help="approximate model sizes (repeatable) [10000, 100000, 1000000]")
@click.option("--rows", type=int, default=256, show_default=True,
              help="synthetic training rows per node")
@json_option
def bench_round_command(nodes: tuple[int, ...], params: tuple[int, ...], rows: int,
                        json_path: Path | None) -> None:
    """One real swarm round per configuration: seconds per phase, train to decrypt."""
    from apiary.bench.report import write_json
    from apiary.bench.round import bench_round, format_round_table

    result = bench_round(node_counts=nodes or (3, 5),
                         param_targets=params or (10_000, 100_000, 1_000_000),
                         rows=rows, progress=_progress)
    click.echo(format_round_table(result))
    write_json(json_path, result)


def _run_coordinator(settings: Any) -> None:
    from coordinator.main import run_coordinator

    run_coordinator(settings)


app.add_command(settings_command(
    "coordinator", CoordinatorSettings, _run_coordinator,
    "Run the federated-mode coordinator until SIGTERM or Ctrl-C: members push their encrypted "
    "updates, it adds them with the public HE context only and serves the weighted sum. "
    "Every flag also reads an APIARY_* environment variable.",
))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
