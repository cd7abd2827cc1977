"""Read a compose file as docker-compose does, for the keys the local runner honours.

Variables are interpolated like docker-compose 1.29 (``$VAR``, ``${VAR}``, ``${VAR:-x}``,
``${VAR-x}``, ``${VAR:?msg}``, ``${VAR?msg}``, ``$$``) from the shell's environment over
the ``.env`` file next to the compose file. Keys that would change what runs but that the
runner does not reproduce (``entrypoint``, ``env_file``, ``working_dir``, ``extends``)
are refused rather than ignored.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apiary.core.errors import ConfigError

UNSUPPORTED = ("entrypoint", "env_file", "working_dir", "extends")
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class ComposeError(ConfigError, ValueError):
    """The compose file cannot be read or run as written."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    named: bool


@dataclass(frozen=True)
class Service:
    name: str
    command: tuple[str, ...]
    environment: dict[str, str]
    depends_on: dict[str, str]
    mounts: tuple[Mount, ...]
    healthcheck: tuple[str, ...] | None
    ports: tuple[int, ...]
    profiles: tuple[str, ...]

    @property
    def subcommand(self) -> str | None:
        """`node` for `apiary node`; None for anything that is not an apiary command."""
        if len(self.command) >= 2 and self.command[0] == "apiary":
            return self.command[1]
        return None


@dataclass(frozen=True)
class ComposeProject:
    path: Path
    services: dict[str, Service]

    def start_order(self, profiles: tuple[str, ...] = ()) -> list[str]:
        """Enabled services, each after everything it depends on."""
        enabled = [n for n, s in self.services.items()
                   if not s.profiles or set(s.profiles) & set(profiles)]
        for name in enabled:
            for dep in self.services[name].depends_on:
                if dep not in enabled:
                    raise ComposeError(f"service {name} depends on {dep}, which is not enabled "
                                       f"by the active profiles {list(profiles)}")
        order: list[str] = []
        pending = list(enabled)
        while pending:
            ready = [n for n in pending if set(self.services[n].depends_on) <= set(order)]
            if not ready:
                raise ComposeError(f"circular depends_on among {', '.join(pending)}")
            order += ready
            pending = [n for n in pending if n not in ready]
        return order


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["named"] or match["braced"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and not current)
        if op in ("-", ":-") and missing:
            return arg
        if op in ("?", ":?") and missing:
            raise ComposeError(f"required variable {name} is missing a value: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def load_project(path: Path, environ: Mapping[str, str] | None = None) -> ComposeProject:
    env = {**read_dotenv(path.parent / ".env"), **(os.environ if environ is None else environ)}
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise ComposeError(f"{path}: no services")
    data = interpolate(raw, env)
    volumes = set(data.get("volumes") or {})
    services = {name: _service(name, spec or {}, volumes, env)
                for name, spec in data["services"].items()}
    for service in services.values():
        for dep in service.depends_on:
            if dep not in services:
                raise ComposeError(f"service {service.name} depends on unknown service {dep}")
    return ComposeProject(path, services)


def _service(name: str, spec: dict[str, Any], volumes: set[str],
             env: Mapping[str, str]) -> Service:
    for key in UNSUPPORTED:
        if key in spec:
            raise ComposeError(f"service {name}: {key!r} is not supported by the local runner")
    command = spec.get("command")
    if command is None:
        raise ComposeError(f"service {name}: no command (the local runner needs one)")
    return Service(
        name=name,
        command=tuple(shlex.split(command) if isinstance(command, str) else map(str, command)),
        environment=_environment(spec.get("environment"), env),
        depends_on=_depends_on(name, spec.get("depends_on")),
        mounts=tuple(_mount(name, m, volumes) for m in spec.get("volumes") or []),
        healthcheck=_healthcheck(spec.get("healthcheck")),
        ports=_ports(name, spec.get("expose") or [], spec.get("ports") or []),
        profiles=tuple(spec.get("profiles") or ()),
    )


def _environment(spec: Any, env: Mapping[str, str]) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, list):
        pairs = [item.partition("=") for item in spec]
        spec = {k: (v if sep else None) for k, sep, v in pairs}
    out: dict[str, str] = {}
    for key, value in spec.items():
        if value is None:
            if key in env:
                out[key] = env[key]
        else:
            out[key] = str(value)
    return out


def _depends_on(name: str, spec: Any) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, list):
        return {dep: "service_started" for dep in spec}
    out = {dep: (cond or {}).get("condition", "service_started") for dep, cond in spec.items()}
    for dep, condition in out.items():
        if condition not in CONDITIONS:
            raise ComposeError(f"service {name}: unknown condition {condition!r} on {dep}")
    return out


def _mount(name: str, spec: Any, volumes: set[str]) -> Mount:
    if isinstance(spec, dict):
        source, target = str(spec.get("source", "")), str(spec["target"])
    else:
        parts = str(spec).split(":")
        if len(parts) < 2:
            raise ComposeError(f"service {name}: anonymous volume {spec!r} is not supported")
        source, target = parts[0], parts[1]
    named = not source.startswith((".", "/", "~"))
    if named and source not in volumes:
        raise ComposeError(f"service {name}: volume {source!r} is not declared under volumes:")
    return Mount(source, target.rstrip("/") or "/", named)


def _healthcheck(spec: Any) -> tuple[str, ...] | None:
    if not spec or spec.get("disable"):
        return None
    test = spec.get("test")
    if isinstance(test, str):
        return ("sh", "-c", test)
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ("sh", "-c", " ".join(test[1:]))
    if test[0] == "CMD":
        return tuple(str(a) for a in test[1:])
    raise ComposeError(f"healthcheck test must start with CMD, CMD-SHELL or NONE: {test!r}")


def _ports(name: str, expose: list[Any], published: list[Any]) -> tuple[int, ...]:
    found: list[str] = [str(p) for p in expose]
    for spec in published:
        found.append(str(spec["target"]) if isinstance(spec, dict) else str(spec).split(":")[-1])
    ports: set[int] = set()
    for item in found:
        port = item.split("/")[0]
        if not port.isdigit():
            raise ComposeError(f"service {name}: port {item!r} (ranges are not supported)")
        ports.add(int(port))
    return tuple(sorted(ports))
