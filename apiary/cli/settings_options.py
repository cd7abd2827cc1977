"""Build a CLI command whose flags are exactly a settings class's fields.

Every field becomes ``--field-name`` with its description, its environment variable and
its default in ``--help``; a flag left out falls back to the environment, then the default.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from apiary.core.settings import ApiarySettings


def _click_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    if annotation is bool:
        return click.BOOL
    if annotation is int:
        return click.INT
    if annotation is float:
        return click.FLOAT
    if annotation is Path:
        return click.Path(path_type=Path)
    return click.STRING


def settings_command(
    name: str,
    settings_cls: type[ApiarySettings],
    run: Callable[[Any], None],
    help_text: str,
) -> click.Command:
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    params: list[click.Parameter] = []
    for field_name, field in settings_cls.model_fields.items():
        env = f"{prefix}{field_name}".upper()
        default = field.default
        shown = "" if default is None else f"; default {default}"
        params.append(
            click.Option(
                [f"--{field_name.replace('_', '-')}"],
                type=_click_type(field.annotation),
                default=None,
                help=f"{field.description or field_name} [env {env}{shown}]",
            )
        )

    def invoke(**flags: Any) -> None:
        run(settings_cls.load(**flags))

    return click.Command(name, params=params, callback=invoke, help=help_text)
