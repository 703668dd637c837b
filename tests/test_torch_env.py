"""torch (with its triton) and TensorFlow in one process: what the demo's HF check and the parity tests do."""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import llavaction_jax  # noqa: F401  (hides triton: llavaction_jax/__init__.py)
    import tensorflow  # noqa: F401  (the input pipeline's TF, loaded first as in the demo)
    import torch._dynamo  # noqa: F401  (transformers' masking_utils imports it; it probes for triton)
    from transformers import LlavaOnevisionForConditionalGeneration  # noqa: F401
    import torchvision  # noqa: F401
    print("loaded", torch.__version__)
""")


def test_torch_and_transformers_load_beside_tensorflow():
    """Without hide_triton() (which `import llavaction_jax` runs) this process dies with SIGSEGV inside
    triton._C.libtriton (torch 2.14.1 + TF 2.21)."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "loaded" in out.stdout


def test_hide_triton_makes_the_import_fail_and_keeps_a_loaded_one():
    from llavaction_jax import torch_env
    saved = sys.modules.pop("triton", "absent")
    try:
        torch_env.hide_triton()
        with pytest.raises(ImportError):
            import triton  # noqa: F401
        marker = object()
        sys.modules["triton"] = marker           # already loaded (e.g. by a GPU user's own code): left alone
        torch_env.hide_triton()
        assert sys.modules["triton"] is marker
    finally:
        if saved == "absent":
            sys.modules.pop("triton", None)
        else:
            sys.modules["triton"] = saved
