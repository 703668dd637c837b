#!/usr/bin/env bash
# Starts llavaction_jax.train on this host: the step every launcher shares (launch_tpu_vm.sh runs it on each TPU
# VM worker, xpk_workload.sh in each pod, slurm_gpu.sbatch once per node through srun). jax.distributed starts
# from the environment (llavaction_jax/distributed.py): Cloud TPU / GKE TPU metadata, SLURM's variables, or
# JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID. Arguments go to the trainer unchanged.
# Exit status: the trainer's; 75 = preempted after saving a checkpoint (the scheduler should requeue).
set -euo pipefail

# ---- parameters (environment) -------------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"                    # the interpreter with llavaction_jax installed
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
EXIT_PREEMPTED=75
# --------------------------------------------------------------------------------------------------------------

cd "$REPO_DIR"
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
set +e
"$PYTHON" -m llavaction_jax.train "$@"
rc=$?
set -e
if [ "$rc" -eq "$EXIT_PREEMPTED" ]; then
  echo "train_on_host.sh: preempted, checkpoint saved; run the same command again to resume" >&2
fi
exit "$rc"
