"""`--env` specs -> environments, and the identity a resumed run compares (docs/environments.md).

A spec is a built-in (`BUILTINS`: `python`, `tools:FILE.py`), else a class (or any callable returning an
environment) named `module:Class` (importable; the current directory is on the path) or `path/to/file.py:Class`.
It is called with the `--env-option KEY=VALUE` options as keywords. A built-in name wins over a module of the
same name; use the file form for such a module. Anything that cannot load raises `EnvSpecError`, one line
naming the spec and what to do, before any work (the built-ins also open their sandbox here).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from pipelines.envs.base import EnvSpecError, Environment
from pipelines.envs.python_env import PythonEnv
from pipelines.envs.tools_env import ToolsEnv

FORMS = "a built-in (python, tools:FILE.py) or a class as module:Class or path/to/file.py:Class"


def _python(arg: str, spec: str, options: dict) -> Environment:
    if arg:
        raise EnvSpecError(f"env {spec!r}: `python` takes no argument; set options with --env-option KEY=VALUE")
    return _opened(construct(PythonEnv, spec, options), spec)


def _tools(arg: str, spec: str, options: dict) -> Environment:
    if not arg:
        raise EnvSpecError(f"env {spec!r}: name the file whose functions are the tools: tools:path/to/tools.py")
    return _opened(construct(ToolsEnv, spec, options, arg), spec)


BUILTINS: dict[str, Callable[[str, str, dict], Environment]] = {
    "python": _python,
    "tools": _tools,
}


def _opened(env, spec: str):
    """A built-in with its sandbox open: a machine where it cannot start fails now, not in the first step."""
    from rewards.sandbox import SandboxUnavailable

    try:
        env.open()
    except SandboxUnavailable as e:
        raise EnvSpecError(f"env {spec!r}: {e}") from None
    return env


def load_env(spec: str, options: dict[str, Any] | None = None) -> Environment:
    """An `--env` spec (module docstring) and its options -> the environment, or EnvSpecError."""
    options = dict(options or {})
    head, _, arg = spec.partition(":")
    if head in BUILTINS:
        return BUILTINS[head](arg, spec, options)
    env = construct(load_class(spec), spec, options)
    missing = [a for a in ("name", "stop", "tools") if not hasattr(env, a)]
    missing += [m for m in ("reset", "step") if not callable(getattr(env, m, None))]
    if missing:
        raise EnvSpecError(f"env {spec!r}: {type(env).__name__} lacks {', '.join(missing)}; an environment has "
                           "name, stop, tools, reset(row) and step(turn, state) (docs/environments.md)")
    if not isinstance(env.stop, (tuple, list)) or not all(isinstance(s, str) and s for s in env.stop):
        raise EnvSpecError(f"env {spec!r}: stop must be a tuple of non-empty strings, got {env.stop!r}")
    return env


def load_class(spec: str) -> Callable:
    """`module:Class` or `path/to/file.py:Class` -> the class (EnvSpecError naming what is missing)."""
    from rewards.plugins import RewardSpecError, import_plugin_module, load_file_module

    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise EnvSpecError(f"env {spec!r}: name {FORMS}")
    try:
        if target.endswith(".py") or "/" in target or os.sep in target:
            path = Path(target).expanduser()
            if not path.is_file():
                raise EnvSpecError(f"env {spec!r}: file {target} not found")
            module = load_file_module(path)
        else:
            module = import_plugin_module(target, what="env", form="path/to/file.py:Class")
    except RewardSpecError as e:
        raise EnvSpecError(f"env {spec!r}: {e}") from None
    cls = getattr(module, name, None)
    if cls is None:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and not k.startswith("_")
                       and v.__module__ == module.__name__)
        raise EnvSpecError(f"env {spec!r}: {target} has no {name!r}"
                           + (f" (it defines {', '.join(found)})" if found else ""))
    if not callable(cls):
        raise EnvSpecError(f"env {spec!r}: {name} is a {type(cls).__name__}, not a class")
    return cls


def construct(cls: Callable, spec: str, options: dict, *args: Any) -> Any:
    """`cls(*args, **options)`, with an option it does not take, or a failing constructor, as EnvSpecError."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **options)
        except TypeError as e:
            takes = [p.name for p in signature.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            takes = takes[len(args):]
            raise EnvSpecError(f"env {spec!r}: {e}; its options are {', '.join(takes) or 'none'} "
                               "(--env-option KEY=VALUE)") from None
    try:
        return cls(*args, **options)
    except EnvSpecError:
        raise
    except Exception as e:
        raise EnvSpecError(f"env {spec!r}: setting it up failed: {type(e).__name__}: {e}") from None


def env_fingerprint(spec: str, options: dict[str, Any] | None = None) -> str:
    """What a resumed run compares: the spec, the options and the content of the file behind it (a tools file, the
    file defining a plug-in class; the built-ins' own code is the package's version)."""
    from pipelines.core.files import fingerprint_files, fingerprint_json

    head, _, arg = spec.partition(":")
    if head == "tools":
        source = arg
    elif head in BUILTINS:
        source = None
    else:
        try:
            source = inspect.getsourcefile(load_class(spec))
        except TypeError:  # a class defined in no file
            source = None
    files = fingerprint_files([source]) if source and Path(source).is_file() else None
    return fingerprint_json({"spec": spec, "options": dict(options or {}), "source": files})
