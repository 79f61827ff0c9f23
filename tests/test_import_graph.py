"""The package boundaries of docs/ARCHITECTURE.md, checked on the source: no import cycles, and the
stage packages never import each other or `pipelines` (they talk through artifacts on disk).

Every import counts, at a module's top or inside a function, except those under
`if TYPE_CHECKING:` (annotations only, never executed).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_recipes", "midtrain", "rl_probe", "pipelines", "runfiles", "bench")
STAGE_PACKAGES = ("data_recipes", "midtrain", "rl_probe")
SHARED = ("runfiles",)  # the one package every other may import (run-file formats)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Modules named by the import statements of a module (relative imports resolved)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    sources = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in sources.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(ast.parse(path.read_text(), str(path)), package)
                       if m in sources and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_stage_packages_import_neither_each_other_nor_pipelines():
    crossing = []
    for module, imported in import_graph().items():
        top = module.split(".")[0]
        if top not in STAGE_PACKAGES:
            continue
        crossing += [f"{module} -> {m}" for m in sorted(imported)
                     if m.split(".")[0] not in (top, *SHARED)]
    assert crossing == []


def test_the_checks_see_a_cycle_and_a_crossing():
    """The walker itself: a planted cycle and a stage-to-stage import are found."""
    graph = {"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": set()}
    assert cycles(graph) == [["a.x", "a.y"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import midtrain.spec\n"
                     "def f():\n    from . import reward\n    import data_recipes.calibration\n")
    assert _imports(tree, "rl_probe") == {"typing", "typing.TYPE_CHECKING", "rl_probe", "rl_probe.reward",
                                          "data_recipes.calibration"}
