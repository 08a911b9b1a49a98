"""The shape of the code at two revisions, side by side: lines per package and the longest
functions. It backs the before/after table of the restructuring (docs/architecture.md).

    python scripts/code_shape.py 3579cf5^1 HEAD [--top 8]

Lines are non-blank source lines of the packages' ``*.py`` files (tests and scripts apart);
a function's length runs from its ``def`` to its last line (nested functions count inside
their parent and on their own).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import Counter

PACKAGES = ("icm_codec", "icm_eval", "icm_rpc", "analytics", "edge_encoder", "cloud_decoder",
            "console", "icm_app")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def shape(rev: str) -> tuple[Counter, list[tuple[int, str]]]:
    """Non-blank lines per package and (length, 'path:function') of every function."""
    lines: Counter = Counter()
    funcs: list[tuple[int, str]] = []
    for path in _git("ls-tree", "-r", "--name-only", rev).splitlines():
        top = path.split("/", 1)[0]
        if top not in PACKAGES or not path.endswith(".py") or "/_generated/" in path:
            continue
        text = _git("show", f"{rev}:{path}")
        lines[top] += sum(1 for line in text.splitlines() if line.strip())
        lines["(all)"] += sum(1 for line in text.splitlines() if line.strip())
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                funcs.append((node.end_lineno - node.lineno + 1, f"{path}:{node.name}"))
    return lines, sorted(funcs, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    (lb, fb), (la, fa) = shape(args.before), shape(args.after)
    print(f"| package | lines at {args.before} | lines at {args.after} |\n|---|---|---|")
    for pkg in (*PACKAGES, "(all)"):
        print(f"| {pkg} | {lb.get(pkg, 0)} | {la.get(pkg, 0)} |")
    for rev, funcs in ((args.before, fb), (args.after, fa)):
        over = sum(1 for n, _ in funcs if n > 60)
        print(f"\nlongest functions at {rev} ({len(funcs)} functions, {over} over 60 lines):")
        for n, name in funcs[:args.top]:
            print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main()
