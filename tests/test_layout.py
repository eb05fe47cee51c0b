"""The package's shape: no import cycle (the registry is a leaf, one loader fills it), no
private names imported across modules, and no package function much over 60 lines."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 62  # "about 60": a docstring line or two of slack


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycle_and_the_registry_imports_no_variant():
    ig = _import_graph()
    g = ig.graph()
    assert ig.cycles(g) == []
    below_registry = set()
    todo = ["attnbench.registry"]
    while todo:
        m = todo.pop()
        for t in g[m] - below_registry:
            below_registry.add(t)
            todo.append(t)
    assert not any(m.startswith(("attnbench.variants", "attnbench.catalog", "attnbench.patterns")) for m in below_registry)
    assert "attnbench.variants" in g["attnbench.catalog"]  # the one loader


def _py_files():
    return sorted((ROOT / "attnbench").rglob("*.py"))


def test_no_private_names_imported_across_modules():
    bad = []
    for p in _py_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnbench"):
                bad += [f"{p.relative_to(ROOT)}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []


def test_package_functions_are_short():
    long = []
    for p in _py_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []
