"""benchmarks/function_imports.py counts the imports inside functions of a tree, and only those."""
import subprocess
import sys
import textwrap

from benchmarks import function_imports


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def _tree(root):
    _write(root / "pkg" / "a.py", """\
        import os


        def f():
            import json
            from math import pi, tau
            def inner():
                import re
            return json, pi, tau


        class C:
            async def g(self):
                import sys
        """)
    _write(root / "b.py", """\
        import os
        x = 1
        """)
    # Not counted: tests, hidden and build folders.
    _write(root / "tests" / "test_a.py", "def t():\n    import os\n")
    _write(root / ".venv" / "lib.py", "def t():\n    import os\n")
    _write(root / "build" / "lib.py", "def t():\n    import os\n")


def test_counts_imports_inside_functions_only(tmp_path):
    _tree(tmp_path)
    total, lines, per_file = function_imports.count(tmp_path)
    assert total == 4                                   # json, math, re (nested), sys (async method)
    assert lines == 14 + 2                              # a.py + b.py; skipped folders add nothing
    assert dict(per_file) == {"pkg/a.py": 4}


def test_prints_the_table(tmp_path):
    _tree(tmp_path)
    out = subprocess.run([sys.executable, function_imports.__file__, str(tmp_path)],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    assert out == ["4 16 250.0", "4 pkg/a.py"]
