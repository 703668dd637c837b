"""Multi-slice (hybrid ICI x DCN) train steps and mesh errors by AOT for TPU topologies (needs libtpu)."""
import os
import subprocess
import sys

import pytest

from configs import tiny

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install libtpu==0.0.42.1)")

from llavaction_jax import aot, slices  # noqa: E402  (aot sets the libtpu env defaults before it loads)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_compiles_on_two_v5p_slices():
    """The config's mesh is the per-slice mesh (fsdp 8 on one v5p 2x2x2); two slices make 'data' 2 over DCN and
    halve the accumulation count, so the global batch and each chip's micro-batch stay what they were."""
    cfg = tiny.get_config()
    cfg.mesh.update(data=1, fsdp=8, tensor=1)
    cfg.data.global_batch_size, cfg.train.grad_accum_steps = 32, 4
    cfg = slices.spread_over_slices(cfg, 2)
    devices = aot.topology_devices("v5p:2x2x2", num_slices=2)
    assert len(devices) == 16 and {d.slice_index for d in devices} == {0, 1}
    report = aot.compile_train_step(cfg, devices, "2 x v5p:2x2x2", count_flops=False)
    assert report.mesh == {"data": 2, "fsdp": 8, "tensor": 1}
    assert (report.num_devices, report.global_batch, report.grad_accum_steps) == (16, 32, 2)
    assert report.fits and report.flops_per_device > 0


def test_a_mesh_the_topology_cannot_hold_is_one_line():
    cmd = [sys.executable, "-m", "llavaction_jax.aot", "--config", "configs/tiny.py", "--topology", "v5p:4x4x4",
           "--config.mesh.data=1", "--config.mesh.fsdp=8", "--config.mesh.tensor=8", "--noflops"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: mesh data=1 fsdp=8 tensor=8 does not fit the 4x4x4 torus of TPU v5 (one slice): each "
                      "of data, fsdp, tensor must be one of [1, 4, 16, 64] (a product of torus dimensions) and "
                      "together use each dimension once (--topology v5p:4x4x4)"]
