#!/usr/bin/env bash
# lmms-eval vs llavaction_jax.eval on the SAME HF export (issue 20): both accuracies and per-question agreement.
#
#   benchmarks/lmms_eval_parity.sh HF_EXPORT MQA.jsonl VIDEO_ROOT WORK_DIR
#
# HF_EXPORT: a `python -m llavaction_jax.convert export --format hf` directory (its video processor config names
# the frame count); MQA.jsonl + VIDEO_ROOT: EK100-MQA questions and their videos (original layout).
# lmms-eval 0.7.3 pins av<16, which the project's stack (av 18) cannot share, so it runs from its own venv:
# $LMMS_VENV (default WORK_DIR/venv-lmms), created on first use with lmms-eval, the pinned torch / torchvision /
# transformers, decord (llava_hf decodes clips with it) and filelock<4 (lmms-eval 0.7.3 imports filelock._api).
# PYTHON is the project's interpreter (default python).
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "error: usage: $0 HF_EXPORT MQA.jsonl VIDEO_ROOT WORK_DIR" >&2
  exit 2
fi
EXPORT=$(realpath "$1"); MQA=$(realpath "$2"); VIDEOS=$(realpath "$3"); WORK=$(mkdir -p "$4" && realpath "$4")
PY=${PYTHON:-python}
LMMS_VENV=${LMMS_VENV:-$WORK/venv-lmms}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ ! -x "$LMMS_VENV/bin/lmms-eval" ]; then
  "$PY" -m venv "$LMMS_VENV"
  "$LMMS_VENV/bin/pip" install "lmms-eval==0.7.3" "torch==2.14.1" "torchvision==0.29.1" "transformers==5.24.0" \
    "decord==0.6.0" "filelock<4"
fi

# 1. our eval on the export (frame count from the export, no --num_frames); kept from an earlier run of this
#    WORK_DIR (remove WORK_DIR/ours to redo it).
[ -f "$WORK/ours/summary.json" ] || "$PY" -m llavaction_jax.eval --checkpoint "$EXPORT" --data "$MQA" --video_root "$VIDEOS" --out "$WORK/ours" \
  --methods generate --no_progress --no_resume > "$WORK/ours.log" 2>&1
# 2. the lmms-eval task: clips of exactly the frames our eval took.
"$PY" -m llavaction_jax.eval.export_lmms_eval --mqa "$MQA" --video_root "$VIDEOS" --hf_export "$EXPORT" \
  --out "$WORK/task" > "$WORK/task.json" 2> "$WORK/task.log"
N=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['num_frames'])" "$WORK/task.json")
# 3. lmms-eval on the export (llava_hf with --force_simple; max_frames_num = the clips' frame count).
rm -rf "$WORK/lmms"
"$LMMS_VENV/bin/lmms-eval" --model llava_hf --force_simple \
  --model_args "pretrained=$EXPORT,max_frames_num=$N,device=cpu,device_map=cpu,dtype=float32" \
  --tasks ek100_mqa --include_path "$WORK/task" --batch_size 1 --log_samples --output_path "$WORK/lmms" \
  > "$WORK/lmms.log" 2>&1 || { tail -5 "$WORK/lmms.log" >&2; echo "error: lmms-eval failed (log: $WORK/lmms.log)" >&2; exit 1; }
# 4. side by side.
"$PY" - "$WORK" "$EXPORT" "$N" <<'PYEOF'
import glob, json, os, sys
work, export, n = sys.argv[1], sys.argv[2], sys.argv[3]
ours = {r["id"]: bool(r["gen_correct"]) for r in map(json.loads, open(os.path.join(work, "ours", "predictions.jsonl")))}
results = json.load(open(sorted(glob.glob(os.path.join(work, "lmms", "**", "*results.json"), recursive=True))[-1]))
theirs = {}
for path in glob.glob(os.path.join(work, "lmms", "**", "*ek100_mqa*.jsonl"), recursive=True):
    for s in map(json.loads, open(path)):
        theirs[s["accuracy"]["id"]] = bool(s["accuracy"]["correct"])
block = results["results"]["ek100_mqa"]
acc = {k.split(",")[0]: v for k, v in block.items() if k.split(",")[0] in ("accuracy", "strict_accuracy")}
differ = sorted(i for i in ours if i in theirs and ours[i] != theirs[i])
print(f"export: {export} ({n} frames per clip)")
print(f"{'evaluator':<58} {'questions':>9} {'accuracy':>9}")
print(f"{'llavaction_jax.eval (reference protocol)':<58} {len(ours):>9} {100 * sum(ours.values()) / len(ours):>8.1f}%")
print(f"{'lmms-eval 0.7.3 llava_hf --force_simple (accuracy)':<58} {len(theirs):>9} {100 * acc['accuracy']:>8.1f}%")
print(f"{'lmms-eval 0.7.3 llava_hf --force_simple (strict_accuracy)':<58} {len(theirs):>9} "
      f"{100 * acc['strict_accuracy']:>8.1f}%")
print(f"questions scored differently: {len(differ)} of {len(ours)}" + (f" {differ}" if differ else ""))
PYEOF
