#!/usr/bin/env bash
# An XPK workload (GKE TPU slices, one or several): every pod runs scripts/train_on_host.sh from the image;
# JAX reads the slice and worker layout from the GKE TPU environment. XPK restarts the workload after a
# failure or preemption (MAX_RESTARTS), and the trainer resumes from WORKDIR's latest checkpoint.
#   CLUSTER=my-gke WORKLOAD=llavaction-7b IMAGE=gcr.io/my-proj/llavaction:latest WORKDIR=gs://b/run1 \
#     bash scripts/xpk_workload.sh
# DRY_RUN=1 prints the xpk command instead of running it.
set -euo pipefail

# ---- parameters (environment) -------------------------------------------------------------------------------
CLUSTER="${CLUSTER:?set CLUSTER (the XPK / GKE cluster)}"
WORKLOAD="${WORKLOAD:?set WORKLOAD (a name for this run)}"
IMAGE="${IMAGE:?set IMAGE (a container image with this repo at /app and pip install '.[tpu]' done)}"
TPU_TYPE="${TPU_TYPE:-v5p-16}"                 # the Cloud TPU accelerator type of one slice
NUM_SLICES="${NUM_SLICES:-1}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
ZONE="${ZONE:-}"
CONFIG="${CONFIG:-configs/llavaction_7b.py}"
WORKDIR="${WORKDIR:?set WORKDIR (gs://...)}"
MAX_RESTARTS="${MAX_RESTARTS:-10}"
APP_DIR="${APP_DIR:-/app}"                     # the repo inside the image
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
DRY_RUN="${DRY_RUN:-0}"
# --------------------------------------------------------------------------------------------------------------

cmd=(xpk workload create --cluster "$CLUSTER" --workload "$WORKLOAD" --docker-image "$IMAGE"
     --tpu-type "$TPU_TYPE" --num-slices "$NUM_SLICES" --max-restarts "$MAX_RESTARTS"
     --command "cd $APP_DIR && bash scripts/train_on_host.sh --config $CONFIG --workdir $WORKDIR --config.train.progress_bar=False $EXTRA_FLAGS")
[ -n "$PROJECT" ] && cmd+=(--project "$PROJECT")
[ -n "$ZONE" ] && cmd+=(--zone "$ZONE")
if [ "$DRY_RUN" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else "${cmd[@]}"; fi
