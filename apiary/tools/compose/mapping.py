"""Map a compose project onto one machine: loopback ports, directories, local commands.

See :mod:`apiary.tools.compose` for the rules; this module only applies them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from apiary.chain.devnet import free_port
from apiary.tools.compose.spec import ComposeError, ComposeProject, Service

LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]")

_HOST_PORT = re.compile(r"(?<![A-Za-z0-9_.-])(?P<host>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<port>\d{1,5})"
                        r"(?!\d)")


def local_argv(argv: tuple[str, ...]) -> list[str]:
    """The container's command run by this interpreter: `apiary …` and `python …` only."""
    if argv and argv[0] == "apiary":
        return [sys.executable, "-m", "apiary.cli", *argv[1:]]
    if argv and argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if argv and argv[0] == "sh":
        return list(argv)
    raise ComposeError(f"cannot run {argv[0] if argv else 'an empty command'!r} locally: "
                       "compose commands here are `apiary …` or `python …`")


class LocalLayout:
    """Ports and directories of every service of one run, under `run_dir`."""

    def __init__(self, project: ComposeProject, run_dir: Path) -> None:
        self.project = project
        self.run_dir = run_dir
        self.ports: dict[tuple[str, int], int] = {}
        taken: set[int] = set()
        for service in project.services.values():
            for port in service.ports:
                local = free_port()
                while local in taken:
                    local = free_port()
                taken.add(local)
                self.ports[(service.name, port)] = local

    def port(self, service: str, container_port: int) -> int:
        try:
            return self.ports[(service, container_port)]
        except KeyError:
            raise ComposeError(f"service {service} does not expose port {container_port}: "
                               "add it to its expose: list") from None

    def rewrite_hosts(self, value: str) -> str:
        """`service:port` (also inside URLs and lists) → `127.0.0.1:<mapped port>`."""

        def local(match: re.Match[str]) -> str:
            host, port = match["host"], int(match["port"])
            if host not in self.project.services:
                return match[0]
            return f"{LOOPBACK}:{self.port(host, port)}"

        return _HOST_PORT.sub(local, value)

    def environment(self, name: str) -> dict[str, str]:
        """The service's compose environment with hosts, listen ports and paths mapped."""
        service = self.project.services[name]
        root = self.root(name)
        env: dict[str, str] = {}
        for key, value in service.environment.items():
            value = self.rewrite_hosts(value)
            if key.endswith("_PORT") and value.isdigit():
                value = str(self.port(name, int(value)))
            elif key.endswith("_HOST") and value in WILDCARD_HOSTS:
                value = LOOPBACK
            elif _is_mounted_path(value, service):
                value = f"{root}{value}"
            env[key] = value
        return env

    def healthcheck(self, name: str) -> list[str] | None:
        """The healthcheck command with the service's own `localhost:port` mapped."""
        service = self.project.services[name]
        if service.healthcheck is None:
            return None
        own = re.compile(r"(?:127\.0\.0\.1|localhost):(\d{1,5})(?!\d)")
        argv = [own.sub(lambda m: f"{LOOPBACK}:{self.port(name, int(m[1]))}", arg)
                for arg in service.healthcheck]
        return local_argv(tuple(self.rewrite_hosts(arg) for arg in argv))

    def root(self, name: str) -> Path:
        return self.run_dir / "roots" / name

    def volume(self, source: str) -> Path:
        return self.run_dir / "volumes" / source

    def prepare(self, name: str) -> Path:
        """The service's root directory, its mount targets linked to the volume dirs."""
        root = self.root(name)
        root.mkdir(parents=True, exist_ok=True)
        for mount in self.project.services[name].mounts:
            if mount.named:
                source = self.volume(mount.source)
                source.mkdir(parents=True, exist_ok=True)
            else:
                source = (self.project.path.parent / mount.source).expanduser().resolve()
            link = root / mount.target.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(source, target_is_directory=source.is_dir())
        return root

    def describe(self, name: str) -> str:
        ports = [f"{p}→{LOOPBACK}:{self.ports[(name, p)]}"
                 for p in self.project.services[name].ports]
        return ", ".join(ports) or "no ports"


def _is_mounted_path(value: str, service: Service) -> bool:
    """An absolute path at, below or above one of the service's mount targets."""
    if not value.startswith("/"):
        return False
    path = value.rstrip("/") or "/"
    for mount in service.mounts:
        target = mount.target
        if path == target or path.startswith(f"{target}/") or target.startswith(f"{path}/"):
            return True
    return False
