"""Original LLaVA-NeXT / LLaVAction (llava_qwen) checkpoints: parity, lossless round trip, quirks, errors, CLI."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                          SiglipVisionConfig)

from llavaction_jax import sharding as shd
from llavaction_jax.convert import api
from llavaction_jax.convert.__main__ import main as cli_main
from llavaction_jax.convert.mapping import CheckpointMismatchError

FRAMES, SIDE, H = 4, 32, 64
ACTIONS = (5, 7, 11)


def _hf_model(seed=0):
    torch.manual_seed(seed)
    vis = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=SIDE, patch_size=8, vision_use_head=False)
    txt = Qwen2Config(vocab_size=256, hidden_size=H, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e6,
                      tie_word_embeddings=False)
    cfg = LlavaOnevisionConfig(vision_config=vis, text_config=txt, image_token_index=250, video_token_index=251,
                               vision_feature_select_strategy="full", vision_feature_layer=-1,
                               image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
                               vision_aspect_ratio="anyres_max_9")
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "image_newline" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _original_name(k):
    """transformers v5 in-memory name -> LLaVA-NeXT llava_qwen name."""
    for old, new in [("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
                     ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
                     ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
                     ("model.language_model.", "model.")]:
        if k.startswith(old):
            return new + k[len(old):]
    return k


def write_llava_qwen(path, hf_model, *, newline="grid", action=True, extra_layer=True, config_vocab=256,
                     config_tied=False, dtype=np.float32, drop=(), add=None, reshape=None):
    """Synthetic llava_qwen checkpoint dir (original key names, LLaVA-NeXT config.json with mm_* keys)."""
    rng = np.random.default_rng(7)
    tensors = {_original_name(k): v.detach().numpy().astype(dtype) for k, v in hf_model.state_dict().items()}
    if extra_layer:   # the 27th-style SigLIP layer LLaVA-NeXT deletes at load time
        pre = "model.vision_tower.vision_tower.vision_model.encoder.layers."
        for k in [k for k in tensors if k.startswith(pre + "1.")]:
            tensors[pre + "2." + k[len(pre) + 2:]] = rng.normal(size=tensors[k].shape).astype(dtype)
    if action:
        tensors["model.action_supervision"] = rng.normal(size=(1, H)).astype(dtype)
        for name, c in zip(("verb_head", "noun_head", "action_head"), ACTIONS):
            tensors[f"{name}.weight"] = rng.normal(size=(c, H)).astype(dtype)
    for k in drop:
        del tensors[k]
    for k, shape in (reshape or {}).items():
        tensors[k] = np.zeros(shape, dtype)
    tensors.update(add or {})
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen", "hidden_act": "silu",
        "hidden_size": H, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
        "rope_scaling": None, "vocab_size": config_vocab, "tie_word_embeddings": config_tied,
        "torch_dtype": "float32", "use_cache": True, "image_aspect_ratio": "anyres_max_9",
        "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 32, "mm_vision_select_layer": -2, "mm_patch_merge_type": "spatial_unpad",
        "mm_spatial_pool_mode": "bilinear", "mm_newline_position": newline, "add_time_instruction": True,
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "image_size": SIDE, "patch_size": 8, "layer_norm_eps": 1e-6,
                          "hidden_act": "gelu_pytorch_tanh"},
    }
    if action:
        cfg.update(vision_supervision="one_token", action_types=",".join(map(str, ACTIONS)))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0"}, f)
    return tensors, cfg


def _mesh():
    return shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def _flat_np(model):
    return {p: np.asarray(v.get_value()) for p, v in api.flat_params(nnx.state(model)).items()}


@pytest.fixture(scope="module")
def hf_model():
    return _hf_model()


def test_llava_qwen_mapping_matches_hf_logits(hf_model, tmp_path):
    """Same weights under original key names + the one_token layout reproduce transformers' logits."""
    write_llava_qwen(tmp_path / "ckpt", hf_model, newline="one_token", action=False)
    assert api.detect_format(str(tmp_path / "ckpt")) == "llava_qwen"
    model, config = api.load_pretrained(str(tmp_path / "ckpt"), mesh=_mesh())
    m = config.model
    assert (m.video_token_id, m.vision.num_layers, m.newline_position, m.action_token) == (-200, 2, "one_token", False)
    g = torch.Generator().manual_seed(0)
    pix = torch.randn(1, FRAMES, 3, SIDE, SIDE, generator=g)
    n = FRAMES * 4 + 1
    text = [5, 6, 7, 8, 9]
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor([text[:2] + [251] * n + text[2:]]), pixel_values_videos=pix).logits
    ids = jnp.asarray([text[:2] + [-200] * n + text[2:]], jnp.int32)
    out = model(ids, jnp.asarray(pix.permute(0, 1, 3, 4, 2).numpy()), jnp.ones(ids.shape, jnp.int32))
    assert np.abs(np.asarray(out.logits) - ref.numpy()).max() <= 1e-4


