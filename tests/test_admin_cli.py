"""`apiary admin …` against real nodes: a swarm founded on a real devnet, admitting by
majority, with a fourth hospital that joins, is approved and is removed — every step
through the CLI as an operator runs it (its own process, token from a file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.node.client import AdminClient
from apiary.tools.demo import DemoOptions, LocalSwarm

pytestmark = [pytest.mark.chain, pytest.mark.slow]

FOUNDERS = ("cleveland", "hungary", "va")
NEWCOMER = "switzerland"
TOKEN = "admin-cli-test-token"


class Cli:
    """Runs `apiary admin` as its own process, the admin token in a file."""

    def __init__(self, swarm: LocalSwarm, token_file: Path) -> None:
        self.swarm = swarm
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
        self.env["APIARY_ADMIN_TOKEN_FILE"] = str(token_file)

    def url(self, name: str) -> str:
        return self.swarm.nodes[name].api_url

    def run(self, name: str | None, *args: str, env: dict[str, str] | None = None,
            stdin: str = "") -> subprocess.CompletedProcess[str]:
        target = ["--url", self.url(name)] if name else []
        return subprocess.run([sys.executable, "-m", "apiary.cli", "admin", *target, *args],
                              env={**self.env, **(env or {})}, input=stdin, text=True,
                              capture_output=True, timeout=120, check=False)

    def ok(self, name: str, *args: str, env: dict[str, str] | None = None) -> str:
        done = self.run(name, *args, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def json(self, name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        return json.loads(self.ok(name, "--format", "json", *args, env=env))

    def refused(self, name: str | None, *args: str, env: dict[str, str] | None = None) -> str:
        done = self.run(name, *args, env=env)
        assert done.returncode != 0, done.stdout
        assert "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        return lines[0]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    out = tmp_path_factory.mktemp("admin-cli")
    options = DemoOptions(mode="swarm", rounds=0, out_dir=out, admin_token=TOKEN,
                          round_deadline_s=10.0, min_peers=2, membership="majority")
    token_file = tmp_path_factory.mktemp("secrets") / "admin-token"
    token_file.write_text(TOKEN + "\n")
    with LocalSwarm(options, (*FOUNDERS, NEWCOMER), joiners=(NEWCOMER,)) as swarm:
        swarm.start_founders()
        swarm.start(NEWCOMER)
        swarm.run_ceremony()
        swarm.start_all()
        swarm.wait_until(lambda: all(
            any(r.get("committed", True) for r in swarm.history(n)) for n in FOUNDERS),
            180, "round 1 on every founder")
        yield Cli(swarm, token_file)


def members(cli: Cli, name: str) -> list[str]:
    return [m["address"] for m in cli.json(name, "members")]


def test_status_rounds_model_members_and_readiness(cli: Cli) -> None:
    status = cli.json("cleveland", "status")
    assert status["node"] == "cleveland" and status["mode"] == "swarm"
    assert len(status["members"]) == 3 and status["address"] in members(cli, "cleveland")
    table = cli.ok("cleveland", "status")
    assert "cleveland" in table and all(m["address"] in table for m in status["members"])

    history = cli.json("hungary", "rounds")
    assert history["node"] == "hungary" and history["rounds"][0]["round"] >= 1
    assert len(cli.json("hungary", "rounds", "--last", "1")["rounds"]) == 1
    assert "round" in cli.ok("hungary", "rounds") and "weights" in cli.ok("hungary", "rounds")

    model = cli.json("va", "model")
    assert model["node"] == "va" and model["params"] > 0 and model["weights_digest"]
    table = cli.ok("va", "model")  # a round may finish in between: any round's digest
    digests = {r["weights_digest"] for r in cli.json("va", "rounds")["rounds"]}
    assert "weights digest" in table and any(d in table for d in digests)

    assert cli.json("va", "ready")["status"] == "ready"
    assert "ready" in cli.ok("va", "ready")
    line = cli.refused(NEWCOMER, "ready")
    assert "not ready" in line and "not an active swarm member" in line


def test_mistakes_get_one_line_and_change_nothing(cli: Cli, tmp_path: Path) -> None:
    before = members(cli, "cleveland")
    wrong = "not-the-admin-token-0123"
    line = cli.refused("cleveland", "status", env={"APIARY_ADMIN_TOKEN_FILE": "",
                                                   "APIARY_ADMIN_TOKEN": wrong})
    assert "both" in line  # APIARY_ADMIN_TOKEN_FILE is still set (empty) beside the token
    env = {k: v for k, v in cli.env.items() if k != "APIARY_ADMIN_TOKEN_FILE"}
    done = subprocess.run([sys.executable, "-m", "apiary.cli", "admin", "--url",
                           cli.url("cleveland"), "--token", wrong, "status"], env=env,
                          text=True, capture_output=True, timeout=60, check=False)
    assert done.returncode == 1 and "refused the admin token" in done.stderr
    assert wrong not in done.stderr
    done = subprocess.run([sys.executable, "-m", "apiary.cli", "admin", "--url",
                           cli.url("cleveland"), "status"], env=env, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 1 and "missing bearer token" in done.stderr

    missing = tmp_path / "no-such-token"
    line = cli.refused("cleveland", "status", env={"APIARY_ADMIN_TOKEN_FILE": str(missing)})
    assert "cannot read APIARY_ADMIN_TOKEN_FILE" in line
    line = cli.refused(None, "--url", "http://127.0.0.1:9", "status")
    assert "cannot reach the node's admin API at http://127.0.0.1:9" in line
    assert "is the node running" in line
    line = cli.refused(None, "--url", "ftp://somewhere", "status")
    assert "node_url" in line
    assert cli.run("cleveland", "--format", "xml", "status").returncode == 2

    line = cli.refused("cleveland", "approve", "0x123")
    assert "(422)" in line
    line = cli.refused("cleveland", "remove", "--yes", "0x" + "12" * 20)
    assert "not an active member" in line
    line = cli.refused("hungary", "remove", "--yes", before[-1])
    assert "only the swarm admin's node removes members" in line
    declined = cli.run("cleveland", "remove", before[-1], stdin="n\n")
    assert declined.returncode == 1 and "Aborted" in declined.stderr
    line = cli.refused(NEWCOMER, "invite", "create")
    assert "not a swarm member" in line
    line = cli.refused("cleveland", "invite", "create", "--ttl-s", "-5")
    assert "(422)" in line
    assert members(cli, "cleveland") == before


def test_invite_join_approve_and_remove_a_hospital(cli: Cli, tmp_path: Path) -> None:
    invite = cli.json("va", "invite", "create", "--ttl-s", "600")
    assert invite["sponsor"] == "va" and len(invite["invite"]) >= 16
    second = cli.ok("va", "invite", "create")  # another invite: a new token, shown once
    assert "shown only now" in second and invite["invite"] not in second
    invite_file = tmp_path / "invite"
    invite_file.write_text(invite["invite"])

    started = cli.json(NEWCOMER, "join", "start", cli.url("va"), "--no-follow",
                       env={"APIARY_INVITE_FILE": str(invite_file)})
    assert started["sponsor"] == cli.url("va")
    with AdminClient(cli.url(NEWCOMER), TOKEN) as newcomer:
        cli.swarm.wait_until(lambda: newcomer.join_progress().state == "awaiting approval",
                             120, "the proposal")
    waiting = cli.json(NEWCOMER, "join", "status")
    assert (waiting["approvals"], waiting["needed"]) == (1, 2)
    address = waiting["address"]
    assert address not in members(cli, "cleveland")

    assert "now a member" in cli.ok("hungary", "approve", address)
    assert "(409)" in cli.refused("cleveland", "approve", address)
    followed = cli.ok(NEWCOMER, "join", "follow", "--timeout-s", "120")
    assert f"member {address}" in followed and "holding the round-" in followed
    assert address in members(cli, "cleveland")
    assert "already a swarm member" in cli.refused(
        NEWCOMER, "join", "start", cli.url("va"), "--invite", invite["invite"])

    removal = cli.json("cleveland", "remove", "--yes", address)
    assert removal["removed"] == address and removal["key_epoch"] == 1
    assert address not in removal["delivered"] and not removal["failed"]
    assert address not in members(cli, "hungary")
