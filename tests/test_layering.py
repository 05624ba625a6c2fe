"""Dependencies point one way: rewards, judges <- pipelines <- trainers <- prefsmith (the Python API).

- `rewards/` (the leaf library) imports nothing from `judges/`, `pipelines/` or `trainers/`;
- `judges/` imports nothing from `pipelines/` or `trainers/` (it may use `rewards/`);
- `pipelines/` imports nothing from `trainers/`;
- nothing imports `prefsmith/`, the Python API over every command (it may use all of them).

"Imports" means every way a module gets loaded: `import` and `from ... import` statements anywhere (inside
functions too, relative ones resolved), `importlib.import_module("...")`, `__import__("...")` and
`importlib.util.find_spec("...")` with a literal name, and the module strings of a module-level dispatch table
(a dict whose values are, or begin with, dotted names in our packages: `pipelines/cli.py` COMMANDS,
`rewards/__init__.py` _LAZY).

One exception: the entries of `COMMANDS` in `pipelines/cli.py` may name any package. The CLI is the one place
that names every command, and `prefsmith train` / `prefsmith plot` dispatch to `trainers.cli`, which is imported
only when that command runs; nothing in pipelines/ uses the trainers. Every dispatch-table string must name a
module that exists.

No cycles: the modules of our packages, joined by the same imports, form no loop (`a -> b -> a`), so each one can
be read, tested and loaded on the modules below it alone. An import inside a function or under `if TYPE_CHECKING:`
is an edge too: deferring a loop does not remove it. The graph (`import_graph`) is built this way:

- a node is a module; a package's `__init__.py` is the node named by the package (`pipelines.executors`);
- `import a.b` is an edge to `a.b`; `from a import x` is an edge to `a.x` when that is a module, else to `a` (the
  name lives in `a/__init__.py` or in `a.py`); `from . import x` resolves the same way from the package;
- importing `a.b` adds no edge to the package `a`, although Python runs `a/__init__.py` first: a package that
  re-exports its own submodules (`rewards/__init__.py`, `pipelines/executors/__init__.py`) would otherwise be a
  loop by construction, and Python loads that order fine. A submodule that needs a *name* from its package's
  `__init__` (`from a import x`) while that `__init__` needs the submodule is a real loop, and is an edge;
- dispatch-table strings are edges (`rewards/__init__.py` _LAZY), except `COMMANDS` in `pipelines/cli.py`: the CLI
  is the root that names every command and imports one only when it runs, and `prefsmith run` (pipelines.pipeline)
  dispatches back through it by design. The CLI's own import statements are edges like any other;
- imports of modules outside our packages (torch, the standard library) are not nodes.
"""
from __future__ import annotations

import ast
import re
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rewards", "judges", "pipelines", "trainers", "prefsmith")
FORBIDDEN = {"rewards": {"judges", "pipelines", "trainers", "prefsmith"},
             "judges": {"pipelines", "trainers", "prefsmith"},
             "pipelines": {"trainers", "prefsmith"}, "trainers": {"prefsmith"}, "prefsmith": set()}
ALLOWED_TABLES = {("pipelines/cli.py", "COMMANDS")}
LAZY_TABLES = {("pipelines/cli.py", "COMMANDS")}  # dispatch that is no edge of the import graph (docstring)
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
    return [(line, module, table) for line, module, table, _ in _refs(source, package)]


