"""`auto` attention's kernel choice per platform (GPU: cuDNN with padding masks and, where supported, packing;
else blockwise), the log line naming it, and cuDNN's packed layout of segment ids."""
import logging

import jax
import jax.numpy as jnp
import numpy as np

from llavaction_jax.model import attention


def test_cudnn_packed_layout_exact():
    seg = jnp.array([[1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    seqlen, offsets = attention.cudnn_packed_layout(seg, max_segments=4)
    np.testing.assert_array_equal(seqlen, [[2, 3, 2, -1], [7, -1, -1, -1]])
    np.testing.assert_array_equal(offsets, [[0, 2, 5, -1, -1], [0, -1, -1, -1, -1]])
    seqlen, offsets = attention.cudnn_packed_layout(seg)         # M = T by default
    assert seqlen.shape == (2, 7) and offsets.shape == (2, 8)
    np.testing.assert_array_equal(seqlen[:, :3], [[2, 3, 2], [7, -1, -1]])


def test_choose_kernel_per_platform():
    choose = attention.choose_kernel
    q, k = (2, 4096, 28, 128), (2, 4096, 4, 128)
    assert choose("gpu", q, k, jnp.bfloat16, packed=False)[0] == "cudnn"
    # No CUDA device here, so no cuDNN packed layout: packing falls back to blockwise, and says why.
    kernel, why = choose("gpu", q, k, jnp.bfloat16, packed=True)
    assert not attention.cudnn_supports_packing() and kernel == "blockwise" and "packed layout" in why
    assert choose("gpu", q, k, jnp.float32, packed=False)[0] == "blockwise"
    assert choose("gpu", (2, 4096, 16, 192), (2, 4096, 16, 192), jnp.bfloat16, packed=False)[0] == "blockwise"
    assert choose("tpu", q, k, jnp.bfloat16, packed=True)[0] == "splash"
    assert choose("cpu", (2, 1024, 4, 16), (2, 1024, 2, 16), jnp.float32, packed=True)[0] == "xla"
    assert choose("cpu", (2, 1025, 4, 16), (2, 1025, 2, 16), jnp.float32, packed=True)[0] == "blockwise"
    assert choose("gpu", (2, 1, 28, 128), (2, 4096, 4, 128), jnp.bfloat16, packed=False)[0] == "xla"


def test_auto_logs_its_choice_once(caplog):
    attention._LOGGED_CHOICES.clear()
    q = jnp.ones((1, 8, 2, 16), jnp.float32)
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            jax.jit(lambda x: attention.attention(x, x, x, impl="auto", causal=True))(q)
            jax.jit(lambda x: attention.attention(x, x, x, impl="auto", causal=True) * 2)(q)
    lines = [r.getMessage() for r in caplog.records if "attention 'auto'" in r.getMessage()]
    assert lines == ["attention 'auto': xla for q (1, 8, 2, 16) k (1, 8, 2, 16) float32 on cpu "
                     "(cpu: scores up to 1048576 per head)"]
