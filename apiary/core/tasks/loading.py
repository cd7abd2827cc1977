"""Finding a task from its entry point: a built-in name, ``package.module:name``, or a file.

Entry points (``--task``):

``heart``, ``fashion`` (or the model aliases ``mlp``, ``cnn``)
    a built-in task (:mod:`apiary.core.tasks.builtin`);
``package.module:name``, ``package.module``
    attribute ``name`` (default ``task``) of an importable module;
``path/to/file.py:name``, ``path/to/file.py``
    attribute ``name`` (default ``task``) of a Python file, relative to the working directory.

The attribute is a task object, or a class whose no-argument instance is one. Every
failure is a :class:`TaskLoadError` that says what to change.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from apiary.core.errors import ConfigError
from apiary.core.tasks.builtin import BUILTIN_TASKS, MODEL_ALIASES, builtin_task
from apiary.core.tasks.protocol import Task

__all__ = ["DEFAULT_ATTRIBUTE", "NotATask", "TaskLoadError", "TaskNotFound", "load_task"]

DEFAULT_ATTRIBUTE = "task"
_FORMS = ("a built-in task (" + ", ".join([*BUILTIN_TASKS, *MODEL_ALIASES]) + "), "
          "package.module:name, or path/to/file.py[:name]")


class TaskLoadError(ConfigError):
    """The task's entry point cannot be loaded; the message says what to change."""


class TaskNotFound(TaskLoadError):
    """No such module, file or attribute."""


class NotATask(TaskLoadError):
    """The entry point names an object that is no task."""


def load_task(entry: str) -> Task:
    """The task ``entry`` names (see the module docstring)."""
    entry = entry.strip()
    if not entry:
        raise TaskNotFound(f"no task given: set --task to {_FORMS}")
    builtin = builtin_task(entry)
    if builtin is not None:
        return builtin
    target, _, attribute = entry.rpartition(":") if ":" in entry else (entry, "", "")
    attribute = attribute or DEFAULT_ATTRIBUTE
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target), entry)
    else:
        module = _import_module(target, entry)
    if not hasattr(module, attribute):
        raise TaskNotFound(f"task {entry!r}: {target} has no attribute {attribute!r}; name "
                           f"the task object as {target}:NAME")
    return _as_task(getattr(module, attribute), entry)


def _import_module(name: str, entry: str) -> ModuleType:
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise TaskNotFound(f"task {entry!r} is none of {_FORMS}")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise TaskNotFound(f"task {entry!r}: no module named {exc.name!r}; install the package "
                           "that holds the task, or give a path to its .py file") from None
    except Exception as exc:
        raise TaskLoadError(f"task {entry!r}: importing {name} failed "
                            f"({type(exc).__name__}: {exc}); fix the module") from None


def _import_file(path: Path, entry: str) -> ModuleType:
    if path.suffix != ".py":
        raise TaskNotFound(f"task {entry!r}: {path} is not a .py file; give "
                           "path/to/file.py[:name]")
    if not path.is_file():
        raise TaskNotFound(f"task {entry!r}: no task file {path} (looked in {Path.cwd()}); "
                           "check the path")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"apiary_task_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise TaskLoadError(f"task {entry!r}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise TaskLoadError(f"task {entry!r}: running {path} failed "
                            f"({type(exc).__name__}: {exc}); fix the file") from None
    return module


def _as_task(value: object, entry: str) -> Task:
    if isinstance(value, type):
        try:
            value = value()
        except Exception as exc:
            raise NotATask(f"task {entry!r}: the class {value.__name__} cannot be made "
                           f"without arguments ({type(exc).__name__}: {exc}); name an "
                           "instance of it instead") from None
    missing = [part for part in ("name", "version", "load_data", "build_model", "train",
                                 "evaluate") if not hasattr(value, part)]
    if missing or not isinstance(value, Task):
        raise NotATask(f"task {entry!r} is a {type(value).__name__}, not a task: it lacks "
                       f"{', '.join(missing)} (subclass apiary.core.tasks.TaskBase)")
    for field in ("name", "version"):
        given = getattr(value, field)
        if not isinstance(given, str) or not given.strip():
            raise NotATask(f"task {entry!r}: its {field} is {given!r}; give it a non-empty "
                           "string")
    return value
