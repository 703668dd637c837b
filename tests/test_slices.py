"""Cloud TPU slice names: every shipped config's topology names have the chips Cloud TPU gives that type."""
import importlib
import os
import types

import pytest

from llavaction_jax import slices

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Chips per accelerator type, from the Cloud TPU docs' tables (v4 / v5p count TensorCores, 2 per chip;
# v5e / v6e count chips).
CLOUD_TPU_CHIPS = {"v5p-8": 4, "v5p-16": 8, "v5p-32": 16, "v5p-128": 64, "v5p-256": 128, "v5p-512": 256,
                   "v5p-1024": 512, "v4-8": 4, "v4-16": 8, "v5e-4": 4, "v5e-8": 8, "v6e-4": 4, "v6e-16": 16}


def shipped_topologies():
    out = []
    for name in sorted(f[:-3] for f in os.listdir(os.path.join(REPO_ROOT, "configs")) if f.endswith(".py")):
        module = importlib.import_module(f"configs.{name}")
        out += [(name, arg, entry) for arg, entry in getattr(module, "TOPOLOGIES", {}).items()]
    return out


def test_every_shipped_topology_has_the_chips_cloud_tpu_gives_its_name():
    entries = shipped_topologies()
    assert {c for c, _, _ in entries} == {"llavaction_0p5b", "llavaction_7b", "llava_video_72b"}
    for config, arg, (topology, mesh, accum, *_) in entries:
        assert arg in CLOUD_TPU_CHIPS, f"{config}:{arg} is not a Cloud TPU accelerator type we know"
        assert slices.topology_chips(topology) == CLOUD_TPU_CHIPS[arg], f"{config}:{arg} -> {topology}"
        assert slices.parse_accelerator_type(arg)[1] == CLOUD_TPU_CHIPS[arg]
        # The mesh uses every chip of the slice.
        assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] == CLOUD_TPU_CHIPS[arg], f"{config}:{arg}"
        cfg = importlib.import_module(f"configs.{config}").get_config(arg)
        assert (cfg.aot.topology, cfg.aot.accelerator_type) == (topology, arg)
    # The smallest slice of each model is its default (first) entry.
    for config in ("llavaction_0p5b", "llavaction_7b", "llava_video_72b"):
        cfg = importlib.import_module(f"configs.{config}").get_config()
        assert cfg.aot.accelerator_type == next(a for c, a, _ in entries if c == config)


def test_accelerator_type_names():
    assert slices.parse_accelerator_type("v5p-16") == ("v5p", 8)
    assert slices.parse_accelerator_type("v5litepod-4") == ("v5e", 4)
    assert slices.parse_accelerator_type("v6e-8") == ("v6e", 8)
    assert slices.parse_accelerator_type("v4-32") == ("v4", 16)
    assert [s.accelerator_type for s in slices.family_slices("v5p")[:5]] == [
        "v5p-8", "v5p-16", "v5p-32", "v5p-64", "v5p-128"]
    assert slices.family_slices("v5p")[7].shape == "8x8x8" and slices.family_slices("v5p")[7].chips == 512
    assert slices.slice_for_topology("v5e:2x2").accelerator_type == "v5e-4"
    with pytest.raises(ValueError, match="'v5p-9': a v5p slice has 2 TensorCores per chip"):
        slices.parse_accelerator_type("v5p-9")
    with pytest.raises(ValueError, match="not a Cloud TPU accelerator type"):
        slices.parse_accelerator_type("h100-8")


def test_a_topology_named_after_another_slice_is_refused():
    from configs import base
    with pytest.raises(ValueError, match=r"config topology 'v5p-8' is v5p:2x2x2, a v5p-16 in Cloud TPU's names"):
        base.use_topology(base.get_base_config(), {"v5p-8": ("v5p:2x2x2", dict(data=1, fsdp=8, tensor=1), 1)},
                          None)


def _tpu(slice_index=0):
    return types.SimpleNamespace(platform="tpu", slice_index=slice_index)


def test_running_slice_must_match_the_config():
    devices = [_tpu() for _ in range(8)]
    slices.check_running_slice("v5p-16", devices, env_type="v5p-16")             # matches: nothing raised
    slices.check_running_slice("", devices, env_type="v5p-8")                    # no expectation: nothing
    slices.check_running_slice("v5p-16", [types.SimpleNamespace(platform="cpu")] * 3, env_type="")   # not TPU
    with pytest.raises(ValueError, match=r"^this TPU slice is a v5p-8 \(4 chips\) but the config is sized for a "
                                         r"v5p-16 \(8 chips\)"):
        slices.check_running_slice("v5p-16", devices[:4], env_type="v5p-8")
    with pytest.raises(ValueError, match=r"this slice has 4 chips \(8 devices over 2 slice\(s\)\) but the config "
                                         r"is sized for a v5p-16 \(8 chips\)"):
        slices.check_running_slice("v5p-16", [_tpu(i // 4) for i in range(8)], env_type="")


def test_slices_add_data_parallelism_and_keep_the_global_batch():
    from configs import llavaction_7b
    cfg = llavaction_7b.get_config("v5p-16")
    assert cfg.train.grad_accum_steps == 32
    cfg = slices.spread_over_slices(cfg, 2)
    assert cfg.train.grad_accum_steps == 16 and cfg.data.global_batch_size == 256
    assert cfg.mesh.dcn_data == -1 and (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (1, 8, 1)
    assert slices.spread_over_slices(cfg, 1).train.grad_accum_steps == 16
