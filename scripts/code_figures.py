"""Figures of the code's shape: lines per file, functions over a length, import cycles.

    python scripts/code_figures.py                       # training/*.py and train*.py, functions over 60 lines
    python scripts/code_figures.py --files 'model/*.py' --max_lines 80

Cycles are looked for among the project's modules through their module-level imports only: an import
inside a function runs when the function does, which is how a module breaks a cycle on purpose.
Reads the files as text (``ast``); runs nothing.
"""

from __future__ import annotations

import argparse
import ast
import glob
import os
import sys
from typing import Optional

SKIP_DIRS = {"outputs", "wandb", "__pycache__", "data_cache"}


def count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def long_functions(path: str, max_lines: int) -> list[tuple[int, int, str]]:
    """``(lines, first line, name)`` of every function or method in ``path`` longer than ``max_lines``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > max_lines:
                found.append((n, node.lineno, node.name))
    return sorted(found, key=lambda f: f[1])


def project_modules(root: str) -> dict[str, str]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (hidden folders and run outputs left out)."""
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), root)
                module = rel[:-3].replace(os.sep, ".")
                modules[module.removesuffix(".__init__")] = os.path.join(folder, name)
    return modules


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Each module's module-level imports of other project modules."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
        except (SyntaxError, UnicodeDecodeError):
            continue
        deps: set[str] = set()
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps.update(n for n in names if n in modules and n != module)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
    return sorted(groups)


def report(root: str, patterns: list[str], max_lines: int) -> str:
    """The three figures as text."""
    files = sorted({os.path.relpath(p, root) for pat in patterns for p in glob.glob(os.path.join(root, pat))})
    out = [f"== lines per file ({', '.join(patterns)})"]
    out += [f"{count_lines(os.path.join(root, f)):5d} {f}" for f in files]
    out.append(f"== functions over {max_lines} lines")
    out += [f"{n:5d} {f}:{line} {name}" for f in files for n, line, name in long_functions(os.path.join(root, f),
                                                                                             max_lines)]
    found = cycles(import_graph(project_modules(root)))
    out.append(f"== import cycles (module-level imports): {len(found)}")
    out += ["  " + " <-> ".join(group) for group in found]
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Lines per file, functions over a length, import cycles.")
    p.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--files", action="append", default=None, metavar="GLOB",
                   help="files to measure, relative to --root (repeatable; default: training/*.py and train*.py)")
    p.add_argument("--max_lines", type=int, default=60, help="list functions longer than this")
    args = p.parse_args(argv)
    print(report(args.root, args.files or ["training/*.py", "train*.py"], args.max_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
