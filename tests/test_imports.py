"""The import graph of factory/: no cycle, and subpackages import only downward (config is a leaf under them all).

Every import counts, function-level ones too: a cycle through a deferred import still means neither module can be
understood (or moved) without the other. Only `if TYPE_CHECKING:` blocks are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "factory"

# Lower imports nothing from higher. Modules at the package root not named here (logs, determinism) are rank 1.
RANKS = {
    "factory.errors": 0,
    "factory.modes": 0,
    "factory.config": 2,
    "factory.io": 3,
    "factory.inputs": 4,
    "factory.quality": 4,
    "factory.generation": 5,
    "factory.training": 6,
    "factory.review": 6,
    "factory.ops": 6,  # metrics, lineage, report: called by job/run (and the CLI), over config and io
    "factory.job": 7,
    "factory.tools": 8,
    "factory.cli": 9,
}
# io/paths imports nothing from factory: the naming rules (image paths, URI or local path) that config resolves with.
LEAVES = {"factory.io.paths"}


def module_names(root: Path) -> dict[str, Path]:
    """`factory.io.layout` -> its file, for every module and package under `root`."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool, known: set[str]) -> None:
        self.name, self.is_package, self.known = name, is_package, known
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            here = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            here = here[: len(here) - node.level + 1]
            base = ".".join(here + ([node.module] if node.module else []))
        for alias in node.names:  # `from factory.io import layout` imports the module factory.io.layout
            full = f"{base}.{alias.name}"
            self._add(full if full in self.known else base)

    def _add(self, name: str) -> None:
        while name and name not in self.known:  # `import factory.io.layout as x` -> the longest known prefix
            name = name.rpartition(".")[0]
        if name and name != self.name:
            self.found.add(name)


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_names(root)
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", set(modules))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        graph[name] = visitor.found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def rank(module: str) -> int:
    if module in LEAVES:
        return 0
    for prefix, r in RANKS.items():
        if module == prefix or module.startswith(prefix + "."):
            return r
    return 1


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    def package(m: str) -> str:
        return ".".join(m.split(".")[:2])

    return sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if package(m) != package(d) and rank(d) >= rank(m) and m not in LEAVES
    )


def test_factory_has_no_import_cycle() -> None:
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles in factory/: " + "; ".join(" <-> ".join(g) for g in found)


def test_subpackages_import_only_downward() -> None:
    assert upward_imports(import_graph(PACKAGE)) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_see_deferred_imports_and_skip_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "factory"
    _write(
        pkg,
        {
            "__init__.py": "",
            "config.py": "def validate():\n    from factory.generation import executors\n",
            "generation/__init__.py": "",
            "generation/executors.py": "from factory.config import X\n",
            "io/__init__.py": "",
            "io/layout.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from factory.job import run\n",
            "job/__init__.py": "",
            "job/run.py": "from ..io import layout\nimport factory.generation.executors as e\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["factory.job.run"] == {"factory.io.layout", "factory.generation.executors"}
    assert graph["factory.io.layout"] == set()  # TYPE_CHECKING only
    assert cycles(graph) == [["factory.config", "factory.generation.executors"]]
    assert upward_imports(graph) == ["factory.config -> factory.generation.executors"]


@pytest.mark.parametrize("module", ["factory.modes", "factory.errors"])
def test_leaves_import_nothing_from_factory(module: str) -> None:
    assert import_graph(PACKAGE)[module] == set()
