"""scan vs unrolled layers, remat policies (forward and gradients), bf16 compute dtype."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from llavaction_jax.model import LlavaActionModel, num_video_tokens


def _inputs(cfg, frames=1):
    n = num_video_tokens(cfg, frames)
    rng = np.random.RandomState(0)
    ids = rng.randint(4, cfg.text.vocab_size, size=(2, n + 6)).astype(np.int32)
    ids[:, 1:1 + n] = cfg.video_token_id
    mask = np.ones_like(ids)
    mask[1, -2:] = 0
    pix = rng.randn(2, frames, 32, 32, 3).astype(np.float32)
    return ids, pix, mask


def _logits_loss_grads(model, ids, pix, mask):
    def loss(m):
        out = m(ids, pix, mask)
        return jnp.mean(out.logits ** 2) + jnp.mean(out.verb_logits ** 2), out.logits
    return nnx.jit(lambda m: nnx.value_and_grad(loss, has_aux=True)(m))(model)


def test_scan_and_remat_policies_identical():
    """Remat changes only what the backward pass recomputes: logits, loss and gradients must agree."""
    results = {}
    for scan, remat in [(True, "none"), (True, "full"), (True, "dots_saveable"),
                        (False, "dots_with_no_batch_dims_saveable")]:
        cfg = tiny.get_config().model
        cfg.scan_layers, cfg.remat_policy = scan, remat
        model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
        ids, pix, mask = _inputs(cfg)
        (value, logits), grads = _logits_loss_grads(model, ids, pix, mask)
        results[(scan, remat)] = (np.asarray(logits), float(value), nnx.to_pure_dict(grads))
    ref_logits, ref_value, ref_grads = results[(True, "none")]
    for key, (logits, value, grads) in results.items():
        np.testing.assert_allclose(logits, ref_logits, atol=1e-6, rtol=0, err_msg=str(key))
        assert abs(value - ref_value) <= 1e-6 * max(1.0, abs(ref_value)), key
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5, err_msg=str(key)),
                     grads, ref_grads)


def test_bfloat16_compute_close_to_float32():
    cfg = tiny.get_config().model
    ids, pix, mask = _inputs(cfg)
    forward = nnx.jit(lambda m: m(ids, pix, mask))
    ref = forward(LlavaActionModel(cfg, rngs=nnx.Rngs(0)))
    cfg.dtype = "bfloat16"
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))                           # same float32 params
    assert model.llm.layers.mlp.up_proj.kernel[...].dtype == jnp.float32
    out = forward(model)
    for name in ("logits", "verb_logits", "noun_logits", "action_logits"):
        got, want = np.asarray(getattr(out, name)), np.asarray(getattr(ref, name))
        assert got.dtype == np.float32 and np.isfinite(got).all(), name
        scale = float(np.abs(want).max())
        err = float(np.abs(got - want).max())
        assert 0 < err <= 0.05 * scale, (name, err, scale)                    # bf16 really ran, and is close
    # param_dtype is separate from the compute dtype.
    cfg.param_dtype = "bfloat16"
    abstract = nnx.eval_shape(lambda: LlavaActionModel(cfg, rngs=nnx.Rngs(0)))
    dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}


def test_bad_config_values_are_clear_errors():
    cfg = tiny.get_config().model
    cfg.remat_policy = "sometimes"
    with pytest.raises(ValueError, match="remat_policy='sometimes'"):
        LlavaActionModel(cfg, rngs=nnx.Rngs(0))


def test_zero_frames_is_a_text_only_batch():
    """pixel_values with 0 frames (config.data.num_frames = 0, the demo's text-only warm-up) is the batch without
    video: the same logits as pixel_values=None, no vision tower in the program, and a video slot is refused."""
    cfg = tiny.get_config().model
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
    rng = np.random.RandomState(1)
    ids = rng.randint(4, cfg.text.vocab_size, size=(2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    empty = np.zeros((2, 0, 32, 32, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(model(ids, empty, mask).logits), np.asarray(model(ids, None, mask).logits))
    def dots(pix):
        return jax.jit(lambda i, p, m: model(i, p, m).logits).lower(ids, pix, mask).as_text().count("dot_general")
    assert dots(empty) == dots(None) < dots(np.zeros((2, 1, 32, 32, 3), np.float32))   # no vision tower matmuls
    ids[0, 2] = cfg.video_token_id
    with pytest.raises(ValueError, match="row 0: 1 video slots"):
        model(ids, empty, mask)
