"""transformers LlavaOnevision <-> JAX: logits parity, round trip through Orbax + export, sharded import, bf16."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors import safe_open
from safetensors.torch import save_file as torch_save_file
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                          SiglipVisionConfig)

from configs import base
from llavaction_jax.model import build as model_build
from llavaction_jax import sharding as shd
from llavaction_jax.convert import api, common
from llavaction_jax.convert.mapping import CheckpointMismatchError

VIDEO_ID = 251
FRAMES, SIDE = 4, 32
NUM_FRAMES = 16        # the hf export's frame count for a model with no training config (the convert CLI's default)


def _hf_model(tied=False, seed=0):
    torch.manual_seed(seed)
    vis = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=SIDE, patch_size=8, vision_use_head=False)
    txt = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=1e6, tie_word_embeddings=tied)
    cfg = LlavaOnevisionConfig(vision_config=vis, text_config=txt, image_token_index=250, video_token_index=VIDEO_ID,
                               vision_feature_select_strategy="full", vision_feature_layer=-1,
                               image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
                               vision_aspect_ratio="anyres_max_9", tie_word_embeddings=tied)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():   # non-trivial norms and newline so a mapping mistake shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name or "image_newline" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = FRAMES * (SIDE // 8 // 2) ** 2 + 1                   # frames * ceil(side/2)^2 + 1 newline = 17
    pix = torch.randn(2, FRAMES, 3, SIDE, SIDE, generator=g)
    text = torch.randint(4, 240, (2, 8), generator=g)
    ids = torch.cat([text[:, :3], torch.full((2, n), VIDEO_ID), text[:, 3:]], dim=1)
    return ids, pix


def _jax_logits(model, ids, pix):
    pv = None if pix is None else jnp.asarray(pix.permute(0, 1, 3, 4, 2).numpy())
    out = model(jnp.asarray(ids.numpy(), jnp.int32), pv, jnp.ones(ids.shape, jnp.int32))
    return np.asarray(out.logits)


def _one_device_mesh():
    return shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    model = _hf_model()
    model.save_pretrained(d)
    with open(d / "tokenizer_config.json", "w") as f:       # stands in for the tokenizer files
        json.dump({"model_max_length": 512}, f)
    return str(d), model


def test_save_pretrained_writes_legacy_keys(hf_dir):
    path, _ = hf_dir
    with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "language_model.model.embed_tokens.weight" in keys
    assert "vision_tower.encoder.layers.1.mlp.fc2.weight" in keys
    assert api.detect_format(path) == "hf"


def test_video_text_and_vision_parity_fp32(hf_dir):
    path, hf_model = hf_dir
    model, config = api.load_pretrained(path, mesh=_one_device_mesh())
    assert config.model.video_token_id == VIDEO_ID
    assert config.model.newline_position == "one_token" and config.model.pool_mode == "bilinear"
    assert config.model.text.rope_theta == 1e6 and config.model.vision.num_layers == 2
    ids, pix = _inputs()
    with torch.no_grad():
        ref = hf_model(input_ids=ids, pixel_values_videos=pix).logits.numpy()
        ref_text = hf_model(input_ids=ids[:, -5:]).logits.numpy()
        ref_vision = hf_model.model.vision_tower(pix[0], output_hidden_states=True).hidden_states[-1].numpy()
    err_video = np.abs(_jax_logits(model, ids, pix) - ref).max()
    err_text = np.abs(_jax_logits(model, ids[:, -5:], None) - ref_text).max()
    vision = np.asarray(model.vision(jnp.asarray(pix[0].permute(0, 2, 3, 1).numpy())))
    err_vision = np.abs(vision - ref_vision).max()
    print(f"parity max abs diff: video logits {err_video:.2e}, text logits {err_text:.2e}, SigLIP {err_vision:.2e}")
    assert err_video <= 1e-4 and err_text <= 1e-4 and err_vision <= 1e-4


def test_round_trip_import_export_from_pretrained(hf_dir, tmp_path):
    path, hf_model = hf_dir
    info = api.import_checkpoint(path, str(tmp_path / "orbax"), "hf", mesh=_one_device_mesh())
    assert info["format"] == "hf" and info["expected_unused_keys"] == []
    assert os.path.isfile(tmp_path / "orbax" / "tokenizer_config.json")
    # Small shard cap: forces several shards + an index, which from_pretrained must follow.
    out = api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "hf_out"), "hf",
                                mesh=_one_device_mesh(), max_shard_bytes=60_000, num_frames=NUM_FRAMES)
    assert os.path.isfile(tmp_path / "hf_out" / "model.safetensors.index.json")
    assert os.path.isfile(tmp_path / "hf_out" / "generation_config.json")
    assert os.path.isfile(tmp_path / "hf_out" / "tokenizer_config.json")
    with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
        assert set(out["keys"]) == set(f.keys())
    # The sharded export (index.json + 3 shards) imports back to the same parameters.
    again, _ = api.load_pretrained(str(tmp_path / "hf_out"), mesh=_one_device_mesh())
    first, _ = api.load_pretrained(str(tmp_path / "orbax"), mesh=_one_device_mesh())
    a, b = common.flat_params(nnx.state(first)), common.flat_params(nnx.state(again))
    for p in a:
        np.testing.assert_array_equal(np.asarray(a[p].get_value()), np.asarray(b[p].get_value()), err_msg=p)
    with pytest.raises(CheckpointMismatchError) as e:   # Orbax side: every mismatch listed with both shapes
        api.load_pretrained(str(tmp_path / "orbax"), mesh=_one_device_mesh(),
                            config_overrides={"text.intermediate_size": 96})
    assert ("parameter 'llm/layers/mlp/up_proj/kernel' has shape (2, 64, 128) in the checkpoint but (2, 64, 96) in "
            "this model") in str(e.value)
    assert "shape mismatches (3)" in str(e.value)
    reloaded = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tmp_path / "hf_out")).eval()
    ids, pix = _inputs(1)
    with torch.no_grad():
        a = hf_model(input_ids=ids, pixel_values_videos=pix).logits.numpy()
        b = reloaded(input_ids=ids, pixel_values_videos=pix).logits.numpy()
    assert np.abs(a - b).max() <= 1e-5


def test_tied_embeddings_and_v5_in_memory_names(tmp_path):
    hf_model = _hf_model(tied=True, seed=1)
    src = tmp_path / "v5"
    hf_model.save_pretrained(src)
    with safe_open(os.path.join(src, "model.safetensors"), "np") as f:
        assert not any("lm_head" in k for k in f.keys())
    # Rewrite the weights under the v5 in-memory names (model.language_model..., lm_head dropped: tied).
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    assert any(k.startswith("model.language_model.") for k in state)
    os.remove(src / "model.safetensors")
    torch_save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    mesh = _one_device_mesh()
    model, config = api.load_pretrained(str(src), mesh=mesh)
    assert config.model.text.tie_word_embeddings
    ids, pix = _inputs(2)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, pixel_values_videos=pix).logits.numpy()
    assert np.abs(_jax_logits(model, ids, pix) - ref).max() <= 1e-4
    out = api.export_model(model, config.model, str(tmp_path / "out"), "hf", num_frames=NUM_FRAMES)
    assert "language_model.lm_head.weight" not in out["keys"]
    reloaded = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        assert np.abs(reloaded(input_ids=ids, pixel_values_videos=pix).logits.numpy() - ref).max() <= 1e-5


def test_sharded_import_matches_unsharded(hf_dir):
    path, _ = hf_dir
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded, config = api.load_pretrained(path, mesh=mesh)
    single, _ = api.load_pretrained(path, mesh=_one_device_mesh())
    abstract = model_build.abstract_model(config.model, mesh)
    want = common.flat_params(nnx.state(abstract))
    got = common.flat_params(nnx.state(sharded))
    ref = common.flat_params(nnx.state(single))
    assert set(got) == set(want) == set(ref)
    for p in got:
        arr = got[p].get_value()
        assert arr.sharding.is_equivalent_to(want[p].get_value().sharding, arr.ndim), p
        np.testing.assert_array_equal(np.asarray(arr), np.asarray(ref[p].get_value()), err_msg=p)
    # Spot checks against the default rule table (embed -> fsdp, mlp/heads/vocab -> tensor).
    assert got["llm/layers/mlp/gate_proj/kernel"].get_value().sharding.spec == P(None, "fsdp", "tensor")
    assert got["llm/embed_tokens/embedding"].get_value().sharding.spec == P("tensor", "fsdp")
    assert len(got["llm/layers/mlp/gate_proj/kernel"].get_value().addressable_shards) == 8


def test_bf16_checkpoint_stays_bf16(tmp_path):
    hf_model = _hf_model(seed=3).to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path / "bf16")
    info = api.import_checkpoint(str(tmp_path / "bf16"), str(tmp_path / "orbax"), "hf", mesh=_one_device_mesh())
    assert info["param_dtype"] == "bfloat16"
    model, config = api.load_pretrained(str(tmp_path / "orbax"), mesh=_one_device_mesh())
    assert config.model.param_dtype == "bfloat16"
    leaves = jax.tree.leaves(nnx.state(model))
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    emb = common.flat_params(nnx.state(model))["llm/embed_tokens/embedding"].get_value()
    want = hf_model.model.language_model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(emb).astype(np.float32), want)     # bit-exact, no rounding trip
    api.export_checkpoint(str(tmp_path / "orbax"), str(tmp_path / "out"), "hf", mesh=_one_device_mesh(),
                          num_frames=NUM_FRAMES)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.load(open(tmp_path / "out" / "config.json"))["dtype"] == "bfloat16"
    as_f32, config = api.load_pretrained(str(tmp_path / "orbax"), dtype="float32", mesh=_one_device_mesh())
    emb32 = common.flat_params(nnx.state(as_f32))["llm/embed_tokens/embedding"].get_value()
    assert config.model.param_dtype == "float32" and emb32.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(emb32), want)


def test_hf_has_no_action_heads_listed_as_missing(hf_dir):
    path, _ = hf_dir
    with pytest.raises(CheckpointMismatchError) as e:
        api.load_pretrained(path, mesh=_one_device_mesh(), config_overrides={"action_token": True})
    msg = str(e.value)
    for p in ("action/token", "action/verb_head/kernel", "action/noun_head/kernel", "action/action_head/kernel"):
        assert p in msg
    # Explicitly allowed: the action parameters are initialised by the model, everything else is loaded.
    model, config = api.load_pretrained(path, mesh=_one_device_mesh(), config_overrides={"action_token": True},
                                        allow_missing=["^action/"])
    assert config.model.action_token
    flat = common.flat_params(nnx.state(model))
    assert np.asarray(flat["action/verb_head/kernel"].get_value()).std() > 0


def test_export_from_training_checkpoint(hf_dir, tmp_path):
    """A trainer checkpoint (<workdir>/checkpoints/<step>/{state,data,config}) exports to HF directly."""
    from llavaction_jax.train.checkpointing import Checkpointer, config_to_dict
    path, hf_model = hf_dir
    mesh = _one_device_mesh()
    api.import_checkpoint(path, str(tmp_path / "orbax"), "hf", mesh=mesh)
    model, config = api.load_pretrained(str(tmp_path / "orbax"), mesh=mesh, defaults=base.get_base_config())
    config.train.init_from = str(tmp_path / "orbax")
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = {"params": params, "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)},
             "step": jnp.zeros((), jnp.int32), "rng": jnp.zeros((2,), jnp.uint32)}
    ckpt = Checkpointer(str(tmp_path / "work" / "checkpoints"), async_save=False)
    ckpt.save(7, state, {"epoch": 0}, config_to_dict(config))
    ckpt.close()
    assert api.detect_format(str(tmp_path / "work")) == "train"
    api.export_checkpoint(str(tmp_path / "work"), str(tmp_path / "hf_out"), "hf", mesh=mesh)
    assert os.path.isfile(tmp_path / "hf_out" / "tokenizer_config.json")    # reused from init_from
    reloaded = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tmp_path / "hf_out")).eval()
    ids, pix = _inputs(4)
    with torch.no_grad():
        a = hf_model(input_ids=ids, pixel_values_videos=pix).logits.numpy()
        b = reloaded(input_ids=ids, pixel_values_videos=pix).logits.numpy()
    assert np.abs(a - b).max() <= 1e-5


def test_config_variants_and_key_aliases():
    """vision_feature_layer=-2 uses N-1 layers (the rest are expected unused); hub/v5 key names are accepted."""
    from llavaction_jax.convert.formats import hf
    cj = {"model_type": "llava_onevision", "video_token_index": 151647, "vision_feature_layer": -2,
          "vision_feature_select_strategy": "full",
          "text_config": {"model_type": "qwen2", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
                          "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                          "rope_theta": 5e5, "tie_word_embeddings": True},
          "vision_config": {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}}
    m = base.model_config()
    notes = hf.parse_config(cj, {}, m)
    assert (m.vision.num_layers, m.vision.intermediate_size, m.vision.image_size) == (2, 3072, 224)
    assert (m.text.rope_theta, m.text.head_dim, m.text.tie_word_embeddings, m.video_token_id) == (5e5, 16, True,
                                                                                                  151647)
    assert notes and "2..2 are unused" in notes[0]
    unused = hf.expected_unused(m)
    assert unused("vision_tower.encoder.layers.2.mlp.fc1.weight")
    assert not unused("vision_tower.encoder.layers.1.mlp.fc1.weight")
    assert hf.canonical_key("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == \
        "vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert hf.canonical_key("model.language_model.norm.weight") == "language_model.model.norm.weight"
    assert hf.canonical_key("lm_head.weight") == "language_model.lm_head.weight"
    with pytest.raises(ValueError, match="vision_feature_select_strategy='default'"):
        hf.parse_config(dict(cj, vision_feature_select_strategy="default"), {}, base.model_config())


def test_trainer_init_from_converted_checkpoint(hf_dir, tmp_path):
    """train.init_from = an Orbax dir from `convert import`: params land in the trainer's shardings."""
    from configs import tiny
    from llavaction_jax.train import loop, state as state_lib
    path, _ = hf_dir
    api.import_checkpoint(path, str(tmp_path / "orbax"), "hf", mesh=_one_device_mesh())
    ref, imported = api.load_pretrained(str(tmp_path / "orbax"), mesh=_one_device_mesh())
    config = tiny.get_config()
    config.model = imported.model
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    setup = state_lib.build_setup(config, mesh)
    params = loop._load_pretrained_params(str(tmp_path / "orbax"), setup, config)
    state = state_lib.init_state_from_params(setup, config, params)
    want = nnx.to_pure_dict(nnx.state(ref, nnx.Param))
    got = state["params"]
    for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))
    kernel = got["llm"]["layers"]["mlp"]["gate_proj"]["kernel"]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")


