"""The package's import graph, computed from the source: no module imports one that imports it back, directly
or through others (a lazy import inside a function counts: it is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imgcls"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the imgcls modules it imports}, from every import statement in its source."""
    files = {module_name(p): p for p in package.rglob("*.py")}
    graph = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from pkg import sub` imports the sub-module when there is one, else a name of pkg
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan): each is an import loop."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_loop_through_three_modules_and_none_in_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_relative_lazy_and_absolute_imports():
    graph = import_graph()
    assert "imgcls.run" in graph["imgcls.api"]            # from .run import ... (top level)
    assert "imgcls.quantize" in graph["imgcls.api"]       # from .quantize import ... (inside a method)
    assert "imgcls.errors" in graph["imgcls.losses"]      # from imgcls.errors import ...
    assert "imgcls.data.cache" in graph["imgcls.data"]    # the package's __init__


def test_no_module_of_imgcls_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_a_trained_run_is_read_only_through_run_py():
    """api, export, quantize and predict sit above run.py; run.py imports none of them."""
    graph = import_graph()
    for above in ("imgcls.api", "imgcls.export", "imgcls.quantize", "imgcls.predict"):
        assert above not in _reachable(graph, "imgcls.run"), above


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen
