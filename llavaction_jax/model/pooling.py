"""2D pooling of per-frame patch grids, matching PyTorch (LLaVA-NeXT get_2dPool).

x: [N, R, C, D] (rows, cols). bilinear == F.interpolate(mode='bilinear', align_corners=False,
antialias=False) to ceil(side/stride); average/max == avg_pool2d/max_pool2d(kernel=stride) (floor).
"""
import math

import jax.numpy as jnp
import numpy as np


def _linear_taps(in_size: int, out_size: int):
    """Source indices and weights of torch's align_corners=False linear interpolation along one axis."""
    # Bit-level match with torch's CPU kernel: scale = float32(in/out), and the source coordinate
    # scale * (dst + 0.5) - 0.5 is rounded to float32 once (fused multiply-add); lambda is then taken in
    # float32. Other roundings differ by ~1e-6 at 27 -> 14.
    f32 = np.float32
    scale = np.float64(f32(in_size) / f32(out_size))
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(f32)
    src = np.maximum(src, f32(0.0))               # torch clamps negative source coordinates to 0
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(f32)).astype(f32)
    return i0, i1, f32(1.0) - w1, w1


def _lerp(x, axis, out_size):
    i0, i1, w0, w1 = _linear_taps(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w0 = jnp.asarray(w0, x.dtype).reshape(shape)
    w1 = jnp.asarray(w1, x.dtype).reshape(shape)
    return jnp.take(x, i0, axis=axis) * w0 + jnp.take(x, i1, axis=axis) * w1


def bilinear_resize(x, out_rows: int, out_cols: int):
    return _lerp(_lerp(x, 1, out_rows), 2, out_cols)


def _window_pool(x, stride, reduce):
    n, r, c, d = x.shape
    orows, ocols = r // stride, c // stride
    x = x[:, :orows * stride, :ocols * stride]
    return reduce(x.reshape(n, orows, stride, ocols, stride, d), axis=(2, 4))


def pool2d(x, mode: str, stride: int):
    """Pool [N, R, C, D] grids per frame; see module docstring for the exact PyTorch equivalents."""
    if mode == "bilinear":
        return bilinear_resize(x, math.ceil(x.shape[1] / stride), math.ceil(x.shape[2] / stride))
    if mode == "average":
        return _window_pool(x, stride, jnp.mean)
    if mode == "max":
        return _window_pool(x, stride, jnp.max)
    raise ValueError(f"pool_mode={mode!r}: expected bilinear | average | max")
