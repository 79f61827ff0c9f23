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
# Libraries slow to import. A module imports them, or a project module that does, inside the
# function that needs them, so that `midprobe --help` and the light commands start fast; every
# other import sits at the top of its module.
HEAVY_LIBRARIES = frozenset({"torch", "transformers", "megatron", "datatrove", "verl", "matplotlib"})
# Modules held to a stricter rule, with why: a function-level import there is needless only when it
# would load nothing, project module or heavy library, that the module does not load already.
ENTRY_POINTS = {
    "pipelines.cli": "the `midprobe` command: each command imports inside itself what `--help` does not load, "
                     "so that --help and every command load only what they run",
}
# Function-level imports of a project module that imports nothing heavier than its importer
# does, kept in the function for another reason: (importer, imported) -> the reason.
_REAPER = "the reaper runs pipelines/processes.py as a script under `python -I`, which has no project module"
LAZY_IMPORT_REASONS: dict[tuple[str, str], str] = {
    ("pipelines.processes", "pipelines.errors"): _REAPER,
    ("pipelines.processes", "runfiles"): _REAPER,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_statements(tree: ast.AST, package: str) -> list[tuple[set[str], bool]]:
    """Per import statement of a module: the modules it names (relative imports resolved) and
    whether it runs inside a function."""
    found: list[tuple[set[str], bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            found.append(({alias.name for alias in node.names}, in_function))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append(({base} | {f"{base}.{alias.name}" for alias in node.names}, in_function))
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree, False)
    return found


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Modules named by the import statements of a module (relative imports resolved)."""
    return set().union(*(names for names, _ in _import_statements(tree, package)))


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    sources = _sources()
    return {name: {m for m in _imports(ast.parse(path.read_text(), str(path)), _package(name, path))
                   if m in sources and m != name}
            for name, path in sources.items()}


def _with_packages(name: str) -> set[str]:
    """A module and the packages above it: importing it runs their `__init__` too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _statements() -> dict[str, list[tuple[set[str], bool]]]:
    return {name: _import_statements(ast.parse(path.read_text(), str(path)), _package(name, path))
            for name, path in _sources().items()}


def loaded_on_import(statements: dict[str, list[tuple[set[str], bool]]]) -> dict[str, frozenset[str]]:
    """module -> what importing it loads through top-level imports, transitively (package
    `__init__`s included): project modules by name, libraries by their top-level package."""
    found: dict[str, frozenset[str]] = {}

    def loaded(name: str) -> frozenset[str]:
        if name not in found:
            found[name] = frozenset()  # ends the recursion on a cycle, which test_no_import_cycles refuses
            named = set().union(*(_with_packages(m) for names, in_function in statements[name]
                                  if not in_function for m in names))
            project = {m for m in named if m in statements and m != name}
            libraries = {m.split(".")[0] for m in named if m.split(".")[0] not in PACKAGES}
            found[name] = frozenset(project | libraries).union(*(loaded(m) for m in project))
        return found[name]

    return {name: loaded(name) for name in statements}


def needless_function_imports(statements: dict[str, list[tuple[set[str], bool]]]) -> list[str]:
    """`importer -> imported` for each import of a project module inside a function that would
    load no heavy library its importer does not load already (an entry point: no project module
    or heavy library it does not load already)."""
    loaded = loaded_on_import(statements)
    found = []
    for importer, module_statements in sorted(statements.items()):
        for names, in_function in module_statements:
            project = {m for name in names for m in _with_packages(name) if m in statements}
            if not in_function or not names & project or importer in ENTRY_POINTS and not project - {importer}:
                continue
            imported = max(names & project, key=len)
            pulled = project.union(*(loaded[m] for m in project))
            new = pulled - loaded[importer] - {importer}
            counted = new & (set(statements) | HEAVY_LIBRARIES) if importer in ENTRY_POINTS else new & HEAVY_LIBRARIES
            if not counted and (importer, imported) not in LAZY_IMPORT_REASONS:
                found.append(f"{importer} -> {imported}")
    return found


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


def test_function_level_imports_only_defer_heavy_libraries():
    """A project module is imported inside a function only where importing it at the top would
    import a heavy library (HEAVY_LIBRARIES) the importer does not already import, or for a
    reason listed in LAZY_IMPORT_REASONS."""
    assert needless_function_imports(_statements()) == []


def test_every_lazy_import_reason_is_still_needed():
    statements = _statements()
    lazy = {(importer, max(names & statements.keys(), key=len))
            for importer, module_statements in statements.items()
            for names, in_function in module_statements if in_function and names & statements.keys()}
    assert set(LAZY_IMPORT_REASONS) <= lazy


def test_the_checks_see_a_cycle_and_a_crossing():
    """The walker itself: a planted cycle and a stage-to-stage import are found."""
    graph = {"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": set()}
    assert cycles(graph) == [["a.x", "a.y"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import midtrain.spec\n"
                     "def f():\n    from . import reward\n    import data_recipes.calibration\n")
    assert _imports(tree, "rl_probe") == {"typing", "typing.TYPE_CHECKING", "rl_probe", "rl_probe.reward",
                                          "data_recipes.calibration"}


def test_the_check_sees_a_needless_function_import():
    """Only the import that would bring in nothing new is needless: `a.light` inside a function of
    `a.heavy` (which imports torch itself), not `a.heavy` inside a function of `a.light`."""
    statements = {
        "a": [],
        "a.light": _import_statements(ast.parse("def f():\n    from a import heavy\n"), "a"),
        "a.heavy": _import_statements(ast.parse("import torch\ndef g():\n    import a.light\n"), "a"),
    }
    assert loaded_on_import(statements) == {"a": frozenset(), "a.light": frozenset(), "a.heavy": {"torch"}}
    assert needless_function_imports(statements) == ["a.heavy -> a.light"]


def test_the_entry_point_defers_what_it_does_not_load(monkeypatch):
    """In the entry point, importing a light module it does not load is kept in the function, one it
    loads already is needless."""
    monkeypatch.setitem(ENTRY_POINTS, "a.cli", "the entry point")
    statements = {
        "a": [],
        "a.loaded": [],
        "a.other": [],
        "a.cli": _import_statements(ast.parse("import a.loaded\ndef f():\n    from a import other\n"
                                              "def g():\n    from a.loaded import x\n"), "a"),
    }
    assert needless_function_imports(statements) == ["a.cli -> a.loaded"]
