"""Test setup: 8 fake CPU devices (must be set before JAX starts), offline HF, quiet TF."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
# Real EK100 annotation CSVs (CC BY-NC 4.0, credited in tests/data/ek100/README.md); EK100_DIR overrides.
EK100_DIR = os.environ.get("EK100_DIR", os.path.join(REPO_ROOT, "tests", "data", "ek100"))
