"""The layout's rules (issue 12), read from the code's own imports: no import runs back up the layers of a
request's path (http -> serving -> pipeline -> upstream/embedding/bank -> config/protocol/errors -> engine),
and no import cycle between modules of app/ or bank_builder/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# a package may import only packages of a lower rank (its own modules aside)
RANK = {
    "engine": 0, "files": 0,
    "protocol": 1, "config": 1,
    "errors": 2,
    "upstream": 3,
    "embedding": 4, "bank": 4,
    "observability": 5, "pipeline": 5,
    "serving": 6,
    "http": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports at module level or inside functions (TYPE_CHECKING blocks too:
    a cycle through annotations is still a cycle a reader must untangle)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from app import engine` imports the module app.engine
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph(*roots: str) -> dict[str, set[str]]:
    files = [f for root in roots for f in (REPO / root).rglob("*.py")]
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_import_runs_back_up_the_layers() -> None:
    graph = _graph("app")
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if a != "app" and _package(a) != _package(b) and RANK[_package(b)] >= RANK[_package(a)])
    assert not upward, upward


def test_every_app_package_has_a_layer() -> None:
    packages = {_package(m) for m in _graph("app") if m != "app"}
    assert packages <= set(RANK), packages - set(RANK)


@pytest.mark.parametrize("roots", [("app",), ("app", "bank_builder", "localpool", "bench")])
def test_no_import_cycle(roots: tuple[str, ...]) -> None:
    graph = _graph(*roots)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_the_graph_holds_the_imports_the_code_has() -> None:
    """The checks above would pass on a graph that missed imports; this proves it reads both spellings."""
    graph = _graph("app")
    assert "app.engine" in graph["app.pipeline.prepare"]  # `from app import engine`
    assert any(t.startswith("app.upstream") for t in graph["app.pipeline.fanout"])
