"""Loading torch beside TensorFlow in one process (the HF export checks of the demo and the tests).

The torch build that torchvision 0.29 needs (2.14, a CUDA build that also runs on the CPU) brings triton, and
transformers imports it through torch._dynamo. triton's bundled LLVM and TensorFlow's clash: the process dies
with a segmentation fault in `triton._C.libtriton`. Nothing here compiles torch kernels, so triton is hidden
before torch first loads (`import llavaction_jax` does it); torch then behaves as it does where triton is not
installed. Set LLAVACTION_KEEP_TRITON=1 to keep triton (torch.compile on a GPU without TensorFlow loaded).
"""
import os
import sys


def hide_triton() -> None:
    """Make `import triton` raise ImportError in this process (a no-op once triton is loaded)."""
    if os.environ.get("LLAVACTION_KEEP_TRITON", "") not in ("", "0"):
        return
    # A None entry in sys.modules is Python's documented way to make an import fail with ImportError.
    sys.modules.setdefault("triton", None)
