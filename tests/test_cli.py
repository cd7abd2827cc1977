"""The command line's error boundary: one `Error:` line and an exit code, or with --debug
the traceback. The real CLI runs as a subprocess, as a user runs it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import requests
from click.testing import CliRunner

from apiary.chain.devnet import dev_private_keys, free_port
from apiary.cli.boundary import ErrorBoundaryGroup
from apiary.core.data.sample import write_sample_shard
from apiary.core.errors import ApiaryError, ConfigError


def apiary(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
    return subprocess.run([sys.executable, "-m", "apiary.cli", *args], cwd=cwd,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, run.stderr
    return errors[0]


def test_a_port_out_of_range_is_one_line_and_exit_2(tmp_path: Path) -> None:
    run = apiary("devnet", "--port", "99999", cwd=tmp_path)
    assert run.returncode == 2
    line = one_error_line(run)
    assert "devnet_port=99999" in line and "APIARY_DEVNET_PORT" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    for run in (apiary("--debug", "devnet", "--port", "99999", cwd=tmp_path),
                apiary("devnet", "--port", "99999", cwd=tmp_path, APIARY_DEBUG="1")):
        assert run.returncode != 0
        assert "Traceback" in run.stderr and "ConfigError" in run.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path, listening_port: int) -> None:
    run = apiary("devnet", "--port", str(listening_port), cwd=tmp_path)
    assert run.returncode == 2
    assert f"127.0.0.1:{listening_port}: Address already in use" in one_error_line(run)


def test_a_bad_setting_in_the_environment_is_one_line(tmp_path: Path) -> None:
    run = apiary("devnet", cwd=tmp_path, APIARY_DEVNET_PORT="abc")
    assert run.returncode == 2
    line = one_error_line(run)
    assert "devnet_port='abc'" in line and "valid integer" in line


def test_a_node_whose_chain_does_not_answer_is_one_line(tmp_path: Path) -> None:
    write_sample_shard("va", tmp_path / "va.npz")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "he-secret.ctx").touch()
    rpc_url = f"http://127.0.0.1:{free_port()}"
    args = ["node", "--name", "va", "--data", "va.npz", "--state-dir", "state",
            "--contract", "0x" + "11" * 20, "--private-key", dev_private_keys(2)[1],
            "--rpc-url", rpc_url, "--admin-token", "cli-test-admin-token", "--chain-wait-s", "2"]
    run = apiary(*args, cwd=tmp_path)
    assert run.returncode == 1
    assert f"the chain at {rpc_url} did not answer within 2 s" in one_error_line(run)
    assert f"waiting for the chain at {rpc_url} (" in run.stderr
    debug = apiary("--debug", *args, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_the_cli_starts_without_torch() -> None:
    """Its defaults come from TrainingConfig, whose module loads torch only to train."""
    code = "import sys, apiary.cli; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert run.stdout.strip() == "False"


def _group(error: BaseException) -> click.Group:
    @click.group(cls=ErrorBoundaryGroup)
    @click.option("--debug", is_flag=True)
    def cli(debug: bool) -> None:
        pass

    @cli.command()
    def fail() -> None:
        raise error

    @cli.command()
    @click.argument("count", type=int)
    def count(count: int) -> None:
        pass

    return cli


class Unhealthy(ApiaryError):
    exit_code = 3


@pytest.mark.parametrize(("error", "code", "line"), [
    (Unhealthy("the swarm is unhealthy"), 3, "Error: the swarm is unhealthy"),
    (ConfigError("bad setting"), 2, "Error: bad setting"),
    (OSError(errno.EACCES, "Permission denied", "/srv/state"), 1,
     "Error: Permission denied: /srv/state"),
    (requests.ConnectionError("no route"), 1, "Error: no route"),
    (KeyboardInterrupt(), 130, "Error: interrupted"),
])
def test_the_boundary_maps_errors_to_one_line(error: BaseException, code: int,
                                               line: str) -> None:
    result = CliRunner().invoke(_group(error), ["fail"])
    assert result.exit_code == code
    assert result.output.strip() == line


def test_a_bug_keeps_its_traceback_and_click_keeps_its_usage_errors() -> None:
    bug = CliRunner().invoke(_group(ZeroDivisionError("oops")), ["fail"])
    assert isinstance(bug.exception, ZeroDivisionError)
    usage = CliRunner().invoke(_group(ZeroDivisionError()), ["count", "many"])
    assert usage.exit_code == 2 and "Usage:" in usage.output
    debug = CliRunner().invoke(_group(ConfigError("bad")), ["--debug", "fail"])
    assert isinstance(debug.exception, ConfigError)


@pytest.mark.parametrize("args", [["--nodes", "2"], ["--rounds", "1"], ["--chaos-every-s", "0"]])
def test_bench_soak_refuses_a_run_too_small_to_mean_anything(tmp_path: Path,
                                                            args: list[str]) -> None:
    run = apiary("bench", "soak", *args, cwd=tmp_path)
    assert run.returncode == 2 and "at least 3 nodes" in run.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_guard_bound_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    run = apiary("node", "--guard-max-weight", value, cwd=tmp_path)
    assert run.returncode == 2
    assert "guard_max_weight" in one_error_line(run)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("token", "says"), [
    (None, "needs an admin token"), ("change-me", "placeholder"), ("short-token", "11 characters"),
    ("x", "1 characters"),
])
def test_a_node_without_a_real_admin_token_refuses_to_start(tmp_path: Path, token: str | None,
                                                            says: str) -> None:
    args = ["node", "--name", "va", "--state-dir", "state"]
    run = apiary(*args, *(["--admin-token", token] if token else []), cwd=tmp_path)
    assert run.returncode == 2
    line = one_error_line(run)
    assert says in line and "APIARY_ADMIN_TOKEN" in line and "openssl rand" in line
    assert not (tmp_path / "state").exists()


def test_founding_without_an_admin_token_refuses_before_the_chain(tmp_path: Path) -> None:
    run = apiary("found", "--founding-members", "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
                 "--rpc-url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert run.returncode == 2 and "needs an admin token" in one_error_line(run)


def test_a_devnet_whose_chain_is_unreadable_says_so(tmp_path: Path) -> None:
    (tmp_path / "devnet").mkdir()
    (tmp_path / "devnet" / "state.json").write_text("{ not json")
    run = apiary("devnet", "--port", str(free_port()), cwd=tmp_path)
    assert run.returncode != 0
    line = one_error_line(run)
    assert "anvil exited" in line and "devnet/state.json unreadable" in line
