"""The project's layering (docs/CONVENTIONS.md) and the absence of import cycles.

Every module of the project is parsed with ``ast`` (nothing is imported); every
``import``/``from ... import``, also inside functions, is an edge. Layers may only import
the layers their rule lists, and no set of modules imports itself round a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

#: top-level package -> the project packages it may import (besides itself); CONVENTIONS.md
LAYERS: dict[str, set[str]] = {
    "kernel": set(),
    "kubeclient": set(),
    "datastore": {"kernel", "kubeclient"},
    "ipam": {"datastore", "kernel", "kubeclient"},
    "cni": {"datastore", "ipam", "kernel", "kubeclient"},
    "agent": {"datastore", "ipam", "kernel", "kubeclient"},
    "testbed": {"datastore", "ipam", "cni", "agent", "kernel", "kubeclient"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for top in LAYERS:
        for path in (REPO / top).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (a submodule when one is named, else the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target:
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in mods:
                    out.add(full)
                elif base in mods:
                    out.add(base)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_walk_sees_the_project():
    graph = import_graph()
    assert "testbed.cli" in graph and "agent.felix.daemon" in graph
    assert "testbed.lab.state" in graph["testbed.lab.clean"]
    assert "testbed.lab.state" in graph["testbed.lab.lifecycle"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layers_import_only_what_conventions_allow():
    bad = []
    for name, targets in sorted(import_graph().items()):
        top = name.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != top and other not in LAYERS[top]:
                bad.append(f"{name} imports {target} ({top} may import {sorted(LAYERS[top]) or 'nothing'})")
    assert bad == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []
