"""The package's import graph has no circle: no module imports (at any depth, function-
level imports included) a module that imports it back, and no subpackage imports one
that imports it back (export writes what serving reads; serving imports nothing of export)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1] / "interformer_rec"


def _graph() -> Dict[str, Set[str]]:
    modules = {}
    for f in ROOT.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = f
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for m, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets if t in modules and t != m and not m.startswith(t + ".")}
    return graph


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one node."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _graph()
    assert "interformer_rec.train.evaluate" in graph and graph["interformer_rec.cli"]
    assert _circles(graph) == []


def test_no_subpackage_imports_one_that_imports_it_back() -> None:
    def package(m: str) -> str:
        return ".".join(m.split(".")[:2])

    packages: Dict[str, Set[str]] = {}
    for m, targets in _graph().items():
        packages.setdefault(package(m), set()).update(package(t) for t in targets if package(t) != package(m))
    assert "interformer_rec.serving" in packages["interformer_rec.export"]
    assert _circles(packages) == []
