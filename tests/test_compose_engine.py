"""docker-compose.yml and the site bundle on a real Docker engine: the image built offline
(`make image`), the stack founded, rounds with the same weights on every node (read through
each node's admin API), a hospital killed mid-round that catches up, the devnet restarted
and killed with the swarm going on, the join profile, a second compose project from
deploy/site/ joining as another hospital, the federated profile, and nothing left behind.

The engine is started here when none answers (tests/engine.py); where it cannot start, the
tests fail and say why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from apiary.chain.devnet import free_port
from apiary.core.paths import REPO_ROOT
from apiary.node.client import AdminClient
from apiary.node.schemas import RoundEntry
from tests.engine import (
    IMAGE,
    ComposeProject,
    EngineUnavailable,
    build_image,
    docker,
    docker_engine,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.docker]

COMPOSE = REPO_ROOT / "docker-compose.yml"
SITE = REPO_ROOT / "deploy/site"
TOKEN = "engine-test-admin-token-0123456789"
FOUNDERS = ("cleveland", "hungary", "switzerland")
FIGURES = REPO_ROOT / "build/engine-figures.json"
"""What the runs measured (times, rounds, memory), for the README's figures."""


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    try:
        with docker_engine():
            yield
    except EngineUnavailable as exc:
        pytest.fail(f"the container tests need a Docker engine: {exc}")


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, object]]:
    found: dict[str, object] = {}
    yield found
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(found, indent=2))


@pytest.fixture(scope="session")
def image(engine: None, figures: dict[str, object]) -> str:
    figures["image_build_s"] = round(build_image(IMAGE), 1)
    figures["image_mib"] = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE)) >> 20
    return IMAGE


def stack_env(prefix: str) -> dict[str, str]:
    """Free host ports and a network of its own, so that nothing on the host collides."""
    return {
        "APIARY_ADMIN_TOKEN": TOKEN, "APIARY_IMAGE": IMAGE,
        "DEVNET_PORT": str(free_port()), "CLEVELAND_PORT": str(free_port()),
        "HUNGARY_PORT": str(free_port()), "SWITZERLAND_PORT": str(free_port()),
        "VA_PORT": str(free_port()), "CONSORTIUM_NETWORK": f"{prefix}-consortium",
        # Back to back, and a short window, to keep the tests short.
        "ROUND_INTERVAL_S": "0", "ENROL_WINDOW_S": "10",
    }


