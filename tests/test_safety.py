"""Everyday mistakes refused with one clear line, and nothing deleted or changed: a run
directory that an Apiary command did not make, a mistyped APIARY_* variable, a port in
use, a chain that is unreachable or silent, a contract address that is wrong. The real CLI
runs as a subprocess, as a user runs it; its subprocess timeout bounds each wait."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from apiary.chain.devnet import Devnet, DevnetError, dev_private_keys, free_port
from apiary.cli import app
from apiary.core.data.sample import write_sample_shard
from apiary.core.errors import ConfigError
from apiary.core.rundirs import (
    RUN_MARKER,
    NotARunDirectory,
    claim_run_directory,
    clear_run_directory,
)
from apiary.core.settings import ChainSettings, check_environment, known_variables
from tests.test_cli import apiary, one_error_line

TOKEN = "safety-test-admin-token"


@pytest.fixture
def silent_chain() -> Iterator[str]:
    """A port that accepts connections and never answers a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def node_dir(tmp_path: Path) -> Path:
    """What `apiary node` leaves in its working directory: data/ and state/ with keys."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hospital.npz").write_bytes(b"patients")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "identity.json").write_text('{"private_key": "0x..."}')
    return tmp_path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- run directories


def test_a_directory_no_command_made_is_refused_and_kept(tmp_path: Path) -> None:
    before = snapshot(node_dir(tmp_path))
    with pytest.raises(NotARunDirectory, match=f"{tmp_path} was not made by apiary demo "
                       rf"\(no \.apiary-run marker\); choose another --out or empty it"):
        clear_run_directory(tmp_path, "apiary demo", ("data", "state"))
    assert snapshot(tmp_path) == before and not (tmp_path / RUN_MARKER).exists()


def test_a_run_directory_is_made_with_its_marker_and_cleared_next_time(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "demo"
    claim_run_directory(out, "apiary demo")
    assert "apiary demo" in (out / RUN_MARKER).read_text()
    (out / "state").mkdir()
    (out / "state" / "old.json").write_text("{}")
    (out / "keep.txt").write_text("not a part")
    clear_run_directory(out, "apiary demo", ("data", "state"))
    assert sorted(p.name for p in out.iterdir()) == [RUN_MARKER, "keep.txt"]
    clear_run_directory(out, "apiary compare")
    assert [p.name for p in out.iterdir()] == [RUN_MARKER]


def test_an_empty_directory_may_become_a_run_directory(tmp_path: Path) -> None:
    clear_run_directory(tmp_path, "apiary demo", ("data",))
    assert (tmp_path / RUN_MARKER).is_file()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(NotARunDirectory, match="is a file"):
        claim_run_directory(file, "apiary demo")


def test_apiary_demo_refuses_a_nodes_directory_and_deletes_nothing(tmp_path: Path) -> None:
    before = snapshot(node_dir(tmp_path))
    run = apiary("demo", "--out", ".", "--rounds", "1", cwd=tmp_path)
    assert run.returncode == 2
    line = one_error_line(run)
    assert "was not made by apiary demo (no .apiary-run marker)" in line
    assert "choose another --out or empty it yourself" in line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------- APIARY_* variables


def test_a_mistyped_variable_is_refused_naming_the_closest_setting(tmp_path: Path) -> None:
    run = apiary("node", "--name", "va", cwd=tmp_path, APIARY_ADMN_TOKEN=TOKEN)
    assert run.returncode == 2
    line = one_error_line(run)
    assert "unknown environment variable APIARY_ADMN_TOKEN" in line
    assert "did you mean APIARY_ADMIN_TOKEN?" in line
    assert TOKEN not in run.stderr
    assert not (tmp_path / "state").exists()


def test_every_variable_a_settings_class_or_the_cli_reads_is_known() -> None:
    known = known_variables()
    assert {"APIARY_ADMIN_TOKEN", "APIARY_DEVNET_PORT", "APIARY_FOUNDING_MEMBERS",
            "APIARY_COORDINATOR_PORT", "APIARY_HOSPITAL", "APIARY_LOG_FORMAT",
            "APIARY_DEBUG"} <= known

    def envvars(command: click.Command) -> Iterator[str]:
        for param in command.params:
            names = [param.envvar] if isinstance(param.envvar, str) else param.envvar or []
            yield from names
        for sub in getattr(command, "commands", {}).values():
            yield from envvars(sub)

    assert set(envvars(app)) <= known
    check_environment({"APIARY_RPC_URL": "x", "apiary_name": "x", "HOME": "/root"})
    with pytest.raises(ConfigError, match=r"APIARY_EPOCS \(did you mean APIARY_EPOCHS\?\)"):
        check_environment({"APIARY_EPOCS": "3"})
    with pytest.raises(ConfigError, match="variables APIARY_QQQQ, APIARY_ZZZZZZZZZ: no setting"):
        check_environment({"APIARY_ZZZZZZZZZ": "1", "APIARY_QQQQ": "1"})


def test_settings_refuse_an_unknown_variable_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIARY_DEVNET_PROT", "9999")
    with pytest.raises(ConfigError, match="did you mean APIARY_DEVNET_PORT"):
        ChainSettings.load()


# ---------------------------------------------------------------------- ports and chains


def test_a_node_whose_api_port_is_in_use_says_so(tmp_path: Path, listening_port: int) -> None:
    run = apiary("node", "--name", "va", "--admin-token", TOKEN, "--api-port",
                 str(listening_port), cwd=tmp_path)
    assert run.returncode == 2
    line = one_error_line(run)
    assert f"cannot listen on 127.0.0.1:{listening_port}: Address already in use" in line
    assert "--api-port" in line and not (tmp_path / "state").exists()


def test_a_node_whose_grpc_port_is_in_use_says_so(tmp_path: Path, listening_port: int) -> None:
    run = apiary("node", "--name", "va", "--admin-token", TOKEN, "--api-port", "0",
                 "--grpc-port", str(listening_port), cwd=tmp_path)
    assert run.returncode == 2
    assert "--grpc-port" in one_error_line(run)


def member_args(tmp_path: Path, rpc_url: str, contract: str) -> list[str]:
    """A node whose state says it is a member: it connects to the chain when it starts."""
    write_sample_shard("va", tmp_path / "va.npz")
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "he-secret.ctx").touch()
    return ["node", "--name", "va", "--data", "va.npz", "--state-dir", "state", "--contract",
            contract, "--private-key", dev_private_keys(2)[1], "--rpc-url", rpc_url,
            "--admin-token", TOKEN, "--api-port", "0", "--grpc-port", "0"]


def test_a_node_whose_chain_is_silent_gives_up_at_its_deadline(tmp_path: Path,
                                                               silent_chain: str) -> None:
    args = member_args(tmp_path, silent_chain, "0x" + "11" * 20)
    run = apiary(*args, "--chain-wait-s", "3", cwd=tmp_path)
    assert run.returncode == 1
    assert f"the chain at {silent_chain} did not answer within 3 s" in one_error_line(run)
    assert f"waiting for the chain at {silent_chain} (" in run.stderr
    assert " s left)" in run.stderr


def test_a_malformed_contract_address_is_one_line(tmp_path: Path) -> None:
    args = member_args(tmp_path, f"http://127.0.0.1:{free_port()}", "0x1234")
    run = apiary(*args, cwd=tmp_path)
    assert run.returncode == 2
    assert "'0x1234' is not an Ethereum address" in one_error_line(run)


def test_a_contract_address_the_chain_does_not_hold_is_one_line(tmp_path: Path,
                                                                devnet: Devnet) -> None:
    absent = "0x" + "12" * 20
    run = apiary(*member_args(tmp_path, devnet.rpc_url, absent), cwd=tmp_path)
    assert run.returncode == 2
    line = one_error_line(run)
    assert "holds no swarm contract" in line and "wrong --contract" in line


def test_founding_on_a_silent_chain_gives_up_at_its_deadline(tmp_path: Path,
                                                             silent_chain: str) -> None:
    run = apiary("found", "--founding-members", "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
                 "--rpc-url", silent_chain, "--chain-wait-s", "3", "--admin-token", TOKEN,
                 cwd=tmp_path)
    assert run.returncode == 2
    assert f"the chain at {silent_chain} did not answer within 3 s" in one_error_line(run)
    assert f"waiting for the chain at {silent_chain} (" in run.stdout
    assert not (tmp_path / "swarm").exists()


def test_a_devnet_start_gives_up_at_its_deadline_on_a_silent_port(silent_chain: str) -> None:
    """anvil's port accepting but never answering: each probe gives up after its own short
    timeout, so the start keeps its deadline instead of a library's two minutes."""
    port = int(silent_chain.rsplit(":", 1)[1])
    devnet = Devnet(ChainSettings.load(devnet_port=port))
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(DevnetError, match=f"did not answer on {silent_chain} within 3"):
            devnet._wait_until_up(stand_in, 3.0)
    finally:
        stand_in.kill()
        stand_in.wait()


def test_apiary_devnet_on_a_port_in_use_is_one_line(tmp_path: Path,
                                                    silent_chain: str) -> None:
    port = silent_chain.rsplit(":", 1)[1]
    run = apiary("devnet", "--port", port, "--in-memory", cwd=tmp_path)
    assert run.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in one_error_line(run)
