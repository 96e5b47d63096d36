"""The package's import graph has no cycles, so the pipeline reads one way.

spec → draw → drivers (sim/, live/) → records → verdicts → reports → cli: a module may import
what comes before it, never what comes after. A cycle is how that order erodes (and how a
module ends up importable only in one order), so this test names the first cycle it finds.

Rules, as Python itself resolves imports:
- ``import a.b`` depends on ``a.b``; ``from a import b`` depends on ``a.b`` when that is a
  module, else on ``a`` (``b`` is a name defined there);
- relative imports resolve against the importing module's package;
- imports under ``if TYPE_CHECKING:`` never run, so they are left out. Imports inside functions
  do run (later), and an import cycle through them is still a cycle of the design, so they count.
- A parent package is not an edge: ``import a.b`` runs ``a/__init__`` first, but a package that
  re-exports its modules (``testbed.spec``) would otherwise look like a cycle with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "testbed"


def module_names(root: Path = ROOT / PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def dependencies(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``module`` imports."""
    deps: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                package = _package_of(module, path).split(".")
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        deps.update(t for t in targets if t in modules and t != module)
    return deps


def import_graph() -> nx.DiGraph:
    names = module_names()
    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    for module, path in names.items():
        graph.add_edges_from((module, dep) for dep in dependencies(module, path, set(names)))
    return graph


def test_no_import_cycles() -> None:
    graph = import_graph()
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    raise AssertionError("import cycle: " + " -> ".join([a for a, _ in cycle] + [cycle[-1][1]]))


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The rules above on a small package: absolute, from-module, from-name, relative, TYPE_CHECKING."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import pkg.b\nfrom pkg import c\nfrom pkg.sub import thing\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
        "c.py": "def f():\n    from .sub import leaf\n",
        "sub/__init__.py": "thing = 1\n",
        "sub/leaf.py": "from .. import a\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    names = module_names(pkg)
    deps = {m: dependencies(m, p, set(names)) for m, p in names.items()}
    assert deps["pkg.a"] == {"pkg.b", "pkg.c", "pkg.sub"}
    assert deps["pkg.b"] == set()  # only under TYPE_CHECKING
    assert deps["pkg.c"] == {"pkg.sub.leaf"}
    assert deps["pkg.sub.leaf"] == {"pkg.a"}  # `from .. import a`: a module of the parent package
