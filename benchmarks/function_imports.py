"""Counts the imports that sit inside functions, per 1k lines of non-test Python.

    python benchmarks/function_imports.py [ROOT]      # ROOT defaults to the repository root

An import inside a function hides a dependency from the reader of the module's top. The target (issue 21) is at
most 2 per 1k lines; the ones that remain are heavy optional imports (torch, transformers, lmms-eval, wandb,
libtpu-only paths), each with a one-line reason. Counted: every `import` / `from ... import` statement anywhere
inside a `def` or `async def` (one per source line, nested functions counted once), in every .py file under ROOT
except tests/, build/ and hidden or virtual-env folders. Lines: the newlines of those same files.

Prints `COUNT LINES PER_1K`, then `COUNT PATH` per file, most first.
"""
import argparse
import ast
import collections
import os
import pathlib

SKIPPED_TOP = ("tests", "build")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))      # this repository


def counted_files(root):
    """The .py files under root that the count covers, sorted."""
    files = []
    for path in sorted(root.glob("**/*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in SKIPPED_TOP or any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue
        files.append(path)
    return files


def function_imports(source):
    """Line numbers of the import statements inside functions of one module's source."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines.update(sub.lineno for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    return lines


def count(root):
    """(total function-level imports, total lines, {relative path: count}) for the tree under root."""
    root = pathlib.Path(root)
    total_lines, per_file = 0, collections.Counter()
    for path in counted_files(root):
        source = path.read_text()
        total_lines += source.count("\n")
        hits = function_imports(source)
        if hits:
            per_file[str(path.relative_to(root))] = len(hits)
    return sum(per_file.values()), total_lines, per_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=ROOT,
                        help="tree to count (default: this repository)")
    args = parser.parse_args(argv)
    total, lines, per_file = count(args.root)
    print(total, lines, round(1000 * total / lines, 2) if lines else 0.0)
    for path, n in per_file.most_common():
        print(n, path)


if __name__ == "__main__":
    main()
