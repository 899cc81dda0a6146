"""The package's shape: three layers whose imports only point down, no cycle, no hidden import.

Library (every module outside ``kdistill.experiment`` and ``kdistill.report``) <- report <- experiment <- CLI.
Read from the source with ``ast``, imports inside functions included, so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kdistill"
TOP = ("kdistill.cli", "kdistill.__main__", "kdistill")  # the entry points and the package's facade


def _modules() -> dict[str, Path]:
    mods = {}
    for p in SRC.rglob("*.py"):
        name = ".".join(p.relative_to(SRC.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str], bool]]:
    """``(module, names, inside a function)`` for every kdistill import of module ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                if base == "kdistill" or base.startswith("kdistill."):
                    out.append((base, [a.name for a in child.names], inside))
            elif isinstance(child, ast.Import):
                out.extend((a.name, [], inside) for a in child.names if a.name.startswith("kdistill"))
            visit(child, inside)

    visit(tree, False)
    return out


def _layer(name: str) -> int:
    if name in TOP:
        return 3
    if name.startswith("kdistill.experiment"):
        return 2
    if name.startswith("kdistill.report"):
        return 1
    return 0


def _target(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: ``from kdistill.data import x`` -> kdistill.data (or kdistill.data.x)."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or ([module] if module in MODULES else [])


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for module, names, _ in _imports(m):
            for t in _target(module, names):
                # A package's __init__ re-exports its children: that is not a dependency on them.
                if t != m and not (MODULES[m].name == "__init__.py" and t.startswith(m + ".")):
                    edges[m].add(t)
    return edges


def test_imports_only_point_down() -> None:
    upward = [(m, t) for m, ts in _edges().items() for t in ts if _layer(t) > _layer(m)]
    assert not upward, f"imports that climb a layer: {upward}"


def test_report_never_imports_the_experiment_or_its_roles() -> None:
    bad = [(m, t) for m, ts in _edges().items() if _layer(m) == 1 for t in ts if t.startswith("kdistill.experiment")]
    assert not bad


def test_no_import_cycle() -> None:
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_hidden_or_private_imports(name: str) -> None:
    """No kdistill import inside a function (a dodged cycle) and no ``_private`` name from another module."""
    for module, names, inside in _imports(name):
        assert not inside, f"{name} imports {module} inside a function"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{name} imports private names {private} from {module}"


def test_no_formatter_escapes() -> None:
    """ruff formats all of it: no ``# fmt: skip`` / ``fmt: off`` blocks."""
    found = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "fmt: skip" in p.read_text() or "fmt: off" in p.read_text()
    ]
    assert not found


def test_the_walk_sees_the_layers() -> None:
    """The checks above are only worth something if the walk finds real edges in every layer."""
    edges = _edges()
    assert "kdistill.trainer" in edges["kdistill.experiment.train"]
    assert "kdistill.report.summary" in edges["kdistill.experiment.run"]
    assert "kdistill.metrics" in edges["kdistill.report.html"]
    assert {_layer(m) for m in MODULES} == {0, 1, 2, 3}
