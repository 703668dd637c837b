#!/usr/bin/env bash
# Multi-host TPU VM run: the same command on every worker of a TPU VM slice (gcloud ... ssh --worker=all).
# Each worker runs scripts/train_on_host.sh; JAX finds the other workers from the TPU metadata.
#   TPU_NAME=my-v5p ZONE=us-east5-a PROJECT=my-proj WORKDIR=gs://bucket/run1 bash scripts/launch_tpu_vm.sh
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

# ---- parameters (environment) -------------------------------------------------------------------------------
TPU_NAME="${TPU_NAME:?set TPU_NAME (the TPU VM slice)}"
ZONE="${ZONE:?set ZONE}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-16}"         # only used with CREATE=1
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5}"   # only used with CREATE=1
CREATE="${CREATE:-0}"                                  # 1: create the slice first
CONFIG="${CONFIG:-configs/llavaction_7b.py}"           # path[:topology]
WORKDIR="${WORKDIR:?set WORKDIR (a gs:// path every worker can reach)}"
REPO_URL="${REPO_URL:-}"                               # non-empty: git clone it on every worker (SETUP=1)
REPO_DIR="${REPO_DIR:-\$HOME/llavaction_jax}"          # the checkout on each worker
SETUP="${SETUP:-0}"                                    # 1: clone + pip install '.[tpu]' on every worker first
EXTRA_FLAGS="${EXTRA_FLAGS:-}"                         # e.g. "--config.train.num_steps=2000"
DRY_RUN="${DRY_RUN:-0}"
# --------------------------------------------------------------------------------------------------------------

run() {
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [ "$CREATE" = 1 ]; then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" \
    --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION"
fi
if [ "$SETUP" = 1 ]; then
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --worker=all \
    --command "set -e; [ -d $REPO_DIR ] || git clone $REPO_URL $REPO_DIR; cd $REPO_DIR && pip install -q '.[tpu]'"
fi
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --worker=all \
  --command "cd $REPO_DIR && bash scripts/train_on_host.sh --config $CONFIG --workdir $WORKDIR --config.train.progress_bar=False $EXTRA_FLAGS"
