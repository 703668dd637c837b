"""Remat policies: what each one saves for the backward pass (by the scan's stacked residuals), and that the
decoder and vision tower policies are chosen separately; values and gradients never change."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals

from configs import tiny
from llavaction_jax.model import LlavaActionModel, num_video_tokens

B, FRAMES = 2, 1


def _model_and_loss(decoder_policy, vision_policy):
    cfg = tiny.get_config().model
    cfg.remat_policy, cfg.vision_remat_policy = decoder_policy, vision_policy
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
    n = num_video_tokens(cfg, FRAMES)
    rng = np.random.RandomState(0)
    ids = rng.randint(4, cfg.text.vocab_size, size=(B, n + 6)).astype(np.int32)
    ids[:, 1:1 + n] = cfg.video_token_id
    pix = rng.randn(B, FRAMES, 32, 32, 3).astype(np.float32)
    graphdef, state = nnx.split(model)

    def loss(st):
        out = nnx.merge(graphdef, st)(ids, pix)
        return jnp.mean(out.logits ** 2) + jnp.mean(out.verb_logits ** 2)
    return cfg, state, loss, ids.shape[1]


def _stacked_residuals(decoder_policy, vision_policy):
    """Trailing shapes of the per-layer residuals the scans keep: {'text': Counter, 'vision': Counter}."""
    cfg, state, loss, length = _model_and_loss(decoder_policy, vision_policy)
    patches = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
    out = {"text": collections.Counter(), "vision": collections.Counter()}
    for aval, source in saved_residuals(loss, state):
        shape = tuple(aval.shape)
        if "run_layers" not in source or len(shape) < 3:
            continue
        if shape[:3] == (cfg.text.num_layers, B, length):
            out["text"][shape[3:]] += 1
        elif shape[:3] == (cfg.vision.num_layers, B * FRAMES, patches):
            out["vision"][shape[3:]] += 1
    return out


# tiny decoder: hidden 64, 4 heads / 2 kv heads of 16, mlp 128; vision: hidden 32, 4 heads of 8, mlp 64.
H, Q, KV, MLP = (64,), (4, 16), (2, 16), (128,)
VH, VQ, VMLP = (32,), (4, 8), (64,)


@pytest.mark.parametrize("policy,expected", [
    ("full", {H: 1}),                                              # the layer input only
    ("save_qkv_proj", {H: 1, Q: 1, KV: 2}),
    ("save_dot_except_mlp", {H: 2, Q: 2, KV: 2}),                  # + attention_out, out_proj
    ("save_all_named", {H: 2, Q: 2, KV: 2, MLP: 2}),               # + gate, up (mlp_out is never needed)
])
def test_decoder_policy_saves_exactly_its_names(policy, expected):
    res = _stacked_residuals(policy, "full")
    assert dict(res["text"]) == expected
    assert dict(res["vision"]) == {VH: 1}                           # the vision tower kept its own policy


def test_vision_policy_is_separate():
    res = _stacked_residuals("full", "save_all_named")
    assert dict(res["text"]) == {H: 1}
    # q, k, v, attention_out (heads), out_proj + layer input (hidden), fc1 (mlp)
    assert dict(res["vision"]) == {VQ: 4, VH: 2, VMLP: 1}


def test_no_remat_keeps_more_than_any_policy():
    res = _stacked_residuals("none", "none")
    assert sum(res["text"].values()) > 9 and MLP in res["text"]


def test_policies_change_no_value_or_gradient():
    results = {}
    for policy in ("none", "save_dot_except_mlp", "save_all_named", "offload_dot_except_mlp"):
        _, state, loss, _ = _model_and_loss(policy, policy)
        value, grads = jax.jit(jax.value_and_grad(loss))(state)
        results[policy] = (float(value), jax.tree.leaves(grads))
    ref_value, ref_grads = results["none"]
    for policy, (value, grads) in results.items():
        assert abs(value - ref_value) <= 1e-6 * max(1.0, abs(ref_value)), policy
        for a, b in zip(grads, ref_grads):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5, err_msg=policy)


def test_unknown_policy_is_a_clear_error():
    cfg = tiny.get_config().model
    cfg.vision_remat_policy = "sometimes"
    with pytest.raises(ValueError, match="vision_remat_policy='sometimes'"):
        LlavaActionModel(cfg, rngs=nnx.Rngs(0))