class Stack:
    """The one-host project and a client of each node's admin API on its host port."""

    def __init__(self, project: ComposeProject) -> None:
        self.project = project
        self.clients: dict[str, AdminClient] = {}

    def client(self, name: str) -> AdminClient:
        if name not in self.clients:
            port = self.project.env[f"{name.upper()}_PORT"]
            self.clients[name] = AdminClient(f"http://127.0.0.1:{port}", TOKEN, timeout_s=10)
        return self.clients[name]

    def rounds(self, name: str) -> dict[int, RoundEntry]:
        return {r.round: r for r in self.client(name).rounds().rounds}

    def explain(self, *names: str) -> str:
        return "\n".join(f"--- {n}\n{self.project.logs(n, 25)}" for n in names)

    @contextmanager
    def logs_on_failure(self, *names: str) -> Iterator[None]:
        """A failure inside carries the named nodes' last log lines and restart counts."""
        try:
            yield
        except Exception as exc:
            raise AssertionError(f"{exc}\nrestarts: {self.restart_counts(names)}\n"
                                 f"{self.explain(*names)}") from exc

    def restart_counts(self, names: tuple[str, ...]) -> dict[str, int]:
        """How often docker restarted each node after it exited by itself."""
        return {n: int(docker("inspect", "--format", "{{.RestartCount}}",
                              self.project.container(n))) for n in names}

    def wait_rounds(self, names: tuple[str, ...], beyond: int, timeout_s: float) -> None:
        wait_until(lambda: all(max(self.rounds(n), default=0) > beyond for n in names),
                   timeout_s, f"{', '.join(names)} finishing round {beyond + 1}",
                   lambda: self.explain(*names))

    def assert_same_weights(self, names: tuple[str, ...], since: int = 0) -> list[int]:
        """Every round that all of `names` hold from `since` on has one weights digest."""
        histories = {n: self.rounds(n) for n in names}
        common = sorted(set.intersection(*(set(h) for h in histories.values())))
        common = [r for r in common if r >= since]
        assert common, f"no round in common since {since}"
        for number in common:
            digests = {n: histories[n][number].weights_digest for n in names}
            assert len(set(digests.values())) == 1, (number, digests)
        return common

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def leftovers(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    return [*docker("ps", "-a", "-q", "--filter", label).split(),
            *docker("volume", "ls", "-q", "--filter", label).split(),
            *docker("network", "ls", "-q", "--filter", label).split()]


# First, before the module's swarm stack exists: one stack at a time on the engine.
def test_the_federated_profile_runs_rounds_through_the_coordinator(
    image: str, figures: dict[str, object],
) -> None:
    name = f"apiary-engine-fed-{os.getpid()}"
    env = {**stack_env(name), "APIARY_MODE": "federated"}
    project = ComposeProject(name, COMPOSE, env, profiles=("federated",))
    stack = Stack(project)
    project.down()
    started = time.monotonic()
    try:
        project.up()
        assert project.wait_exit("founder", 300) == 0, project.logs("founder")
        stack.wait_rounds(FOUNDERS, 2, 300)
        stack.assert_same_weights(FOUNDERS)
        assert all(stack.client(n).status().mode == "federated" for n in FOUNDERS)
        figures["federated_three_rounds_s"] = round(time.monotonic() - started, 1)
    finally:
        stack.close()
        project.down()
    assert not leftovers(name)


@pytest.fixture(scope="module")
def swarm(image: str, figures: dict[str, object]) -> Iterator[Stack]:
    name = f"apiary-engine-{os.getpid()}"
    project = ComposeProject(name, COMPOSE, stack_env(name), profiles=("join",))
    project.down()
    stack = Stack(project)
    try:
        started = time.monotonic()
        project.up(*FOUNDERS, "devnet", "founder")
        exit_code = project.wait_exit("founder", 300)
        assert exit_code == 0, project.logs("founder")
        figures["founded_after_up_s"] = round(time.monotonic() - started, 1)
        stack.wait_rounds(FOUNDERS, 0, 240)
        figures["first_round_after_up_s"] = round(time.monotonic() - started, 1)
        yield stack
    finally:
        stack.close()
        project.down()
        left = leftovers(name)
        assert not left, f"docker-compose down left {left}"


def test_the_founded_stack_holds_the_same_weights_on_every_node_after_every_round(
    swarm: Stack, figures: dict[str, object],
) -> None:
    swarm.wait_rounds(FOUNDERS, 5, 240)
    rounds = swarm.assert_same_weights(FOUNDERS)
    assert rounds[0] == 1 and len(rounds) >= 5
    members = {swarm.client(n).status().address for n in FOUNDERS}
    for name in FOUNDERS:
        first = swarm.rounds(name)[1]
        assert set(first.contributors) == members, "all three founders take part"
        assert swarm.client(name).ready().status == "ready"
        health = swarm.project.state(name)["Health"]
        assert isinstance(health, dict) and health["Status"] == "healthy", "healthy = ready"
    figures["memory_after_rounds"] = swarm.project.stats([*FOUNDERS, "devnet"])
    figures["rounds_checked_first_stack"] = len(rounds)


def test_a_hospital_killed_mid_round_misses_rounds_and_catches_up_after_start(
    swarm: Stack, figures: dict[str, object],
) -> None:
    others = ("cleveland", "switzerland")
    hungary = swarm.client("hungary").status().address
    wait_until(lambda: swarm.client("hungary").status().phase.startswith("round"), 60,
               "hungary in a round")
    docker("kill", swarm.project.container("hungary"))
    killed_at = max(swarm.rounds("cleveland"))
    swarm.wait_rounds(others, killed_at + 2, 240)
    missed = [entry for n, entry in swarm.rounds("cleveland").items() if n > killed_at + 1]
    assert missed and all(hungary not in e.contributors and len(e.contributors) == 2
                          for e in missed), "the swarm goes on without the dead hospital"
    assert swarm.project.state("hungary")["Running"] is False
    docker("start", swarm.project.container("hungary"))
    restarted = max(swarm.rounds("cleveland"))
    wait_until(lambda: any(hungary in e.contributors
                           for n, e in swarm.rounds("cleveland").items() if n > restarted),
               240, "hungary taking part again", lambda: swarm.explain("hungary"))
    swarm.wait_rounds(FOUNDERS, max(swarm.rounds("cleveland")), 120)
    caught_up = swarm.assert_same_weights(FOUNDERS, since=restarted)
    figures["kill_restart"] = {"killed_after_round": killed_at,
                               "rounds_without_it": len(missed),
                               "same_weights_again_from_round": caught_up[0]}


def chain_height(stack: Stack) -> int:
    url = f"http://127.0.0.1:{stack.project.env['DEVNET_PORT']}"
    reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber",
                                  "params": []}, timeout=5)
    return int(reply.json()["result"], 16)


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_the_devnet_comes_back_with_its_chain_and_the_swarm_goes_on(
    swarm: Stack, figures: dict[str, object], how: str,
) -> None:
    before = max(swarm.rounds("cleveland"))
    height = chain_height(swarm)
    restarts = swarm.restart_counts(FOUNDERS)
    devnet = swarm.project.container("devnet")
    if how == "restart":
        docker("restart", "--time", "30", devnet, timeout_s=90)
    else:
        # Killed, the devnet loses the blocks since its last state write (every 2 s; up to
        # 30 s when the kill truncates the file), and a write that races a block may keep
        # that block's storage but not its logs: a round finalized then could never be read.
        # So it is killed early in a round's enrolment window (10 s), away from a finalization;
        # rounds it loses that the nodes hold are orphaned by them and run again.
        wait_until(lambda: max(swarm.rounds("cleveland")) > before, 120, "a round ending")
        before = max(swarm.rounds("cleveland"))
        time.sleep(3)  # past one state write
        docker("kill", devnet)
        docker("start", devnet)
    wait_until(lambda: chain_height(swarm) > 0, 120, "the devnet answering")
    # Killed, the chain loses the blocks since its last whole state write.
    assert chain_height(swarm) >= (height if how == "restart" else 1)
    swarm.wait_rounds(FOUNDERS, before + 2, 300)
    rounds = swarm.assert_same_weights(FOUNDERS, since=before + 1)
    # Rounds the chain lost are orphaned and run again; no node exits over them.
    assert swarm.restart_counts(FOUNDERS) == restarts, swarm.explain(*FOUNDERS)
    figures[f"devnet_{how}"] = {"round_before": before, "height_before": height,
                                "rounds_after": len(rounds)}


