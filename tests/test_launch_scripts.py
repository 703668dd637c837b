"""Launch recipes (scripts/): each parses (bash -n), and each starts scripts/train_on_host.sh, the shared step
that runs `python -m llavaction_jax.train` (tests/test_train_reshard.py runs 2 processes through it)."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = ("train_on_host.sh", "launch_tpu_vm.sh", "xpk_workload.sh", "slurm_gpu.sbatch")


def _path(name):
    return os.path.join(REPO_ROOT, "scripts", name)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses(name):
    subprocess.run(["bash", "-n", _path(name)], check=True)


def _dry_run(name, **env):
    full = dict(os.environ, DRY_RUN="1", **env)
    out = subprocess.run(["bash", _path(name)], env=full, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_tpu_vm_runs_the_trainer_on_every_worker():
    out = _dry_run("launch_tpu_vm.sh", TPU_NAME="t1", ZONE="us-east5-a", PROJECT="p", WORKDIR="gs://b/r",
                   CONFIG="configs/llavaction_7b.py:v5p-16", SETUP="1", REPO_URL="https://example.invalid/r.git")
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all("--worker=all" in l for l in lines)
    assert "bash\\ scripts/train_on_host.sh\\ --config\\ configs/llavaction_7b.py:v5p-16\\ --workdir\\ gs://b/r" \
        in lines[1]


def test_xpk_workload_command():
    out = _dry_run("xpk_workload.sh", CLUSTER="c", WORKLOAD="w", IMAGE="img", WORKDIR="gs://b/r", PROJECT="p",
                   NUM_SLICES="2", TPU_TYPE="v5p-16")
    assert out.startswith("xpk workload create --cluster c --workload w --docker-image img --tpu-type v5p-16 "
                          "--num-slices 2 --max-restarts 10 --command ")
    assert "scripts/train_on_host.sh" in out and "--project p" in out


def test_slurm_runs_one_process_per_node_through_srun():
    out = _dry_run("slurm_gpu.sbatch", SLURM_SUBMIT_DIR="/repo", SLURM_JOB_NAME="j", EXTRA_FLAGS="--a=1 --b=2")
    assert out.strip() == ("srun --kill-on-bad-exit=1 bash /repo/scripts/train_on_host.sh --config "
                           "configs/llavaction_7b.py --workdir /repo/runs/j --config.train.progress_bar=False "
                           "--a=1 --b=2")


def test_train_on_host_passes_the_trainer_exit_status(tmp_path):
    # A bad config key: the trainer's one `error:` line and exit 2 come back through the script.
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", _path("train_on_host.sh"), "--config", "configs/tiny.py", "--workdir",
                          str(tmp_path), "--config.train.trackers=('mlflow',)"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "config.train.trackers" in out.stderr and "mlflow" in out.stderr
