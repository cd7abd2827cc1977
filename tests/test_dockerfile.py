"""deploy/Dockerfile, checked without building it (tests/test_compose_engine.py builds
it): no registry in the build, runtime wheels only, a non-root user, a ready healthcheck."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apiary.core.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def locked(name: str) -> str:
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1].split()[0]
    raise AssertionError(f"{name} is not in requirements.lock")


def test_the_base_is_a_build_argument_defaulting_to_the_official_slim_python() -> None:
    args = [a for op, a in instructions() if op == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim" in args
    bases = [a.split()[0] for op, a in instructions() if op == "FROM"]
    assert bases == ["${BASE_IMAGE}", "${BASE_IMAGE}"], "no other image is pulled"


def test_runtime_packages_come_from_the_wheelhouse_only_with_hashes() -> None:
    runs = " ".join(args for op, args in instructions() if op == "RUN")
    assert "--no-index --find-links /opt/apiary-build/wheelhouse" in runs
    assert "-r /opt/apiary-build/requirements.lock" in runs
    assert "requirements-dev.lock" not in DOCKERFILE.read_text()
    assert "--no-index --no-deps /opt/apiary-dist/*.whl" in runs
    assert "--index-url" not in runs and "npm" not in runs, "the build reaches no registry"
    lock = (REPO_ROOT / "requirements.lock").read_text()
    assert f"torch=={locked('torch')}" in lock and "--hash=sha256:" in lock
    for dev_tool in ("pytest", "ruff", "hadolint", "playwright"):
        assert f"\n{dev_tool}==" not in lock, dev_tool


def test_image_build_stages_the_pinned_anvil_from_node_modules() -> None:
    script = (REPO_ROOT / "deploy/image/build.sh").read_text()
    assert "node_modules/@foundry-rs/anvil-linux-" in script
    assert "DOCKER_BUILDKIT=0" in script
    lock = json.loads((REPO_ROOT / "package-lock.json").read_text())["packages"]
    pinned = json.loads((REPO_ROOT / "package.json").read_text())["dependencies"]
    assert lock["node_modules/@foundry-rs/anvil"]["version"] == pinned["@foundry-rs/anvil"]


def test_package_lock_holds_every_platform_package_of_anvil() -> None:
    packages = json.loads((REPO_ROOT / "package-lock.json").read_text())["packages"]
    wanted = packages["node_modules/@foundry-rs/anvil"]["optionalDependencies"]
    for name, version in wanted.items():
        assert packages[f"node_modules/{name}"]["version"] == version, name


def test_it_runs_apiary_as_a_numeric_non_root_user_with_labels_and_readiness() -> None:
    ops = instructions()
    for op, args in ops:
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source == "requirements.lock" or source.startswith("build/image/")
    users = [args for op, args in ops if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    assert [args for op, args in ops if op == "ENTRYPOINT"] == ['["apiary"]']
    health = [args for op, args in ops if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/v1/ready" in health[0]
    labels = " ".join(args for op, args in ops if op == "LABEL")
    for key in ("title", "version", "revision", "created", "licenses", "description"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ignored[0] == "*", "the context is only what is let in"
    assert {"!requirements.lock", "!build/image/wheelhouse", "!build/image/anvil"} <= set(ignored)


def test_hadolint_finds_nothing_when_installed() -> None:
    venv_bin = Path(sys.executable).parent
    tool = shutil.which("hadolint", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if tool is None:
        pytest.skip("hadolint is not installed")
    result = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