def test_the_join_profile_onboards_va_through_the_admin_api(
    swarm: Stack, figures: dict[str, object],
) -> None:
    with swarm.logs_on_failure("va", *FOUNDERS):
        started = time.monotonic()
        swarm.project.up("va")
        va = swarm.client("va")
        wait_until(lambda: va.health().status == "ok", 120, "va's admin API answering")
        invite = swarm.client("cleveland").create_invite(600).invite
        va.start_join("http://cleveland:8000", invite)
        progress = va.follow_join(180)
        assert progress.state == "member", progress
        address = va.status().address
        wait_until(lambda: any(address in e.contributors
                               for e in swarm.rounds("cleveland").values()),
                   180, "va contributing to a round", lambda: swarm.explain("va", "cleveland"))
        joined = min(n for n, e in swarm.rounds("cleveland").items() if address in e.contributors)
        swarm.wait_rounds((*FOUNDERS, "va"), joined, 120)
        swarm.assert_same_weights((*FOUNDERS, "va"), since=joined)
        figures["join_va_s"] = round(time.monotonic() - started, 1)


def write_shard(folder: Path, hospital: str, file_name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
    env.update(APIARY_HOSPITAL=hospital, APIARY_DATA=str(folder / file_name))
    subprocess.run([sys.executable, "-m", "apiary.cli", "sample-data"], env=env, check=True,
                   capture_output=True, timeout=120)
    os.chmod(folder / file_name, 0o644)


def write_secret(folder: Path, name: str, value: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(value + "\n")
    os.chmod(path, 0o400)
    if os.geteuid() == 0:
        os.chown(path, 10001, 10001)  # the image's user


def test_a_site_bundle_project_joins_as_another_hospital_on_its_own_network(
    swarm: Stack, figures: dict[str, object], tmp_path: Path,
) -> None:
    data, secrets = tmp_path / "data", tmp_path / "secrets"
    write_shard(data, "switzerland", "zurich.npz")
    write_secret(secrets, "admin_token", "site-admin-token-0123456789abcdef")
    write_secret(secrets, "invite", swarm.client("cleveland").create_invite(600).invite)
    api_port = free_port()
    env = {"APIARY_IMAGE": IMAGE, "SITE_NAME": "zurich", "SITE_DATA_DIR": str(data),
           "SITE_DATA_FILE": "zurich.npz", "SITE_ADVERTISE": "zurich:50051",
           "SITE_API_PORT": str(api_port), "SITE_GRPC_PORT": str(free_port()),
           "CHAIN_URL": "http://devnet:8545", "SPONSOR_URL": "http://cleveland:8000",
           "SITE_SECRETS_DIR": str(secrets), "ROUND_INTERVAL_S": "0",
           "CONSORTIUM_NETWORK": swarm.project.env["CONSORTIUM_NETWORK"]}
    name = f"{swarm.project.name}-zurich"
    site = ComposeProject(name, SITE / "docker-compose.yml", env, project_dir=SITE,
                          extra_files=(SITE / "one-host.yml",))
    started = time.monotonic()
    try:
        with swarm.logs_on_failure(*FOUNDERS):
            site.up()
            zurich = AdminClient(f"http://127.0.0.1:{api_port}",
                                 "site-admin-token-0123456789abcdef", timeout_s=10)
            wait_until(lambda: zurich.ready().status == "ready", 240, "zurich ready (a member)",
                       lambda: site.logs("node"))
            address = zurich.status().address
            wait_until(lambda: any(address in e.contributors
                                   for e in swarm.rounds("cleveland").values()),
                       180, "zurich contributing to a round", lambda: site.logs("node"))
            joined = min(n for n, e in swarm.rounds("cleveland").items()
                         if address in e.contributors)
            histories = {n: swarm.rounds(n) for n in FOUNDERS}
            wait_until(lambda: max(r.round for r in zurich.rounds().rounds) > joined, 120,
                       "zurich finishing another round")
            for entry in zurich.rounds().rounds:
                founders_entry = histories["cleveland"].get(entry.round)
                if founders_entry is not None:
                    assert entry.weights_digest == founders_entry.weights_digest
            networks = json.loads(docker("inspect", "--format",
                                         "{{json .NetworkSettings.Networks}}",
                                         site.container("node")))
            # Its own network, and the consortium's to reach the chain, sponsor and peers.
            assert set(networks) == {f"{name}_default", env["CONSORTIUM_NETWORK"]}, networks
            secrets_env = docker("inspect", "--format", "{{json .Config.Env}}",
                                 site.container("node"))
            assert "site-admin-token" not in secrets_env, "secrets are files, not variables"
            figures["site_join_s"] = round(time.monotonic() - started, 1)
            zurich.close()
    finally:
        site.down()
    assert not leftovers(name)