def test_round_trip_is_lossless(hf_model, tmp_path):
    src = tmp_path / "src"
    tensors, cfg = write_llava_qwen(src, hf_model, newline="grid", action=True, extra_layer=True)
    info = api.import_checkpoint(str(src), str(tmp_path / "orbax"), "llava_qwen", mesh=_mesh())
    dropped = sorted(k for k in tensors if ".encoder.layers.2." in k)
    assert info["expected_unused_keys"] == dropped and len(dropped) == 16
    assert os.path.isfile(tmp_path / "orbax" / "tokenizer.json")
    out = api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "out"), "llava_qwen", mesh=_mesh())
    assert set(out["keys"]) == set(tensors) and out["extra_keys"] == dropped
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "np") as f:
        for k, v in tensors.items():
            np.testing.assert_array_equal(f.get_tensor(k), v, err_msg=k)
    exported_cfg = json.load(open(tmp_path / "out" / "config.json"))
    for key in cfg:   # original config keys kept with their values
        assert exported_cfg[key] == cfg[key], key
    first, c1 = api.load_pretrained(str(src), mesh=_mesh())
    second, c2 = api.load_pretrained(str(tmp_path / "out"), mesh=_mesh())
    assert c1.model.to_dict() == c2.model.to_dict()
    a, b = _flat_np(first), _flat_np(second)
    assert set(a) == set(b) and "action/action_head/kernel" in a
    for p in a:
        np.testing.assert_array_equal(a[p], b[p], err_msg=p)
    assert a["action/action_head/kernel"].shape == (H, ACTIONS[2])
    assert a["vision/encoder/layers/mlp/fc1/kernel"].shape == (2, 32, 64)     # 3 in the checkpoint, 2 used


def test_export_without_dropped_layer_writes_used_layers(hf_model, tmp_path):
    tensors, _ = write_llava_qwen(tmp_path / "src", hf_model, action=True, extra_layer=True)
    model, config = api.load_pretrained(str(tmp_path / "src"), mesh=_mesh())
    out = api.export_model(model, config.model, str(tmp_path / "out"), "llava_qwen")
    assert set(out["keys"]) == {k for k in tensors if ".encoder.layers.2." not in k}
    assert any("only the 2 vision layers" in n for n in out["notes"])
    assert json.load(open(tmp_path / "out" / "config.json"))["vision_config"]["num_hidden_layers"] == 3
    # ... and the user can hand the dropped layer back explicitly.
    out2 = api.export_model(model, config.model, str(tmp_path / "out2"), "llava_qwen",
                            extra_tensors=str(tmp_path / "src"))
    assert set(out2["keys"]) == set(tensors)


