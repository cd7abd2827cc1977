"""Check a compose file against the CLI: each command exists, each variable is a setting.

Every `APIARY_*` variable a service sets must be a field of the settings class its
`apiary` command reads; a misspelt or stale variable would otherwise be ignored silently
(the settings classes ignore unknown variables) and the container would run on defaults.
"""

from __future__ import annotations

import click
from pydantic_settings import BaseSettings

from apiary.core.settings import (
    ChainSettings,
    CoordinatorSettings,
    FoundingSettings,
    NodeSettings,
    SampleDataSettings,
)
from apiary.tools.compose.spec import ComposeProject, Service

SETTINGS_BY_COMMAND: dict[str, type[BaseSettings]] = {
    "devnet": ChainSettings,
    "found": FoundingSettings,
    "sample-data": SampleDataSettings,
    "node": NodeSettings,
    "coordinator": CoordinatorSettings,
}


def settings_variables(settings_cls: type[BaseSettings]) -> set[str]:
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in settings_cls.model_fields}


def service_problems(service: Service, app: click.Group) -> list[str]:
    where = f"service {service.name}"
    sub = service.subcommand
    if sub is None:
        return [f"{where}: command {' '.join(service.command)!r} is not an apiary command"]
    command = app.commands.get(sub)
    if command is None:
        return [f"{where}: `apiary {sub}` is not a command of the CLI"]
    problems = []
    try:
        command.make_context(sub, list(service.command[2:]), resilient_parsing=False)
    except click.ClickException as exc:
        problems.append(f"{where}: `apiary {sub}` rejects its arguments: {exc.format_message()}")
    settings_cls = SETTINGS_BY_COMMAND.get(sub)
    if settings_cls is None:
        return [*problems, f"{where}: no settings class is known for `apiary {sub}`"]
    known = settings_variables(settings_cls)
    for variable in service.environment:
        if variable.upper() not in known:
            problems.append(f"{where}: {variable} is not a setting of `apiary {sub}` "
                            f"({settings_cls.__name__} reads {', '.join(sorted(known))})")
    return problems


def project_problems(project: ComposeProject, app: click.Group) -> list[str]:
    """Every service, whatever its profile."""
    return [p for service in project.services.values() for p in service_problems(service, app)]
