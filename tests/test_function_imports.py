"""benchmarks/function_imports.py counts the imports inside functions of a tree, and only those; the repository
keeps them at most 2 per 1k lines, each a heavy optional module with its reason."""
import ast
import pathlib
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


# The imports that may sit inside a function (issue 21): heavy or platform-only optional modules, each with the
# reason. Keys are module prefixes; a (module, file) pair is allowed only in that file.
HEAVY_OPTIONAL = {
    "torch": "the PyTorch reference / HF reload side; optional (the hf extra), seconds to import",
    "transformers": "as torch: optional (the hf extra), imports torch",
    "lmms_eval": "optional external harness",
    "tensorboardX": "its writer imports torch where it is installed; only runs that log to TensorBoard",
    "wandb": "optional extra; only runs that name the tracker",
    "tensorflow_datasets": "the TFDS plugin's dependency; seconds to import",
    "jax.experimental.pallas.ops.tpu": "TPU-only Pallas kernels (libtpu paths)",
    "jax._src.cudnn": "JAX-internal, GPU-only; its absence only disables the packed cuDNN kernel",
}
ALLOWED_IN_FILE = {
    # PEP 562 __getattr__: `import llavaction_jax` (every CLI, the offline tools, the data layer) stays JAX-free.
    ("llavaction_jax.convert", "llavaction_jax/__init__.py"),
}
MAX_PER_1K = 2.0


def _imported_modules(node):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module or ""] if node.level == 0 else ["." * node.level + (node.module or "")]


def _allowed(module, path):
    if (module, path) in ALLOWED_IN_FILE:
        return True
    return any(module == m or module.startswith(m + ".") for m in HEAVY_OPTIONAL)


def _has_reason(lines, lineno):
    """A `#` comment on the import's line, or on the line above the run of import lines it belongs to (a `try:`
    or a comment line)."""
    i = lineno - 1
    if "#" in lines[i]:
        return True
    imports = ("import ", "from ")
    while i > 0 and lines[i - 1].strip().startswith(imports) and "#" not in lines[i - 1]:
        i -= 1
    return i > 0 and "#" in lines[i - 1] and not lines[i - 1].strip().startswith(imports)


def violations(root):
    """(per 1k lines, [each function-level import that is not allowed or gives no reason]) of the tree at root,
    counted by benchmarks/function_imports.py."""
    total, lines, _ = function_imports.count(root)
    bad = []
    for path in function_imports.counted_files(pathlib.Path(root)):
        source = path.read_text()
        rel = path.relative_to(root).as_posix()
        hit_lines = function_imports.function_imports(source)
        if not hit_lines:
            continue
        text = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno in hit_lines:
                for module in _imported_modules(node):
                    if not _allowed(module, rel):
                        bad.append(f"{rel}:{node.lineno}: {module} (not a heavy optional module: import it at "
                                   "the top of the module)")
                if not _has_reason(text, node.lineno):
                    bad.append(f"{rel}:{node.lineno}: no `# why` comment on the import line")
    return (1000 * total / lines if lines else 0.0), bad


def test_the_repository_keeps_function_imports_rare_and_heavy_only():
    per_1k, bad = violations(function_imports.ROOT)
    assert per_1k <= MAX_PER_1K, f"{per_1k:.2f} function-level imports per 1k lines (at most {MAX_PER_1K})"
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_plain_import_inside_a_function_and_a_missing_reason(tmp_path):
    _write(tmp_path / "pkg" / "ok.py", """\
        def f():
            import torch  # why: optional
            try:  # why: the hf extra
                import transformers
                from transformers import AutoModel
            except ImportError:
                pass
        """)
    (tmp_path / "pkg" / "filler.py").write_text("x = 1\n" * 2000)
    per_1k, bad = violations(tmp_path)
    assert bad == [] and 1.4 < per_1k <= MAX_PER_1K               # 3 imports in 2007 lines
    _write(tmp_path / "pkg" / "bad.py", """\
        def g():
            import json  # why: none that holds
            import wandb
        """)
    per_1k, bad = violations(tmp_path)
    assert bad == ["pkg/bad.py:2: json (not a heavy optional module: import it at the top of the module)",
                   "pkg/bad.py:3: no `# why` comment on the import line"]
    _write(tmp_path / "pkg" / "many.py", "def h():\n" + "    import torch  # why: optional\n" * 40)
    assert violations(tmp_path)[0] > MAX_PER_1K
