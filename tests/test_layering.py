"""The layers hold: data_prep and llavaction_jax.data import no JAX (nor TensorFlow, whose import pulls JAX in), and
no module of the library imports data_prep (the offline tools sit on top of the library, never under it), and only
the library's CLIs import configs."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The TFDS builder is a TensorFlow Datasets plugin: tensorflow_datasets imports TensorFlow, which imports JAX.
TF_PLUGINS = ("data_prep.tfds_ek100_mqa",)


def _modules(package_dir):
    """Dotted names of every module under a package directory of the repository."""
    names = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package_dir)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                names.append(rel[:-len(".__init__")] if rel.endswith(".__init__") else rel)
    return names


def _py_files(package_dir):
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package_dir)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        yield from (os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))


def test_data_prep_and_library_data_import_no_jax():
    modules = [m for m in _modules("data_prep") + _modules(os.path.join("llavaction_jax", "data"))
               if not m.startswith(TF_PLUGINS)]
    assert "data_prep.to_tfrecord" in modules and "llavaction_jax.data.records" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            "heavy = sorted(n for n in ('jax', 'flax', 'optax', 'tensorflow') if n in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_subprocess_check_sees_jax():
    """The check above can fail: a module that imports JAX is caught."""
    proc = subprocess.run([sys.executable, "-c", "import llavaction_jax.input.features, sys; "
                           "assert 'jax' not in sys.modules"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode != 0 and "AssertionError" in proc.stderr


def _imported_roots(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_library_never_imports_or_names_data_prep():
    offenders = []
    for path in _py_files("llavaction_jax"):
        rel = os.path.relpath(path, ROOT)
        if "data_prep" in set(_imported_roots(path)):
            offenders.append(f"{rel}: imports data_prep")
        elif "data_prep" in open(path, encoding="utf-8").read():
            offenders.append(f"{rel}: names data_prep (the library documents its own modules and the CLIs)")
    assert not offenders, offenders


def test_data_formats_import_no_jax_statically():
    """Not even behind a function: no module of llavaction_jax.data names jax, flax, optax or tensorflow."""
    offenders = [f"{os.path.relpath(p, ROOT)}: {root}" for p in _py_files(os.path.join("llavaction_jax", "data"))
                 for root in _imported_roots(p) if root in ("jax", "flax", "optax", "tensorflow", "data_prep")]
    assert not offenders, offenders


# The command-line tools of the library: the only modules of llavaction_jax that may import configs (the top layer).
CLI_MODULES = ("__main__.py", "aot.py", "plan.py", "predict.py")


def test_only_the_clis_import_configs():
    """The library reads a config it is given; the defaults (configs/base.py) come in through the CLIs."""
    offenders = [os.path.relpath(p, ROOT) for p in _py_files("llavaction_jax")
                 if os.path.basename(p) not in CLI_MODULES and "configs" in set(_imported_roots(p))]
    assert not offenders, offenders
    clis = [p for p in _py_files("llavaction_jax") if "configs" in set(_imported_roots(p))]
    assert {os.path.basename(p) for p in clis} <= set(CLI_MODULES) and len(clis) >= 5