_WORKER = r'''
import os, sys
pid, port, src, ref, orbax_dir, out = int(sys.argv[1]), sys.argv[2], *sys.argv[3:7]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[7])
import jax
import numpy as np
from flax import nnx
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=120)
from llavaction_jax import sharding as shd
from llavaction_jax.convert import api, common
mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 1})
model, _ = api.load_pretrained(src, mesh=mesh)
want = np.load(ref)
for path, var in common.flat_params(nnx.state(model)).items():
    arr = var.get_value()
    assert not arr.is_fully_addressable and len(arr.addressable_shards) == 2, path
    for shard in arr.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), want[path][shard.index], err_msg=path)
gate = common.flat_params(nnx.state(model))["llm/layers/mlp/gate_proj/kernel"].get_value()
assert gate.shape == (2, 64, 128) and gate.addressable_shards[0].data.shape == (2, 16, 128)   # embed / 4 hosts
if pid == 0:
    # Process 0 writes model_config.json etc. after the collective save; make it slow so that a process
    # returning from import before those files exist would fail its export (the race this test guards).
    import time
    _copy = common.copy_tokenizer_files
    common.copy_tokenizer_files = lambda *a, **k: (time.sleep(3), _copy(*a, **k))[1]
api.import_checkpoint(src, orbax_dir, "hf", mesh=mesh)
api.export_checkpoint(orbax_dir, out, "hf", mesh=mesh, num_frames=16)
jax.distributed.shutdown()
print("worker", pid, "ok")
'''


