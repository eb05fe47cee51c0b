"""The import graph of the attnbench package, and its cycles.

Every ``import attnbench...`` / ``from attnbench... import ...`` statement counts, at module
level or inside a function (an import inside a function is still a dependency: it only runs
later), and so does ``importlib.import_module("attnbench...")``. Prints the number of modules and edges, the floors (longest import chain below each
module) and every cycle (strongly connected component of more than one module); exits 1 when
there is a cycle.

    python scripts/import_graph.py            # summary and cycles
    python scripts/import_graph.py --edges    # every edge, module -> imported module
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "attnbench"


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for p in sorted((root / PKG).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _targets(node: ast.AST, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
        arg = node.args[0] if node.args else None  # importlib.import_module("attnbench.x"): a dynamic import
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.split(".")[0] == PKG:
            return [arg.value]
        return []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PKG]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == PKG:
        out = []
        for a in node.names:  # `from attnbench import registry` imports the module attnbench.registry
            sub = f"{node.module}.{a.name}"
            out.append(sub if sub in mods else node.module)
        return out
    return []


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for t in _targets(node, mods):
                while t not in mods and "." in t:  # a name imported from a module: the module
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != m:
                    g[m].add(t)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def floors(g: dict[str, set[str]]) -> dict[str, int]:
    """Longest import chain below each module (0 = imports no attnbench module); acyclic graphs only."""
    memo: dict[str, int] = {}

    def depth(v: str) -> int:
        if v not in memo:
            memo[v] = 0
            memo[v] = 1 + max((depth(w) for w in g[v]), default=-1)
        return memo[v]

    return {v: depth(v) for v in g}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", action="store_true", help="print every edge")
    args = ap.parse_args()
    g = graph()
    cyc = cycles(g)
    print(f"{len(g)} modules, {sum(len(v) for v in g.values())} import edges (module level and inside functions)")
    if args.edges:
        for m in sorted(g):
            for t in sorted(g[m]):
                print(f"  {m} -> {t}")
    if cyc:
        for c in cyc:
            print("cycle: " + " <-> ".join(c))
        return 1
    fl = floors(g)
    by_floor: dict[int, list[str]] = {}
    for m, f in fl.items():
        by_floor.setdefault(f, []).append(m.removeprefix(f"{PKG}."))
    for f in sorted(by_floor):
        print(f"floor {f}: {', '.join(sorted(by_floor[f]))}")
    print("no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
