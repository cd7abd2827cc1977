"""The compose files, checked fast and without an engine: docker-compose resolves them, each
service runs an apiary command with only variables that command's settings read, and the
site bundle keeps its secrets in files. tests/test_compose_engine.py runs them for real."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic_settings import BaseSettings

from apiary.cli import app
from apiary.core.paths import REPO_ROOT
from apiary.core.settings import (
    FILE_SUFFIX,
    ChainSettings,
    CoordinatorSettings,
    FoundingSettings,
    NodeSettings,
    SampleDataSettings,
)
from apiary.node.founder import param_count_for

COMPOSE = REPO_ROOT / "docker-compose.yml"
SITE = REPO_ROOT / "deploy/site"
CONSORTIUM = REPO_ROOT / "deploy/consortium/docker-compose.yml"
ENV = {"APIARY_ADMIN_TOKEN": "compose-test-token"}
SITE_ENV = {"SITE_NAME": "zurich", "SITE_DATA_DIR": "/srv/apiary/data",
            "SITE_DATA_FILE": "zurich.csv", "SITE_ADVERTISE": "zurich.example.org:50051",
            "CHAIN_URL": "http://chain.example.org:8545",
            "SPONSOR_URL": "http://cleveland.example.org:8000"}
CONSORTIUM_ENV = {"FOUNDING_MEMBERS": "a=http://a:8000,b=http://b:8000", "SWARM_ADMIN": "a"}
PROFILES = ("federated", "join")

SETTINGS_BY_COMMAND: dict[str, type[BaseSettings]] = {
    "devnet": ChainSettings,
    "found": FoundingSettings,
    "sample-data": SampleDataSettings,
    "node": NodeSettings,
    "coordinator": CoordinatorSettings,
}


def docker_compose(*files: Path, env: dict[str, str], args: tuple[str, ...] = ("config",),
                   profiles: tuple[str, ...] = PROFILES) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is not installed (`make test` installs Debian's)")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("APIARY_", "SITE_", "CHAIN_", "SPONSOR_", "FOUNDING_"))}
    command = [tool, "--project-directory", str(files[0].parent)]
    for file in files:
        command += ["-f", str(file)]
    for profile in profiles:
        command += ["--profile", profile]
    return subprocess.run([*command, *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def resolved(*files: Path, env: dict[str, str] = ENV) -> dict[str, Any]:
    """The file as docker-compose resolves it: anchors merged, variables interpolated."""
    result = docker_compose(*files, env=env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def settings_variables(settings_cls: type[BaseSettings]) -> set[str]:
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}{suffix}".upper() for name in settings_cls.model_fields
            for suffix in ("", FILE_SUFFIX)}


def service_problems(name: str, service: dict[str, Any], cli: click.Group) -> list[str]:
    """What is wrong with one service's command and environment, against the CLI (the
    image's entrypoint is `apiary`, so a command is a subcommand and its arguments)."""
    where = f"service {name}"
    command = list(service.get("command") or [])
    if not command:
        return [f"{where}: no command (the image's entrypoint is apiary)"]
    sub, args = command[0], command[1:]
    found = cli.commands.get(sub)
    if found is None:
        return [f"{where}: `apiary {sub}` is not a command of the CLI"]
    problems = []
    try:
        found.make_context(sub, list(args), resilient_parsing=False)
    except click.ClickException as exc:
        problems.append(f"{where}: `apiary {sub}` rejects its arguments: {exc.format_message()}")
    settings_cls = SETTINGS_BY_COMMAND.get(sub)
    if settings_cls is None:
        return [*problems, f"{where}: no settings class is known for `apiary {sub}`"]
    known = settings_variables(settings_cls)
    for variable in service.get("environment") or {}:
        if variable.upper() not in known:
            problems.append(f"{where}: {variable} is not a setting of `apiary {sub}` "
                            f"({settings_cls.__name__})")
    return problems


def all_problems(config: dict[str, Any]) -> list[str]:
    return [problem for name, service in config["services"].items()
            for problem in service_problems(name, service, app)]


def test_docker_compose_refuses_to_run_without_an_admin_token() -> None:
    result = docker_compose(COMPOSE, env={})
    assert result.returncode != 0
    assert "APIARY_ADMIN_TOKEN" in result.stderr


@pytest.mark.parametrize(("files", "env"), [
    ((COMPOSE,), ENV),
    ((SITE / "docker-compose.yml",), SITE_ENV),
    ((SITE / "docker-compose.yml", SITE / "one-host.yml"), SITE_ENV),
    ((CONSORTIUM,), CONSORTIUM_ENV),
], ids=["one-host", "site", "site-one-host", "consortium"])
def test_each_service_runs_an_apiary_command_with_only_variables_its_settings_read(
    files: tuple[Path, ...], env: dict[str, str],
) -> None:
    assert all_problems(resolved(*files, env=env)) == []


def test_an_unknown_variable_or_command_fails_naming_the_service(tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    text = text.replace("APIARY_NAME: hungary", "APIARY_NAME: hungary\n      APIARY_EPOCS: '3'")
    text = text.replace('command: ["found"]', 'command: ["founds"]')
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text)
    problems = all_problems(resolved(broken))
    assert any("service hungary" in p and "APIARY_EPOCS" in p for p in problems), problems
    assert any("service founder" in p and "apiary founds" in p for p in problems), problems
    assert len(problems) == 2


def test_coordinator_is_sized_and_staffed_like_the_founder() -> None:
    services = resolved(COMPOSE)["services"]
    coordinator = services["coordinator"]["environment"]
    founder = services["founder"]["environment"]
    assert int(coordinator["APIARY_PARAM_COUNT"]) == param_count_for(
        founder["APIARY_MODEL"], founder["APIARY_DATASET"])
    names = [m.split("=")[0] for m in founder["APIARY_FOUNDING_MEMBERS"].split(",")]
    assert {services[n]["environment"]["APIARY_NAME"] for n in names} == set(names)
    assert coordinator["APIARY_COORDINATOR_SWARM"] == founder["APIARY_SWARM_DIR"] == "/swarm"
    for name in names:
        node = services[name]
        assert node["environment"]["APIARY_COORDINATOR_CERT"] == "/swarm/coordinator.pem"
        assert "swarm:/swarm:ro" in node["volumes"]


def test_nodes_are_healthy_when_ready_and_the_founder_waits_for_their_apis_itself() -> None:
    services = resolved(COMPOSE)["services"]
    founder = services["founder"]
    urls = FoundingSettings.model_construct(
        founding_members=founder["environment"]["APIARY_FOUNDING_MEMBERS"]).member_urls
    assert urls == {n: f"http://{n}:8000" for n in ("cleveland", "hungary", "switzerland")}
    for name in urls:
        assert "/v1/ready" in services[name]["healthcheck"]["test"][-1], "healthy means ready"
    for name in urls:
        # A node is ready only once founded: the founder cannot wait for its health.
        assert founder["depends_on"][name]["condition"] == "service_started"
        assert "founder" not in services[name].get("depends_on", {})
    assert founder["depends_on"]["devnet"]["condition"] == "service_healthy"
    assert services["va"]["depends_on"]["cleveland"]["condition"] == "service_healthy", \
        "the newcomer starts once its sponsor is a ready member"
    assert founder["volumes"] == ["swarm:/swarm:rw"]
    assert founder["environment"]["APIARY_ADMIN"] == "cleveland"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_a_newcomer_is_checked_for_liveness_until_it_is_onboarded() -> None:
    newcomer = resolved(COMPOSE)["services"]["va"]
    assert "/v1/health" in newcomer["healthcheck"]["test"][-1]
    assert newcomer["depends_on"]["cleveland"]["condition"] == "service_healthy", \
        "a founded sponsor"


def test_the_coordinator_serves_its_metrics_on_an_exposed_port() -> None:
    coordinator = resolved(COMPOSE)["services"]["coordinator"]
    port = int(coordinator["environment"]["APIARY_COORDINATOR_METRICS_PORT"])
    assert str(port) in coordinator["expose"] and port != 9100


def test_profiles_add_the_coordinator_and_the_joining_hospital() -> None:
    services = resolved(COMPOSE)["services"]
    profiles = {name: tuple(s.get("profiles", ())) for name, s in services.items()}
    assert profiles.pop("coordinator") == ("federated",)
    assert profiles.pop("va") == profiles.pop("va-shard") == ("join",)
    assert set(profiles.values()) == {()}, "every other service runs by default"
    assert "APIARY_JOIN" not in services["va"]["environment"]


def test_the_site_bundle_reads_its_secrets_from_files_and_joins_by_invite() -> None:
    config = resolved(SITE / "docker-compose.yml", env=SITE_ENV)
    assert list(config["services"]) == ["node"], "a hospital runs its node only"
    node = config["services"]["node"]
    env = node["environment"]
    assert env["APIARY_ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token"
    assert env["APIARY_INVITE_FILE"] == "/run/secrets/invite"
    assert "APIARY_ADMIN_TOKEN" not in env and "APIARY_INVITE" not in env
    assert env["APIARY_JOIN"] == SITE_ENV["SPONSOR_URL"]
    assert env["APIARY_RPC_URL"] == SITE_ENV["CHAIN_URL"]
    assert env["APIARY_DATA"] == "/data/zurich.csv"
    assert {s["source"] if isinstance(s, dict) else s for s in node["secrets"]} == \
        {"admin_token", "invite"}
    assert set(config["secrets"]) == {"admin_token", "invite"}
    assert "127.0.0.1:8000:8000/tcp" in node["ports"], "the admin API on loopback only"
    assert "/v1/ready" in node["healthcheck"]["test"][-1]
    example = (SITE / ".env.example").read_text()
    for variable in SITE_ENV:
        assert f"\n{variable}=" in example, variable
    assert "TOKEN" not in example.replace("admin_token", ""), "no secret in .env"


def test_the_site_bundle_asks_for_what_it_needs_by_name() -> None:
    result = docker_compose(SITE / "docker-compose.yml",
                            env={k: v for k, v in SITE_ENV.items() if k != "SPONSOR_URL"})
    assert result.returncode != 0
    assert "SPONSOR_URL" in result.stderr


def test_on_one_host_the_site_node_joins_only_the_consortium_network_by_name() -> None:
    config = resolved(SITE / "docker-compose.yml", SITE / "one-host.yml",
                      env={**SITE_ENV, "CONSORTIUM_NETWORK": "test-consortium"})
    node = config["services"]["node"]
    assert set(node["networks"]) == {"default", "consortium"}
    assert node["networks"]["consortium"]["aliases"] == ["zurich"]
    assert config["networks"]["consortium"] == {"external": True, "name": "test-consortium"}
    one_host = resolved(COMPOSE, env={**ENV, "CONSORTIUM_NETWORK": "test-consortium"})
    assert one_host["networks"]["default"]["name"] == "test-consortium"


def test_the_consortium_side_runs_the_chain_and_founds_with_a_token_file() -> None:
    config = resolved(CONSORTIUM, env=CONSORTIUM_ENV)
    assert set(config["services"]) == {"devnet", "founder"}
    founder = config["services"]["founder"]["environment"]
    assert founder["APIARY_ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token"
    assert "APIARY_ADMIN_TOKEN" not in founder
    devnet = config["services"]["devnet"]
    assert devnet["environment"]["APIARY_DEVNET_STATE"].startswith("/var/lib/apiary/devnet/")
