"""Run a compose project's services as local processes, honouring `depends_on` conditions."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apiary.core.processes import stop_processes
from apiary.core.rundirs import clear_run_directory
from apiary.core.settings import NodeSettings
from apiary.tools.compose.mapping import LocalLayout, local_argv
from apiary.tools.compose.spec import ComposeError, ComposeProject
from apiary.tools.demo import DemoFailed, NodeProcess

HEALTH_POLL_S = 0.5
STOP_GRACE_S = 20.0


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    healthy: bool = False
    checked_at: float = 0.0


class ComposeRun:
    """The enabled services of a project, started in dependency order, stopped together."""

    def __init__(self, project: ComposeProject, profiles: tuple[str, ...], run_dir: Path,
                 emit: Callable[[str], None]) -> None:
        self.project = project
        self.order = project.start_order(profiles)
        self.layout = LocalLayout(project, _fresh_run_dir(run_dir))
        self.emit = emit
        self.started: dict[str, Started] = {}

    def __enter__(self) -> ComposeRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def up(self, timeout_s: float = 180.0) -> None:
        """Start every service once its dependencies meet their conditions, then wait until
        every service with a healthcheck passes it (as `docker compose up --wait`)."""
        deadline = time.monotonic() + timeout_s
        pending = [n for n in self.order if n not in self.started]
        while True:
            for name in list(pending):
                if all(self._met(dep, cond) for dep, cond in
                       self.project.services[name].depends_on.items()):
                    self._start(name)
                    pending.remove(name)
            checked = [n for n in self.started if self.project.services[n].healthcheck]
            unhealthy = [n for n in checked if not self._met(n, "service_healthy")]
            if not pending and not unhealthy:
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"compose services not up within {timeout_s:g} s: "
                                 f"{', '.join(pending + unhealthy)}")
            time.sleep(0.1)

    def wait_completed(self, name: str, timeout_s: float = 300.0) -> None:
        """Wait for a one-shot service to exit 0 (as `service_completed_successfully`)."""
        deadline = time.monotonic() + timeout_s
        while not self._met(name, "service_completed_successfully"):
            if time.monotonic() > deadline:
                raise DemoFailed(f"service {name} did not finish within {timeout_s:g} s")
            time.sleep(0.2)

    def nodes(self) -> list[NodeProcess]:
        """The `apiary node` services, as the demo's round follower sees them."""
        nodes = []
        defaults = NodeSettings.model_fields
        for name, started in self.started.items():
            if self.project.services[name].subcommand != "node":
                continue
            env = self.layout.environment(name)
            port = int(env.get("APIARY_API_PORT", defaults["api_port"].default))
            state = Path(env.get("APIARY_STATE_DIR", str(defaults["state_dir"].default)))
            nodes.append(NodeProcess(name, f"http://127.0.0.1:{port}", started.process,
                                     started.log_path, self.layout.root(name) / state))
        return nodes

    def admin_token(self, nodes: list[NodeProcess]) -> str:
        tokens = {self.layout.environment(n.name).get("APIARY_ADMIN_TOKEN") for n in nodes}
        if len(tokens) != 1 or None in tokens:
            raise DemoFailed("the node services must share one APIARY_ADMIN_TOKEN to be followed")
        return str(tokens.pop())

    def stop(self) -> None:
        """Every service's process group, dependents first (as `docker compose down`)."""
        stop_processes([s.process for s in reversed(self.started.values())], STOP_GRACE_S,
                       group=True)

    def _start(self, name: str) -> None:
        service = self.project.services[name]
        root = self.layout.prepare(name)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
        env = {**inherited, **self.layout.environment(name), "PYTHONUNBUFFERED": "1"}
        log_path = self.layout.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(local_argv(service.command), cwd=root, env=env,
                                       stdout=log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.started[name] = Started(name, process, log_path)
        self.emit(f"started {name}: {' '.join(service.command)} ({self.layout.describe(name)})")

    def _met(self, name: str, condition: str) -> bool:
        started = self.started.get(name)
        if started is None:
            return False
        code = started.process.poll()
        if code not in (None, 0):
            raise DemoFailed(f"service {name} exited with {code}:\n{_tail(started.log_path)}")
        if condition == "service_completed_successfully":
            return code == 0
        if condition == "service_healthy":
            return self._healthy(started)
        return True

    def _healthy(self, started: Started) -> bool:
        argv = self.layout.healthcheck(started.name)
        if argv is None:
            raise ComposeError(f"service {started.name} has no healthcheck to wait for")
        now = time.monotonic()
        if not started.healthy and now - started.checked_at >= HEALTH_POLL_S:
            started.checked_at = now
            env = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
            with contextlib.suppress(subprocess.TimeoutExpired):
                check = subprocess.run(argv, env=env, capture_output=True, timeout=10)
                if check.returncode == 0:
                    started.healthy = True
                    self.emit(f"{started.name} is healthy")
        return started.healthy


def _fresh_run_dir(run_dir: Path) -> Path:
    """Volumes start empty, as on a new Docker host: a previous run's files are replaced
    (in a directory an earlier compose demo made, never in any other)."""
    return clear_run_directory(run_dir, "apiary demo --compose")


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
    return "\n".join(f"    {line}" for line in text)
