"""The import graph of the cotshape package, read from the source with ast (function-level
imports included): modules, import edges, layers (the longest import chain), import circles and
the largest modules. Run from the repository root: ``python scripts/import_graph.py``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def edges(mods: dict[str, Path]) -> set[tuple[str, str]]:
    out = set()
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # "from pkg import submodule" imports the submodule, not the package's own code
                names = subs + ([base] if any(x not in mods for x in subs) else [])
            for n in names:
                while n and n not in mods:
                    n = n.rsplit(".", 1)[0] if "." in n else ""
                if n and n != m and n != "cotshape":
                    out.add((m, n))
    return out


def circles(mods: dict[str, Path], graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            comps.append(comp)

    sys.setrecursionlimit(10_000)
    for v in mods:
        if v not in index:
            visit(v)
    return comps


def main() -> None:
    mods = modules(Path("cotshape"))
    es = edges(mods)
    graph: dict[str, set[str]] = {}
    for a, b in es:
        graph.setdefault(a, set()).add(b)
    comps = circles(mods, graph)
    comp_of = {v: i for i, c in enumerate(comps) for v in c}
    memo: dict[int, int] = {}

    def depth(ci: int) -> int:
        if ci not in memo:
            memo[ci] = 0
            memo[ci] = max((1 + depth(comp_of[w]) for v in comps[ci] for w in graph.get(v, ())
                            if comp_of[w] != ci), default=0)
        return memo[ci]

    layers = 1 + max(depth(i) for i in range(len(comps)))
    cyc = [sorted(c) for c in comps if len(c) > 1]
    print(f"modules {len(mods)}, import edges {len(es)}, layers {layers}, import circles {len(cyc)} {cyc}")
    sizes = sorted(((len(f.read_text(encoding='utf-8').splitlines()), m) for m, f in mods.items()), reverse=True)
    print("largest:", ", ".join(f"{m} {n}" for n, m in sizes[:6]))


if __name__ == "__main__":
    main()