def test_two_process_import_and_export(hf_dir, tmp_path):
    """2 processes x 2 CPU devices, params FSDP-sharded across hosts: each host reads only its shards;
    Orbax save and the all-gathered export (written by process 0) reproduce the source tensors exactly."""
    import socket
    import subprocess
    import sys
    path, _ = hf_dir
    single, _ = api.load_pretrained(path, mesh=_one_device_mesh())
    ref = tmp_path / "ref.npz"
    np.savez(ref, **{p: np.asarray(v.get_value()) for p, v in common.flat_params(nnx.state(single)).items()})
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = [str(port), path, str(ref), str(tmp_path / "orbax"), str(tmp_path / "out"), repo]
    # Logs go to files: a full stdout pipe would block one worker inside a collective and hang the other.
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(worker), str(i)] + args, env=env, stdout=logs[i],
                              stderr=subprocess.STDOUT) for i in range(2)]
    try:
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p, log in zip(procs, logs):
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    for i, p in enumerate(procs):
        out = (tmp_path / f"worker{i}.log").read_text()
        assert p.returncode == 0 and f"worker {i} ok" in out, out[-3000:]
    with safe_open(os.path.join(path, "model.safetensors"), "np") as a, \
            safe_open(str(tmp_path / "out" / "model.safetensors"), "np") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            np.testing.assert_array_equal(a.get_tensor(k), b.get_tensor(k), err_msg=k)
