"""Test setup: 8 fake CPU devices (must be set before JAX starts), offline HF, quiet TF."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Every test that builds the same program (e.g. each train() call of a resume test: the train step is owned
# by its TrainSetup, so a new run compiles anew) reads it from JAX's persistent compilation cache, one per
# test session, in this process only (subprocess tests start cold).
import atexit  # noqa: E402
import importlib.util  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from llavaction_jax.torch_env import hide_triton  # noqa: E402

hide_triton()   # torch's triton segfaults beside TensorFlow (llavaction_jax/torch_env.py)

_CACHE_DIR = tempfile.mkdtemp(prefix="jax_cache_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)   # only programs worth a disk entry
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
# Real EK100 annotation CSVs (CC BY-NC 4.0, credited in tests/data/ek100/README.md); EK100_DIR overrides.
EK100_DIR = os.environ.get("EK100_DIR", os.path.join(REPO_ROOT, "tests", "data", "ek100"))


@pytest.fixture(autouse=True)
def _no_root_log_handler_left_on_a_closed_stream():
    """Fails the test that leaves a root log handler writing to a stream closed by then (e.g. a forced
    basicConfig on its captured stderr), instead of a later test whose stderr gets "--- Logging error ---"."""
    yield
    stale = [h for h in logging.root.handlers if getattr(getattr(h, "stream", None), "closed", False)]
    assert not stale, f"root log handlers on a closed stream: {stale}"


def load_test_data_module(name: str):
    """tests/data/<name>.py as a module: the one-file extensions (a format, a benchmark, a task) that tests
    register in a library registry."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "data", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_env(devices: int, cache_dir, nproc: int = 1, pid: int = 0, port: int = 0) -> dict:
    """The environment of one `llavaction_jax.train` subprocess: `devices` fake CPU devices, the shared
    compilation cache, and with nproc > 1 the jax.distributed variables of process `pid`."""
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=REPO_ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    if nproc > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(nproc),
                   JAX_PROCESS_ID=str(pid))
    return env