def _refs(source: str, package: str) -> list[tuple[int, str, str | None, tuple[str, ...]]]:
    """module_refs, each with the names a `from module import ...` takes (empty for every other kind)."""
    tree = ast.parse(source)
    refs: list[tuple[int, str, str | None, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            refs += [(node.lineno, alias.name, None, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            refs.append((node.lineno, name, None, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called in _LOADERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                refs.append((node.lineno, node.args[0].value, None, ()))
    for node in tree.body:  # module-level dispatch tables
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for name in (t.id for t in targets if isinstance(t, ast.Name)):
                refs += [(node.lineno, module, name, ()) for module in _table_strings(node.value)]
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


Graph = dict[str, dict[str, list[str]]]  # module -> module it imports -> ["path:line", ...] of those imports


def import_graph() -> Graph:
    """The import graph of our packages' modules (module docstring: what is a node and what is an edge)."""
    graph: Graph = {}
    for path in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")):
        name, rel = _module_name(path), path.relative_to(ROOT).as_posix()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for line, module, table, names in sorted(_refs(path.read_text(), package), key=lambda ref: ref[0]):
            if module.split(".")[0] not in PACKAGES or (rel, table) in LAZY_TABLES:
                continue
            targets = {f"{module}.{n}" if _exists(f"{module}.{n}") else module for n in names} or {module}
            for target in targets - {name}:
                where = edges.setdefault(target, [])
                if f"{rel}:{line}" not in where:
                    where.append(f"{rel}:{line}")
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """Loops of `graph`, each as [a, b, ..., a]: within every strongly connected component, the shortest loop
    through each of its modules (so every module on a loop is named, and a tangle does not list every path)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            top = stack.index(v)
            components.append(set(stack[top:]))
            del stack[top:]

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for component in (c for c in components if len(c) > 1):
        for start in sorted(component):
            came_from: dict[str, str] = {}
            queue = deque([start])
            while queue and start not in came_from:
                v = queue.popleft()
                for w in sorted(graph.get(v, {})):
                    if w in component and w not in came_from:
                        came_from[w] = v
                        queue.append(w)
            path = [start]
            while path[-1] != start or len(path) == 1:
                path.append(came_from[path[-1]])
            loop = path[::-1][:-1]  # start, ..., the module that imports start
            i = loop.index(min(loop))
            key = tuple(loop[i:] + loop[:i])
            if key not in seen:
                seen.add(key)
                cycles.append([*key, key[0]])
    return cycles


def describe_cycle(graph: Graph, cycle: list[str]) -> str:
    """`a -> b -> a`, then each edge with the file:line of its imports."""
    lines = [" -> ".join(cycle)]
    lines += [f"    {a} -> {b}: {', '.join(graph[a][b])}" for a, b in zip(cycle, cycle[1:])]
    return "\n".join(lines)


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
        "TABLE = {'x': ('trainers.offline.loop', 'help'), 'y': 'pipelines.cli'}\n"
        "def f():\n"
        "    import importlib\n"
        "    from pipelines.core import dataset\n"
        "    return importlib.import_module('judges.protocol')\n"
    )
    refs = set(module_refs(source, "rewards"))
    assert refs == {(1, "os", None), (2, "rewards.chat", None), (3, "trainers.offline.loop", "TABLE"),
                    (3, "pipelines.cli", "TABLE"), (5, "importlib", None), (6, "pipelines.core", None),
                    (7, "judges.protocol", None)}


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(graph, c) for c in cycles)


def test_the_graph_resolves_names_and_finds_loops():
    """The graph itself: `from pkg import module` is an edge to the module, `from pkg import name` one to pkg; the
    CLI table is no edge; a loop is reported as a chain with the line of each edge."""
    graph = import_graph()
    assert "pipelines.core.dataset" in graph["pipelines.core.runner"]  # from pipelines.core import dataset as ds
    assert "pipelines.core" not in graph["pipelines.core.runner"]
    assert "pipelines.errors" in graph["pipelines.executors"]  # from pipelines.errors import UserError
    assert "rewards.math" in graph["rewards"]  # the _LAZY table
    assert not any(m.startswith("trainers") for m in graph["pipelines.cli"])  # COMMANDS: lazy dispatch
    toy = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:2"], "a": ["b.py:9"]}, "c": {"a": ["c.py:3"]},
           "d": {"a": ["d.py:4"]}}  # d imports a loop's module but is on none
    assert find_cycles(toy) == [["a", "b", "a"], ["a", "b", "c", "a"]]
    assert describe_cycle(toy, ["a", "b", "a"]) == "a -> b -> a\n    a -> b: a.py:1\n    b -> a: b.py:9"
    assert find_cycles({"a": {"b": ["a.py:1"]}, "b": {}}) == []
