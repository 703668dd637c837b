"""Qwen2 text-only and SigLIP-alone parity against transformers tiny random models (float32, <= 1e-4).

The weight copy below is a minimal test-only mapping (torch Linear [out, in] -> kernel [in, out],
per-layer tensors stacked on a leading layer axis); the production importer is llavaction_jax.convert.
"""
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from configs import tiny
from llavaction_jax.model import LlavaActionModel

QWEN_RULES = [
    (r"model\.embed_tokens\.weight", "llm/embed_tokens/embedding", None),
    (r"model\.norm\.weight", "llm/norm/scale", None),
    (r"lm_head\.weight", "lm_head/kernel", "T"),
    (r"model\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight", "llm/layers/self_attn/{1}/kernel", "T"),
    (r"model\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj)\.bias", "llm/layers/self_attn/{1}/bias", None),
    (r"model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight", "llm/layers/mlp/{1}/kernel", "T"),
    (r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight", "llm/layers/{1}/scale", None),
]
SIGLIP_RULES = [
    (r"(?:vision_model\.)?embeddings\.patch_embedding\.weight", "vision/embeddings/patch_embedding/kernel", "conv"),
    (r"(?:vision_model\.)?embeddings\.patch_embedding\.bias", "vision/embeddings/patch_embedding/bias", None),
    (r"(?:vision_model\.)?embeddings\.position_embedding\.weight", "vision/embeddings/position_embedding/embedding",
     None),
    (r"(?:vision_model\.)?encoder\.layers\.(\d+)\.(layer_norm1|layer_norm2)\.weight", "vision/encoder/layers/{1}/scale",
     None),
    (r"(?:vision_model\.)?encoder\.layers\.(\d+)\.(layer_norm1|layer_norm2)\.bias", "vision/encoder/layers/{1}/bias",
     None),
    (r"(?:vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.(\w+)\.weight", "vision/encoder/layers/self_attn/{1}/kernel",
     "T"),
    (r"(?:vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.(\w+)\.bias", "vision/encoder/layers/self_attn/{1}/bias", None),
    (r"(?:vision_model\.)?encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.weight", "vision/encoder/layers/mlp/{1}/kernel", "T"),
    (r"(?:vision_model\.)?encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.bias", "vision/encoder/layers/mlp/{1}/bias", None),
    (r"(?:vision_model\.)?post_layernorm\.weight", "vision/post_layernorm/scale", None),
    (r"(?:vision_model\.)?post_layernorm\.bias", "vision/post_layernorm/bias", None),
]


def copy_torch_weights(model, state_dict, rules, num_layers):
    """Copy matching torch tensors into the nnx params by contract path; returns the set of paths written.

    Layers >= num_layers are skipped (LLaVA-NeXT drops the vision tower's last layer)."""
    stacked, flat = {}, {}
    for key, tensor in state_dict.items():
        for pattern, path, how in rules:
            m = re.fullmatch(pattern, key)
            if not m:
                continue
            arr = tensor.detach().float().numpy()
            arr = arr.T if how == "T" else arr.transpose(2, 3, 1, 0) if how == "conv" else arr
            if "layers" in path:
                layer = int(m.group(1))
                path = path.format(*m.groups())
                if layer < num_layers:
                    stacked.setdefault(path, {})[layer] = arr
            else:
                flat[path] = arr
            break
    for path, layers in stacked.items():
        flat[path] = np.stack([layers[i] for i in range(num_layers)])
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, arr in flat.items():
        var = params[tuple(path.split("/"))]
        assert var.get_value().shape == arr.shape, (path, var.get_value().shape, arr.shape)
        var.set_value(jnp.asarray(arr, var.get_value().dtype))
    return set(flat)


def hf_qwen2(t, tied: bool, seed: int):
    """A transformers Qwen2ForCausalLM of config.model.text `t`'s sizes, with non-trivial norm weights and biases
    (a missed copy cannot hide behind ones/zeros)."""
    torch.manual_seed(seed)
    hf = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta}, rms_norm_eps=t.rms_norm_eps,
        max_position_embeddings=t.max_position_embeddings, tie_word_embeddings=tied)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_text_parity(tied):
    cfg = tiny.get_config().model
    cfg.text.tie_word_embeddings = tied
    t = cfg.text
    hf = hf_qwen2(t, tied, seed=0)
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(1))
    state_dict = {k: v for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    written = copy_torch_weights(model, state_dict, QWEN_RULES, t.num_layers)
    expected = {"/".join(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))
                if p[0] == "llm" or p[0] == "lm_head"}
    assert written == expected
    assert hasattr(model, "lm_head") != tied

    rng = np.random.RandomState(0)
    ids = rng.randint(4, t.vocab_size, size=(2, 11)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0                                   # right padding on sample 1
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = np.asarray(model(jnp.asarray(ids, jnp.int32), None, jnp.asarray(mask, jnp.int32)).logits)
    assert got.dtype == np.float32
    valid = mask.astype(bool)
    err = np.abs(got - want)[valid].max()
    assert err <= 1e-4, err


def test_siglip_vision_parity_drops_last_layer_and_skips_post_layernorm():
    cfg = tiny.get_config().model
    v = cfg.vision
    torch.manual_seed(0)
    hf = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers + 1,
        num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
        layer_norm_eps=v.layer_norm_eps, vision_use_head=False)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(1))
    written = copy_torch_weights(model, hf.state_dict(), SIGLIP_RULES, v.num_layers)
    assert written == {"/".join(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[0] == "vision"}
    pix = np.random.RandomState(0).randn(3, v.image_size, v.image_size, 3).astype(np.float32)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(pix).permute(0, 3, 1, 2), output_hidden_states=True)
    # hidden_states[k] is the output of layer k (index 0 = embeddings), before post_layernorm.
    want = out.hidden_states[v.num_layers].numpy()
    got = np.asarray(model.vision(jnp.asarray(pix)))
    assert got.shape == (3, (v.image_size // v.patch_size) ** 2, v.hidden_size)
    err = np.abs(got - want).max()
    assert err <= 1e-4, err
    # Sanity: the post-LN output of the full tower is something else.
    assert np.abs(got - out.last_hidden_state.numpy()).max() > 1e-2


def test_qwen2_tapped_hidden_states_match_hf_output_hidden_states():
    """The per-layer states the action heads train on under config.train.action_loss_layers="all_layers" are
    HF's output_hidden_states (embeddings, every layer's output, the last after the final norm) at the tap."""
    cfg = tiny.get_config().model
    cfg.text.num_layers = 3
    t = cfg.text
    hf = hf_qwen2(t, tied=False, seed=1)
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(1))
    copy_torch_weights(model, hf.state_dict(), QWEN_RULES, t.num_layers)
    rng = np.random.RandomState(1)
    ids = rng.randint(4, t.vocab_size, size=(2, 9)).astype(np.int64)
    tap = np.array([[8, 3], [5, 0]], np.int32)
    with torch.no_grad():
        want = [h.numpy() for h in hf(input_ids=torch.from_numpy(ids), output_hidden_states=True).hidden_states]
    embeds = model.llm.embed_tokens(jnp.asarray(ids, jnp.int32))
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    hidden, taps = model.llm(embeds, positions, tap=jnp.asarray(tap))
    taps = np.asarray(taps)
    assert taps.shape == (t.num_layers + 1, 2, 2, t.hidden_size)
    for k, layer_states in enumerate(want):
        expected = np.take_along_axis(layer_states, tap[..., None].astype(np.int64), axis=1)
        np.testing.assert_allclose(taps[k], expected, atol=1e-4, rtol=0, err_msg=f"hidden_states[{k}]")
    np.testing.assert_array_equal(taps[-1], np.take_along_axis(np.asarray(hidden), tap[..., None], axis=1))
