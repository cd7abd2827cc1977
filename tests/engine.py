"""A real Docker engine for the container tests, and compose projects on it.

The engine is the one that answers `docker info`, or a dockerd this test session starts as
root (its own log file, stopped by its PID at the end). Where neither works the tests fail
with the reason: they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from apiary.core.paths import REPO_ROOT

IMAGE = "apiary:0.1.0"
ENGINE_START_S = 90.0
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "apiary"


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none could be started here."""


def _docker_answers(timeout_s: float = 20.0) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True,
                              timeout=timeout_s).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def docker_engine() -> Iterator[Path | None]:
    """An answering engine for the block; yields the log of the dockerd started here, if any."""
    if shutil.which("docker") is None:
        raise EngineUnavailable("the docker client is not installed: `make test` installs "
                                "Debian's docker.io (apt-get install docker.io docker-compose)")
    if _docker_answers():
        yield None
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise EngineUnavailable("no Docker engine answers and dockerd is not installed: "
                                "apt-get install docker.io")
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers, and starting dockerd needs root: "
                                "start it (dockerd &) or run the tests as root")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = CACHE_DIR / "dockerd.log"
    data_root = os.environ.get("APIARY_TEST_DOCKER_ROOT", "/var/lib/docker")
    with log_path.open("ab") as log:
        process = subprocess.Popen([dockerd, "--data-root", data_root], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + ENGINE_START_S
        while not _docker_answers(5.0):
            if process.poll() is not None or time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"dockerd did not start (exit {process.poll()}); last lines of "
                    f"{log_path}:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def build_image(tag: str = IMAGE) -> float:
    """`deploy/image/build.sh` (what `make image` runs); the seconds it took."""
    started = time.monotonic()
    result = subprocess.run([str(REPO_ROOT / "deploy/image/build.sh"), tag],
                            capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise AssertionError(f"make image failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started



def docker(*args: str, timeout_s: float = 120.0, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True,
                            timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@dataclass
class ComposeProject:
    """One `docker-compose -p NAME -f FILE` project with its own variables."""

    name: str
    file: Path
    env: dict[str, str]
    project_dir: Path | None = None
    profiles: tuple[str, ...] = ()
    extra_files: tuple[Path, ...] = ()
    started_at: float = field(default=0.0)

    def run(self, *args: str, timeout_s: float = 600.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        tool = shutil.which("docker-compose")
        if tool is None:
            raise EngineUnavailable("docker-compose is not installed (`make test` installs "
                                    "Debian's docker-compose)")
        base = [tool, "-p", self.name, "-f", str(self.file)]
        for extra in self.extra_files:
            base += ["-f", str(extra)]
        if self.project_dir is not None:
            base += ["--project-directory", str(self.project_dir)]
        for profile in self.profiles:
            base += ["--profile", profile]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
        result = subprocess.run([*base, *args], env={**clean, **self.env},
                                capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed:\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def up(self, *services: str) -> None:
        if not self.started_at:
            self.started_at = time.monotonic()
        self.run("up", "-d", "--no-build", *services)

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)

    def container(self, service: str) -> str:
        cid = self.run("ps", "-a", "-q", service).stdout.strip()
        if not cid:
            raise AssertionError(f"service {service} of {self.name} has no container")
        return cid.splitlines()[0]

    def state(self, service: str) -> dict[str, object]:
        state: dict[str, object] = json.loads(
            docker("inspect", "--format", "{{json .State}}", self.container(service)))
        return state

    def logs(self, service: str, tail: int = 40) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), service, check=False).stdout

    def wait_exit(self, service: str, timeout_s: float) -> int:
        """Exit code of a one-shot service; fails with its log if it runs past the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state(service)
            if state.get("Status") == "exited":
                return int(state.get("ExitCode", -1))  # type: ignore[call-overload]
            time.sleep(1.0)
        raise AssertionError(f"{service} still runs after {timeout_s:g} s:\n"
                             f"{self.logs(service)}")

    def stats(self, services: Sequence[str]) -> dict[str, str]:
        """`docker stats --no-stream` memory of each service's container."""
        ids = {self.container(s): s for s in services}
        out = docker("stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", *ids)
        usage = {}
        for line in out.splitlines():
            cid, _, mem = line.partition(" ")
            for full, service in ids.items():
                if full.startswith(cid):
                    usage[service] = mem.split(" / ")[0]
        return usage


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               explain: Callable[[], str] = lambda: "", poll_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # a node restarting answers nothing for a while
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:g} s\n{explain()}")
        time.sleep(poll_s)
