"""The one command line: `apiary devnet | compile | bench …` (and more as the swarm grows)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from apiary.settings import ChainSettings

app = typer.Typer(
    help="Apiary: swarm learning for hospitals with CKKS-encrypted updates averaged on chain.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Measure speed, size and gas; print a table, optionally write JSON.")
app.add_typer(bench_app, name="bench")

JsonOption = Annotated[
    Path | None, typer.Option("--json", help="also write the figures to this JSON file")
]


def _progress(message: str) -> None:
    typer.echo(f"  … {message}", err=True)


@app.command()
def devnet(
    host: Annotated[str | None, typer.Option(help="listen address [env APIARY_DEVNET_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="listen port [env APIARY_DEVNET_PORT]")] = None,
    gas_limit: Annotated[
        int | None, typer.Option(help="block gas limit [env APIARY_BLOCK_GAS_LIMIT]")
    ] = None,
) -> None:
    """Run a local anvil devnet in the foreground (Ctrl-C stops it)."""
    from contracts.devnet import DEV_MNEMONIC, Devnet

    settings = ChainSettings.load(devnet_host=host, devnet_port=port, block_gas_limit=gas_limit)
    with Devnet(settings) as chain:
        typer.echo(f"anvil devnet on {chain.rpc_url} (chain id 31337)")
        typer.echo(f"dev accounts from the mnemonic: {DEV_MNEMONIC}")
        typer.echo(f"block gas limit {settings.block_gas_limit:,}; Ctrl-C to stop")
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop and chain.process is not None and chain.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    typer.echo("devnet stopped")


@app.command("compile")
def compile_contract() -> None:
    """Recompile contracts/SwarmLearning.sol and rewrite the committed artifact."""
    from contracts.compiler import ARTIFACT_PATH, write_artifact

    artifact = write_artifact()
    typer.echo(f"{artifact['compiler']}: wrote {ARTIFACT_PATH}")


@bench_app.command("he")
def bench_he_command(
    params: Annotated[int, typer.Option(help="parameters in the vector")] = 100_000,
    nodes: Annotated[int, typer.Option(help="ciphertexts in the weighted sum")] = 5,
    repeats: Annotated[int, typer.Option(help="repetitions; medians are reported")] = 5,
    json_path: JsonOption = None,
) -> None:
    """CKKS codec: encrypt/decrypt and weighted-sum throughput, bytes per parameter."""
    from apiary.bench.he import bench_he, format_he_table
    from apiary.bench.report import write_json

    result = bench_he(params=params, nodes=nodes, repeats=repeats, progress=_progress)
    typer.echo(format_he_table(result))
    write_json(json_path, result)


@bench_app.command("chain")
def bench_chain_command(
    nodes: Annotated[
        list[int] | None, typer.Option("--nodes", help="node counts (repeatable)")
    ] = None,
    params: Annotated[int, typer.Option(help="parameters per update")] = 100_000,
    json_path: JsonOption = None,
) -> None:
    """On-chain aggregation on a fresh anvil: gas and seconds per parameter per node."""
    from apiary.bench.chain import bench_chain, format_chain_table
    from apiary.bench.report import write_json

    result = bench_chain(node_counts=nodes or [3, 5, 10], params=params, progress=_progress)
    typer.echo(format_chain_table(result))
    write_json(json_path, result)


if __name__ == "__main__":
    app()
