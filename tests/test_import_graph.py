"""The package's import graph: no circle between modules or packages, and every
dependency points down the layers below (config and states at the bottom, the HTTP
app and the CLI on top). Read with ast, nothing imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PKG = "llama_exporter"
ROOT = Path(__file__).resolve().parent.parent / PKG

# Lower layers first. A module may import from its own layer's package or any lower one.
# Top-level modules are their own "package" (states, atomic, redact are the bottom).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"states", "atomic", "redact", "testing", "web"}),
    frozenset({"config"}),
    frozenset({"catalog"}),
    frozenset({"memory"}),
    frozenset({"supervision"}),
    frozenset({"monitoring"}),
    frozenset({"metrics"}),
    frozenset({"requestlog"}),
    frozenset({"gateway"}),
    frozenset({"reload"}),
    frozenset({"http"}),
    frozenset({"cli"}),
    frozenset({"__init__", "__main__"}),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> Iterator[str]:
    """Every project module `path` imports, at any depth (functions too, TYPE_CHECKING too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != PKG and not node.module.startswith(PKG + "."):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if sub in known else node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PKG + "."):
                    yield alias.name


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {d for d in imports_of(p, known) if d != m and d != PKG} for m, p in mods.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(
        f"package {package!r} is in no layer: add it to LAYERS in tests/test_import_graph.py"
    )


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS, three colours)."""
    colour: dict[str, int] = {}
    for start in sorted(edges):
        if colour.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(edges.get(start, ())))]
        path = [start]
        colour[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if colour.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not colour.get(nxt):
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(edges.get(nxt, ()))))
    return None


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for mod, deps in graph().items():
        edges.setdefault(package_of(mod), set()).update(
            package_of(d) for d in deps if package_of(d) != package_of(mod)
        )
    cycle = find_cycle(edges)
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_dependencies_point_down_the_layers() -> None:
    upward = [
        f"{mod} imports {dep}"
        for mod, deps in sorted(graph().items())
        for dep in sorted(deps)
        if layer_of(package_of(dep)) > layer_of(package_of(mod))
    ]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
