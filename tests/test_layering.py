"""Dependencies point one way: rewards, judges <- pipelines <- trainers.

- `rewards/` (the leaf library) imports nothing from `judges/`, `pipelines/` or `trainers/`;
- `judges/` imports nothing from `pipelines/` or `trainers/` (it may use `rewards/`);
- `pipelines/` imports nothing from `trainers/`.

"Imports" means every way a module gets loaded: `import` and `from ... import` statements anywhere (inside
functions too, relative ones resolved), `importlib.import_module("...")`, `__import__("...")` and
`importlib.util.find_spec("...")` with a literal name, and the module strings of a module-level dispatch table
(a dict whose values are, or begin with, dotted names in our packages: `pipelines/cli.py` COMMANDS,
`rewards/__init__.py` _LAZY).

One exception: the entries of `COMMANDS` in `pipelines/cli.py` may name any package. The CLI is the one place
that names every command, and `prefsmith train` / `prefsmith plot` dispatch to `trainers.cli`, which is imported
only when that command runs; nothing in pipelines/ uses the trainers. Every dispatch-table string must name a
module that exists.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rewards", "judges", "pipelines", "trainers")
FORBIDDEN = {"rewards": {"judges", "pipelines", "trainers"}, "judges": {"pipelines", "trainers"},
             "pipelines": {"trainers"}, "trainers": set()}
ALLOWED_TABLES = {("pipelines/cli.py", "COMMANDS")}
_LOADERS = {"import_module", "__import__", "find_spec"}
_MODULE_STRING = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)*$")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _table_strings(node: ast.AST) -> list[str]:
    """Our module names among a dict literal's values (a value, or the first item of a tuple value)."""
    if not isinstance(node, ast.Dict):
        return []
    out = []
    for value in node.values:
        first = value.elts[0] if isinstance(value, ast.Tuple) and value.elts else value
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and _MODULE_STRING.match(first.value):
            out.append(first.value)
    return out


def module_refs(source: str, package: str) -> list[tuple[int, str, str | None]]:
    """(line, module, dispatch table name or None) for every module the code `source`, which lives in
    `package`, loads (see module docstring)."""
    tree = ast.parse(source)
    refs: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            refs += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            refs.append((node.lineno, name, None))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called in _LOADERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                refs.append((node.lineno, node.args[0].value, None))
    for node in tree.body:  # module-level dispatch tables
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for name in (t.id for t in targets if isinstance(t, ast.Name)):
                refs += [(node.lineno, module, name) for module in _table_strings(node.value)]
    return refs


def _sources() -> list[tuple[str, list[tuple[int, str, str | None]]]]:
    """(path relative to the repository, module_refs) of every module of our packages."""
    out = []
    for path in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out.append((path.relative_to(ROOT).as_posix(), module_refs(path.read_text(), package)))
    return out


def _exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_dependencies_point_one_way():
    violations = []
    for rel, refs in _sources():
        layer = rel.split("/")[0]
        for line, module, table in refs:
            target = module.split(".")[0]
            if target in FORBIDDEN[layer] and (rel, table) not in ALLOWED_TABLES:
                violations.append(f"{rel}:{line}: {layer}/ must not import {module} ({target}/ is above it)")
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_dispatch_tables_name_real_modules():
    sources = _sources()
    missing = [f"{rel}:{line}: {table} names {module!r}, which does not exist"
               for rel, refs in sources for line, module, table in refs if table and not _exists(module)]
    assert not missing, "\n".join(missing)
    commands = {m for rel, refs in sources if rel == "pipelines/cli.py" for _, m, t in refs if t == "COMMANDS"}
    assert {"pipelines.stages.generate", "trainers.cli"} <= commands  # the walk sees the CLI table


def test_the_walk_finds_every_kind_of_import():
    """The checker itself: statements at any depth, relative imports, loader calls and dispatch tables."""
    source = (
        "import os\n"
        "from .chat import is_messages\n"
        "TABLE = {'x': ('trainers.loop', 'help'), 'y': 'pipelines.cli'}\n"
        "def f():\n"
        "    import importlib\n"
        "    from pipelines.core import dataset\n"
        "    return importlib.import_module('judges.protocol')\n"
    )
    refs = set(module_refs(source, "rewards"))
    assert refs == {(1, "os", None), (2, "rewards.chat", None), (3, "trainers.loop", "TABLE"),
                    (3, "pipelines.cli", "TABLE"), (5, "importlib", None), (6, "pipelines.core", None),
                    (7, "judges.protocol", None)}
