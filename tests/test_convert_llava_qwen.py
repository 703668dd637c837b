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

from llavaction_jax.model import build as model_build
from llavaction_jax import sharding as shd
from llavaction_jax.convert import api, common
from llavaction_jax.convert.formats import llava_qwen
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
    return {p: np.asarray(v.get_value()) for p, v in common.flat_params(nnx.state(model)).items()}


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
    model_cfg, notes = llava_qwen.read_config(str(tmp_path / "src"))
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
        api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "a"), "hf", mesh=_mesh(), num_frames=16)
    with pytest.raises(ValueError, match="video_token_id=ID"):
        api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "b"), "hf", mesh=_mesh(),
                              allow_layout_change=True, num_frames=16)
    out = api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "c"), "hf", mesh=_mesh(),
                                allow_layout_change=True, config_overrides={"video_token_id": 251}, num_frames=16)
    assert out["dropped_params"] == ["action/action_head/kernel", "action/noun_head/kernel", "action/token",
                                     "action/verb_head/kernel"]
    reloaded = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tmp_path / "c")).eval()
    assert reloaded.config.video_token_index == 251
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = hf_model(input_ids=ids).logits.numpy()
        b = reloaded(input_ids=ids).logits.numpy()
    assert np.abs(a - b).max() <= 1e-5


