"""Preemptible capacity: a run resumes on a different device / host count. Saved on 8 fake devices and
resumed on 4 (another mesh), and saved by 2 processes x 4 devices and resumed by 1 x 8: the restored weights
equal the saved ones exactly, the data position is the saved one, and the resumed losses follow the
uninterrupted 8-device run (to reduction-order rounding)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from llavaction_jax import sharding as shd
from llavaction_jax.train import checkpointing, state as state_lib

from tests.conftest import REPO_ROOT, free_port, trainer_env

COMMON = ["--config.train.synthetic_samples=16", "--config.train.synthetic_seq_len=64",
          "--config.train.log_every=1", "--config.train.progress_bar=False", "--config.train.checkpoint_every=0",
          "--config.optim.schedule=constant", "--config.optim.warmup_ratio=0.0"]
MESH_8 = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
MESH_4 = ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=1"]


def _launch(workdir, cache_dir, steps, nproc, devices_per_process, mesh, via_script=False):
    """`nproc` trainer processes; via_script: through scripts/train_on_host.sh, the launch recipes' shared step."""
    port = free_port()
    procs = []
    for pid in range(nproc):
        env = trainer_env(devices_per_process, cache_dir, nproc, pid, port)
        env["PYTHON"] = sys.executable
        start = (["bash", os.path.join("scripts", "train_on_host.sh")] if via_script
                 else [sys.executable, "-m", "llavaction_jax.train"])
        cmd = [*start, "--config", "configs/tiny.py", "--workdir", str(workdir), *COMMON, *mesh,
               f"--config.train.num_steps={steps}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=2400)     # compiles; slow on a loaded 2-core machine
        assert p.returncode == 0, out[-4000:]
        reports.append(json.loads([l for l in out.splitlines() if l.startswith("{")][-1]))
    return reports


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["prefix"] == "train"}


def _restore(workdir, step, mesh_sizes, devices):
    """(params as numpy, data state) of checkpoint `step`, placed on a mesh of `devices`."""
    cfg = tiny.get_config()
    cfg.mesh.update(**mesh_sizes)
    setup = state_lib.build_setup(cfg, shd.make_mesh(cfg.mesh, devices=devices))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, data = ckpt.restore(step, setup.abstract_state)
    finally:
        ckpt.close()
    return jax.tree.map(np.asarray, state["params"]), data


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """4 uninterrupted steps on 1 process x 8 devices."""
    workdir = tmp_path_factory.mktemp("ref")
    _launch(workdir, cache_dir, steps=4, nproc=1, devices_per_process=8, mesh=MESH_8)
    return str(workdir), _losses(workdir)


def _assert_resumed_like_reference(workdir, reference):
    ref_dir, ref_losses = reference
    losses = _losses(workdir)
    assert sorted(losses) == [1, 2, 3, 4]
    np.testing.assert_allclose([losses[s] for s in (1, 2, 3, 4)], [ref_losses[s] for s in (1, 2, 3, 4)],
                               rtol=0, atol=2e-5)
    # The data position after the resumed steps is the uninterrupted run's.
    _, data = _restore(str(workdir), 4, dict(data=2, fsdp=2, tensor=2), jax.devices())
    _, ref_data = _restore(ref_dir, 4, dict(data=2, fsdp=2, tensor=2), jax.devices())
    assert data == ref_data


def test_saved_on_8_devices_resumed_on_4(tmp_path, cache_dir, reference):
    _launch(tmp_path, cache_dir, steps=2, nproc=1, devices_per_process=8, mesh=MESH_8)
    # The step-2 weights on 4 devices (fsdp 4) equal those on 8 (2 x 2 x 2), bit for bit.
    params_8, data_8 = _restore(str(tmp_path), 2, dict(data=2, fsdp=2, tensor=2), jax.devices())
    params_4, data_4 = _restore(str(tmp_path), 2, dict(data=1, fsdp=4, tensor=1), jax.devices()[:4])
    jax.tree.map(np.testing.assert_array_equal, params_4, params_8)
    assert data_4 == data_8 and data_8["pos"] == 2 * 8
    [report] = _launch(tmp_path, cache_dir, steps=4, nproc=1, devices_per_process=4, mesh=MESH_4)
    assert (report["start_step"], report["final_step"]) == (2, 4)
    _assert_resumed_like_reference(tmp_path, reference)


def test_saved_by_2_processes_resumed_by_1(tmp_path, cache_dir, reference):
    first = _launch(tmp_path, cache_dir, steps=2, nproc=2, devices_per_process=4, mesh=MESH_8, via_script=True)
    assert [r["saved_steps"] for r in first] == [[2], [2]]
    [report] = _launch(tmp_path, cache_dir, steps=4, nproc=1, devices_per_process=8, mesh=MESH_8)
    assert (report["start_step"], report["final_step"]) == (2, 4)
    _assert_resumed_like_reference(tmp_path, reference)
