"""deploy/Dockerfile, checked without building it: pinned bases and versions, CPU torch."""

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


def test_base_images_are_pinned_to_a_patch_release() -> None:
    bases = [args.split()[0] for op, args in instructions() if op == "FROM"]
    assert bases[-1].startswith("python:3.11.") and "-slim" in bases[-1]
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-[\w-]+", base), base


def test_python_packages_come_pinned_from_the_lock_with_cpu_torch() -> None:
    runs = " ".join(args for op, args in instructions() if op == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert f"torch=={locked('torch')}" in runs
    assert "pip install --no-cache-dir -r requirements.lock" in runs
    assert "--no-deps --no-build-isolation ." in runs


def test_anvil_is_the_version_package_json_pins() -> None:
    pinned = json.loads((REPO_ROOT / "package.json").read_text())["dependencies"]
    runs = " ".join(args for op, args in instructions() if op == "RUN")
    assert f"@foundry-rs/anvil@{pinned['@foundry-rs/anvil']}" in runs


def test_it_copies_only_what_exists_and_runs_as_a_numeric_non_root_user() -> None:
    for op, args in instructions():
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (REPO_ROOT / source).exists(), source
    users = [args for op, args in instructions() if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", "node_modules", ".git"} <= set(ignored)


def test_hadolint_finds_nothing_when_installed() -> None:
    venv_bin = Path(sys.executable).parent
    tool = shutil.which("hadolint", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if tool is None:
        pytest.skip("hadolint is not installed")
    result = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
