"""Multi-process training: 2 local processes x 4 CPU devices train, checkpoint and resume, matching
1 process x 8 devices; plus the environment parsing of llavaction_jax.distributed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llavaction_jax import distributed
from tests.conftest import REPO_ROOT, free_port, trainer_env

COMMON = ["--config.train.synthetic_samples=16", "--config.train.synthetic_seq_len=64",
          "--config.train.log_every=1", "--config.train.progress_bar=False", "--config.train.checkpoint_every=0",
          "--config.optim.schedule=constant", "--config.optim.warmup_ratio=0.0",
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def _launch(workdir, cache_dir, steps, nproc):
    port = free_port()
    procs = []
    for pid in range(nproc):
        env = trainer_env(8 // nproc, cache_dir, nproc, pid, port)
        cmd = [sys.executable, "-m", "llavaction_jax.train", "--config", "configs/tiny.py", "--workdir",
               str(workdir), *COMMON, f"--config.train.num_steps={steps}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-4000:]
        reports.append(json.loads([l for l in out.splitlines() if l.startswith("{")][-1]))
    return reports


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["prefix"] == "train"}


def test_two_processes_match_one_process_and_resume(tmp_path):
    cache = tmp_path / "cache"
    ref = tmp_path / "ref"
    _launch(ref, cache, steps=4, nproc=1)
    multi = tmp_path / "multi"
    first = _launch(multi, cache, steps=2, nproc=2)          # trains 2 steps, saves step 2
    assert [r["saved_steps"] for r in first] == [[2], [2]]
    second = _launch(multi, cache, steps=4, nproc=2)         # both processes restore step 2 and continue
    assert [r["start_step"] for r in second] == [2, 2] and [r["final_step"] for r in second] == [4, 4]
    one, two = _losses(ref), _losses(multi)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=0, atol=1e-5)


def test_resolve_explicit_env_and_errors():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.resolve(env=env) == dict(coordinator_address="10.0.0.1:1234", num_processes=4,
                                                process_id=3)
    assert distributed.resolve("h:1", 2, 0, env={}) == dict(coordinator_address="h:1", num_processes=2,
                                                            process_id=0)
    assert distributed.resolve("h:1", 1, 0, env={}) is None
    with pytest.raises(ValueError, match=r"missing \['process_id'\]"):
        distributed.resolve(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="not in"):
        distributed.resolve("h:1", 2, 2, env={})


def test_resolve_slurm_and_single_process(monkeypatch):
    """A SLURM step (or mpirun) of several tasks is left to jax.distributed.initialize()'s own cluster detection;
    our flags / JAX_* variables override it."""
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "gpu[012-015],cpu3", "JAX_PLATFORMS": "cuda"}
    assert distributed.resolve(env=env) == {} and distributed.detected_cluster(env) == "slurm"
    # What initialize() then reads, from JAX's own SLURM detector: first host of the step, SLURM's task ids.
    from jax._src.clusters import SlurmCluster
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert SlurmCluster.is_env_present()
    assert SlurmCluster.get_coordinator_address(None, "12321") == "gpu012:12321"      # JAX_COORDINATOR_PORT
    assert SlurmCluster.get_coordinator_address(None, None) == f"gpu012:{4242 % 4096 + 65535 - 4095}"
    assert (SlurmCluster.get_process_count(), SlurmCluster.get_process_id()) == (8, 5)
    # Explicit values win over the detected cluster.
    assert distributed.resolve("h:1", 8, 5, env=env) == dict(coordinator_address="h:1", num_processes=8,
                                                             process_id=5)
    assert distributed.resolve(env={"OMPI_COMM_WORLD_SIZE": "4", "JAX_PLATFORMS": "cpu"}) == {}
    assert distributed.resolve(env={"SLURM_NTASKS": "1", "JAX_PLATFORMS": "cpu"}) is None
    assert distributed.resolve(env={"JAX_PLATFORMS": "cpu"}) is None
    assert distributed.resolve(env={"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "1"}) == {}