def test_vocab_and_tie_quirks(hf_model, tmp_path):
    # LLaVA-Video-7B: config.json vocab disagrees with the embedding rows; LLaVAction unties lm_head.
    write_llava_qwen(tmp_path / "src", hf_model, action=False, config_vocab=250, config_tied=True)
    raw, _, model_cfg, notes, _ = api.read_source(str(tmp_path / "src"), "llava_qwen")
    raw.close()
    assert model_cfg.text.vocab_size == 256 and not model_cfg.text.tie_word_embeddings
    assert any("vocab_size" in n for n in notes) and any("tie_word_embeddings" in n for n in notes)


def test_mismatches_are_listed_together(hf_model, tmp_path):
    bad = "model.layers.1.mlp.up_proj.weight"
    gone = "model.layers.0.self_attn.q_proj.bias"
    write_llava_qwen(tmp_path / "src", hf_model, action=True, drop=[gone, "noun_head.weight"],
                     reshape={bad: (100, H)}, add={"model.surprise.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointMismatchError) as e:
        api.load_pretrained(str(tmp_path / "src"), mesh=_mesh())
    msg = str(e.value)
    assert f"{bad}: checkpoint shape (100, 64) != expected (128, 64)" in msg
    assert "missing keys (2)" in msg and gone in msg and "noun_head.weight" in msg
    assert "unexpected keys (1)" in msg and "model.surprise.weight" in msg
    assert "encoder.layers.2." not in msg          # the dropped SigLIP layer is expected, not an error


def test_cli_import_export_and_bf16(hf_model, tmp_path, capsys):
    tensors, _ = write_llava_qwen(tmp_path / "src", hf_model, action=True, dtype=np.float32)
    import ml_dtypes
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    save_file(bf16, str(tmp_path / "src" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="looks like a 'llava_qwen' checkpoint"):
        cli_main(["import", "--format", "hf", str(tmp_path / "src"), str(tmp_path / "wrong")])
    cli_main(["import", "--format", "llava_qwen", str(tmp_path / "src"), str(tmp_path / "orbax")])
    info = json.loads(capsys.readouterr().out)
    assert info["param_dtype"] == "bfloat16" and len(info["expected_unused_keys"]) == 16
    cli_main(["export", "--format", "llava_qwen", str(tmp_path / "orbax"), str(tmp_path / "out")])
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "np") as f:
        assert set(f.keys()) == set(bf16)
        for k in ("model.embed_tokens.weight", "verb_head.weight", "model.mm_projector.0.weight"):
            assert f.get_slice(k).get_dtype() == "BF16"
            np.testing.assert_array_equal(f.get_tensor(k), bf16[k])


def test_import_llavaction_jax_stays_cheap():
    code = ("import sys, llavaction_jax; heavy = [m for m in ('jax', 'flax', 'orbax', 'torch') if m in sys.modules];"
            " assert not heavy, heavy; assert callable(llavaction_jax.load_pretrained)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_llava_qwen_to_hf_export(hf_model, tmp_path):
    """A grid-layout LLaVAction checkpoint exports to HF only when asked; action params are dropped and listed."""
    write_llava_qwen(tmp_path / "src", hf_model, newline="grid", action=True)
    api.import_checkpoint(str(tmp_path / "src"), str(tmp_path / "orbax"), "llava_qwen", mesh=_mesh())
    with pytest.raises(ValueError, match="allow_layout_change"):
        api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "a"), "hf", mesh=_mesh())
    with pytest.raises(ValueError, match="video_token_id=ID"):
        api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "b"), "hf", mesh=_mesh(),
                              allow_layout_change=True)
    out = api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "c"), "hf", mesh=_mesh(),
                                allow_layout_change=True, config_overrides={"video_token_id": 251})
    assert out["dropped_params"] == ["action/action_head/kernel", "action/noun_head/kernel", "action/token",
                                     "action/verb_head/kernel"]
    reloaded = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tmp_path / "c")).eval()
    assert reloaded.config.video_token_index == 251
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = hf_model(input_ids=ids).logits.numpy()
        b = reloaded(input_ids=ids).logits.numpy()
    assert np.abs(a - b).max() <= 1e-5