def _real_llava_qwen_shapes(h, inter, layers, heads, kv, vocab, actions, v_layers=27):
    """Key -> PyTorch shape of a real LLaVA-Video/LLaVAction llava_qwen checkpoint (SigLIP so400m)."""
    hd = h // heads
    s = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h),
         "model.image_newline": (h,), "model.action_supervision": (1, h),
         "model.mm_projector.0.weight": (h, 1152), "model.mm_projector.0.bias": (h,),
         "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,)}
    for name, c in zip(("verb_head", "noun_head", "action_head"), actions):
        s[f"{name}.weight"] = (c, h)
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({p + "self_attn.q_proj.weight": (heads * hd, h), p + "self_attn.q_proj.bias": (heads * hd,),
                  p + "self_attn.k_proj.weight": (kv * hd, h), p + "self_attn.k_proj.bias": (kv * hd,),
                  p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.v_proj.bias": (kv * hd,),
                  p + "self_attn.o_proj.weight": (h, heads * hd), p + "mlp.gate_proj.weight": (inter, h),
                  p + "mlp.up_proj.weight": (inter, h), p + "mlp.down_proj.weight": (h, inter),
                  p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    vp = "model.vision_tower.vision_tower.vision_model."
    s.update({vp + "embeddings.patch_embedding.weight": (1152, 3, 14, 14), vp + "embeddings.patch_embedding.bias":
              (1152,), vp + "embeddings.position_embedding.weight": (729, 1152), vp + "post_layernorm.weight": (1152,),
              vp + "post_layernorm.bias": (1152,)})
    for i in range(v_layers):
        p = vp + f"encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            s[p + n + ".weight"] = s[p + n + ".bias"] = (1152,)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"self_attn.{n}.weight"], s[p + f"self_attn.{n}.bias"] = (1152, 1152), (1152,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (4304, 1152), (4304,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (1152, 4304), (1152,)
    return s


def test_real_7b_checkpoint_layout_maps_onto_llavaction_7b_config():
    """Header-level check (no tensors): LLaVAction-7B's keys/shapes + config.json give configs/llavaction_7b."""
    from configs import base, llavaction_7b
    from llavaction_jax.convert.mapping import match
    shapes = _real_llava_qwen_shapes(3584, 18944, 28, 28, 4, 152064, (97, 300, 3806))
    cj = {"model_type": "llava_qwen", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
          "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 151647, "rope_theta": 1e6,
          "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "tie_word_embeddings": True,
          "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_projector_type": "mlp2x_gelu",
          "mm_patch_merge_type": "spatial_unpad", "mm_spatial_pool_mode": "bilinear", "mm_newline_position": "grid",
          "vision_supervision": "one_token", "action_types": "97,300,3806"}
    m = base.model_config()
    notes = llava_qwen.parse_config(cj, shapes, m)
    want = llavaction_7b.get_config().model
    assert m.text.to_dict() == want.text.to_dict()
    assert m.vision.to_dict() == want.vision.to_dict()
    assert (m.action_token, tuple(m.action_types), m.newline_position, m.pool_mode) == (
        True, (97, 300, 3806), "grid", "bilinear")
    assert len(notes) == 3                       # vocab 151647 -> 152064, tied -> untied, tower inferred
    assert ("vision tower inferred from the checkpoint tensors (config.json has no vision sizes): hidden 1152, "
            "mlp 4304, 27 layers in the checkpoint -> 26 used, 16 heads") in notes[-1]
    mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    abstract = common.flat_params(nnx.state(model_build.abstract_model(m, mesh), nnx.Param))
    plan = match(llava_qwen.rules(m), {p: v.get_value().shape for p, v in abstract.items()}, shapes,
                 llava_qwen.expected_unused(m), "LLaVAction-7B")
    assert len(plan.expected_unused) == 16 and all(".encoder.layers.26." in k for k in plan.expected_unused)
    assert sum(int(np.prod(v.get_value().shape)) for v in abstract.values()) == sum(
        int(np.prod(s)) for k, s in shapes.items() if ".encoder.layers.26." not in k)


def test_tower_sizes_inferred_when_config_has_none(hf_model, tmp_path, caplog):
    """The original config.json has no vision sizes: a non-so400m tower is read off the tensors (width, MLP,
    layer count, patch, image size), named in one note, and loads with no mismatch."""
    write_llava_qwen(tmp_path / "src", hf_model, action=True)
    cfg_path = tmp_path / "src" / "config.json"
    cj = json.loads(cfg_path.read_text())
    del cj["vision_config"]
    cfg_path.write_text(json.dumps(cj))
    model_cfg, notes = llava_qwen.read_config(str(tmp_path / "src"), config_overrides={"vision.num_heads": 4})
    v = model_cfg.vision
    assert (v.hidden_size, v.intermediate_size, v.num_layers, v.patch_size, v.image_size) == (32, 64, 2, 8, SIDE)
    [note] = [n for n in notes if n.startswith("vision tower inferred")]
    assert "hidden 32, mlp 64, 3 layers in the checkpoint -> 2 used" in note and "--override vision.num_heads" in note
    with caplog.at_level("INFO", logger="llavaction_jax"):
        api.load_pretrained(str(tmp_path / "src"), mesh=_mesh(), config_overrides={"vision.num_heads": 4})
    assert any("vision tower inferred" in r.getMessage() for r in caplog.records)
    cj["mm_hidden_size"] = 48
    cfg_path.write_text(json.dumps(cj))
    pe_key = llava_qwen.VISION_PREFIX + "embeddings.patch_embedding.weight"
    with pytest.raises(ValueError) as err:
        llava_qwen.read_config(str(tmp_path / "src"))
    assert str(err.value) == (f"mm_hidden_size=48 but tensor {pe_key!r} has 32 channels ({cfg_path} / "
                              f"{tmp_path / 'src' / 'model.safetensors'}): mm_hidden_size equal to the vision "
                              "tower's width")


def _tower_dir(path, tensors, **config):
    """A llava_qwen dir with only `tensors` (tiny arrays: read_config reads headers) and a minimal config.json."""
    path.mkdir()
    cj = {"model_type": "llava_qwen", "mm_vision_tower": "google/siglip-so400m-patch14-384",
          "mm_patch_merge_type": "spatial_unpad", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 512}
    (path / "config.json").write_text(json.dumps(dict(cj, **config)))
    save_file({k: np.zeros(shape, np.float32) for k, shape in tensors.items()}, str(path / "model.safetensors"))
    return str(path)


def test_tower_inference_errors_name_the_file_and_the_field(tmp_path):
    """Every error of reading the vision sizes off the tensors (and of config.json's fields) names the file:
    config.json's path with the key, or the safetensors file with the tensor."""
    pre = llava_qwen.VISION_PREFIX
    tower = {pre + "embeddings.patch_embedding.weight": (32, 3, 8, 8),
             pre + "embeddings.position_embedding.weight": (16, 32),
             pre + "encoder.layers.0.mlp.fc1.weight": (64, 32)}
    src = _tower_dir(tmp_path / "ok", tower)
    assert llava_qwen.read_config(src)[0].vision.hidden_size == 32          # the dir reads when nothing is wrong

    src = _tower_dir(tmp_path / "no_tower", {"model.norm.weight": (64,)})
    with pytest.raises(ValueError) as err:
        llava_qwen.read_config(src)
    assert str(err.value) == (f"no SigLIP tower tensor '{pre}embeddings.patch_embedding.weight' (and 2 more) "
                              f"({src}/*.safetensors): the vision tower's tensors under '{pre}' (config.json has "
                              "no vision sizes; they are read off these)")

    src = _tower_dir(tmp_path / "grid", dict(tower, **{pre + "embeddings.position_embedding.weight": (15, 32)}))
    with pytest.raises(ValueError) as err:
        llava_qwen.read_config(src)
    assert str(err.value) == (f"tensor '{pre}embeddings.position_embedding.weight' has 15 rows "
                              f"({src}/model.safetensors): a square patch grid (side x side rows)")

    src = _tower_dir(tmp_path / "size", tower, hidden_size="big")
    with pytest.raises(ValueError) as err:
        llava_qwen.read_config(src)
    assert str(err.value) == f"{src}/config.json: hidden_size='big' is not a number"

    src = _tower_dir(tmp_path / "proj", tower, mm_projector_type="linear")
    with pytest.raises(ValueError) as err:
        llava_qwen.read_config(src)
    assert str(err.value) == f"{src}/config.json: mm_projector_type='linear', expected 'mlp2x_gelu'"
