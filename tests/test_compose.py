"""docker-compose.yml without a Docker engine: it validates, it matches the CLI, and its own
services — commands and environment exactly as written — run two swarm rounds here: the
nodes start first and make their own keys, then the founder runs the founding ceremony over
their admin APIs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apiary.cli import app
from apiary.core.paths import REPO_ROOT
from apiary.core.settings import FoundingSettings
from apiary.node.founder import param_count_for
from apiary.tools.compose.check import project_problems, service_problems
from apiary.tools.compose.demo import run_compose_demo
from apiary.tools.compose.mapping import LocalLayout
from apiary.tools.compose.spec import ComposeError, ComposeProject, interpolate, load_project

COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV = {"APIARY_ADMIN_TOKEN": "compose-test-token"}


def project(environ: dict[str, str] | None = None) -> ComposeProject:
    return load_project(COMPOSE, environ or ENV)


def docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed (`make test` installs Debian's)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
    return subprocess.run([tool, "-f", str(COMPOSE), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_docker_compose_validates_the_file() -> None:
    result = docker_compose("config", "-q", env=ENV)
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_run_without_an_admin_token() -> None:
    result = docker_compose("config", "-q", env={})
    assert result.returncode != 0
    assert "APIARY_ADMIN_TOKEN" in result.stderr


@pytest.mark.parametrize("name", sorted(project().services))
def test_each_service_runs_an_apiary_command_with_only_variables_its_settings_read(
    name: str,
) -> None:
    assert service_problems(project().services[name], app) == []


def test_an_unknown_variable_or_command_fails_naming_the_service(tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    text = text.replace("APIARY_NAME: hungary", "APIARY_NAME: hungary\n      APIARY_EPOCS: '3'")
    text = text.replace('command: ["apiary", "found"]', 'command: ["apiary", "founds"]')
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text)
    problems = project_problems(load_project(broken, ENV), app)
    assert any("service hungary" in p and "APIARY_EPOCS" in p for p in problems), problems
    assert any("service founder" in p and "apiary founds" in p for p in problems), problems
    assert len(problems) == 2


def test_coordinator_is_sized_and_staffed_like_the_founder() -> None:
    services = project().services
    coordinator = services["coordinator"].environment
    founder = services["founder"].environment
    assert int(coordinator["APIARY_PARAM_COUNT"]) == param_count_for(
        founder["APIARY_MODEL"], founder["APIARY_DATASET"])
    names = [m.split("=")[0] for m in founder["APIARY_FOUNDING_MEMBERS"].split(",")]
    assert {services[n].environment["APIARY_NAME"] for n in names} == set(names)
    # Its members are the chain's; it reads the swarm the founder wrote and publishes the
    # certificate every node pins, in the same volume.
    assert coordinator["APIARY_COORDINATOR_SWARM"] == founder["APIARY_SWARM_DIR"] == "/swarm"
    for name in names:
        node = services[name]
        assert node.environment["APIARY_COORDINATOR_CERT"] == "/swarm/coordinator.pem"
        assert "/swarm" in [m.target for m in node.mounts]


def test_the_founder_runs_after_the_nodes_and_holds_no_member_volume() -> None:
    services = project().services
    founder = services["founder"]
    urls = FoundingSettings.model_construct(
        founding_members=founder.environment["APIARY_FOUNDING_MEMBERS"]).member_urls
    assert urls == {n: f"http://{n}:8000" for n in ("cleveland", "hungary", "switzerland")}
    for name in urls:
        # A node is ready only once founded, so the founder waits for it to start (and for
        # its API to answer, itself), not for it to be healthy.
        assert founder.depends_on[name] == "service_started"
        assert "founder" not in services[name].depends_on
        assert services[name].healthcheck is not None
        assert "/v1/ready" in services[name].healthcheck[-1], "readiness: a founded member"
    assert [m.target for m in founder.mounts] == ["/swarm"]
    assert founder.environment["APIARY_ADMIN"] == "cleveland"
    assert founder.environment["APIARY_ADMIN_TOKEN"] == ENV["APIARY_ADMIN_TOKEN"]


def test_a_newcomer_is_checked_for_liveness_until_it_is_onboarded() -> None:
    services = project().services
    newcomer = services["va"]
    assert newcomer.healthcheck is not None and "/v1/health" in newcomer.healthcheck[-1]
    assert newcomer.depends_on["cleveland"] == "service_healthy", "a founded sponsor"


def test_the_coordinator_serves_its_metrics_on_an_exposed_port() -> None:
    coordinator = project().services["coordinator"]
    port = int(coordinator.environment["APIARY_COORDINATOR_METRICS_PORT"])
    assert port in coordinator.ports and port != 9100


def test_profiles_add_the_coordinator_and_the_joining_hospital() -> None:
    compose = project()
    default = compose.start_order(())
    assert "coordinator" not in default and "va" not in default
    assert default.index("cleveland") < default.index("founder")
    assert "coordinator" in compose.start_order(("federated",))
    joined = compose.start_order(("join",))
    assert joined.index("cleveland") < joined.index("va")
    assert "APIARY_JOIN" not in compose.services["va"].environment


def test_host_names_ports_and_volumes_map_to_loopback_and_run_dirs(tmp_path: Path) -> None:
    layout = LocalLayout(project(), tmp_path)
    rpc = layout.port("devnet", 8545)
    grpc = {n: layout.port(n, 50051) for n in ("cleveland", "hungary", "switzerland")}
    founder = layout.environment("founder")
    assert founder["APIARY_RPC_URL"] == f"http://127.0.0.1:{rpc}"
    api = {n: layout.port(n, 8000) for n in grpc}
    assert founder["APIARY_FOUNDING_MEMBERS"] == ",".join(
        f"{n}=http://127.0.0.1:{p}" for n, p in api.items())
    assert founder["APIARY_SWARM_DIR"] == f"{tmp_path}/roots/founder/swarm"
    node = layout.environment("hungary")
    assert node["APIARY_GRPC_PORT"] == str(grpc["hungary"])
    assert node["APIARY_API_PORT"] == str(layout.port("hungary", 8000))
    assert node["APIARY_GRPC_HOST"] == node["APIARY_API_HOST"] == "127.0.0.1"
    assert node["APIARY_ADVERTISE"] == f"127.0.0.1:{grpc['hungary']}"
    assert node["APIARY_NAME"] == "hungary"
    layout.prepare("founder")
    layout.prepare("hungary")
    assert (tmp_path / "roots/hungary/state").resolve() == tmp_path / "volumes/hungary-state"
    assert (tmp_path / "roots/founder/swarm").resolve() == tmp_path / "volumes/swarm"
    health = layout.healthcheck("hungary")
    assert health is not None and health[0] == sys.executable
    assert f"http://127.0.0.1:{layout.port('hungary', 8000)}/v1/ready" in health[-1]
    assert len(set(layout.ports.values())) == len(layout.ports)


def test_a_reference_to_an_undeclared_port_is_an_error(tmp_path: Path) -> None:
    layout = LocalLayout(project(), tmp_path)
    with pytest.raises(ComposeError, match="does not expose port 9999"):
        layout.rewrite_hosts("http://devnet:9999")
    assert layout.rewrite_hosts("nohost:9999,devnet") == "nohost:9999,devnet"


def test_interpolation_follows_docker_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$SET ${SET} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$SET", env) == \
        "x x d d  $SET"
    with pytest.raises(ComposeError, match="required variable UNSET is missing a value: why"):
        interpolate({"a": ["${UNSET:?why}"]}, env)


@pytest.mark.chain
@pytest.mark.slow
def test_apiary_demo_runs_the_compose_services_for_two_rounds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result_file = tmp_path / "result.json"
    env = {**os.environ, **ENV}
    run = subprocess.run(
        [sys.executable, "-m", "apiary.cli", "demo", "--compose", str(COMPOSE), "--rounds", "2",
         "--out", str(out), "--json", str(result_file)],
        env=env, capture_output=True, text=True, timeout=170,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(result_file.read_text())
    assert result["services"] == ["devnet", "cleveland-shard", "hungary-shard",
                                  "switzerland-shard", "cleveland", "hungary", "switzerland",
                                  "founder"]
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for row in result["rounds"]:
        assert row["identical_weights"], row
        assert row["contributors"] == 3
        assert set(row["node_accuracy"]) == {"cleveland", "hungary", "switzerland"}
    volumes = out / "compose/volumes"
    swarm = json.loads((volumes / "swarm/swarm.json").read_text())
    assert [m["name"] for m in swarm["members"]] == ["cleveland", "hungary", "switzerland"]
    assert sorted(p.name for p in (volumes / "swarm").iterdir()) == ["he-public.ctx",
                                                                   "swarm.json"]
    for member in swarm["members"]:
        own = json.loads((volumes / f"{member['name']}-state/identity.json").read_text())
        assert own["address"] == member["address"], "each node made its own identity"
    assert swarm["admin"] == swarm["members"][0]["address"]
    assert "all nodes held bitwise identical weights after every round: yes" in run.stdout


@pytest.mark.chain
@pytest.mark.slow
def test_the_join_profile_onboards_a_fourth_hospital_through_the_admin_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    result = run_compose_demo(COMPOSE, 2, ("join",), tmp_path / "run", lambda _line: None, app,
                              timeout_s=150)
    assert result["newcomers"] == ["va"]
    last = result["rounds"][-1]
    assert last["contributors"] == 4 and "va" in last["node_accuracy"], last
    assert all(row["identical_weights"] for row in result["rounds"])
