"""Throughput / MFU bookkeeping and the metric writer (metrics.jsonl + console + the trackers of trackers.py).

Every file goes through llavaction_jax.fs, so the workdir may be local or remote (gs://, ram://).
"""
import json
import math
from typing import Mapping, Optional, Sequence

import jax
from absl import logging

from llavaction_jax import fs
from llavaction_jax.train import trackers as trackers_lib

FAILURES_FILE = "data_failures.jsonl"

# Dense bf16 peak FLOP/s per JAX device (per TensorCore pair / chip as JAX exposes it).
PEAK_FLOPS = (
    ("v6", 918e12),      # TPU v6e (Trillium)
    ("v5p", 459e12),
    ("v5 lite", 197e12), ("v5e", 197e12),
    ("v5", 459e12),      # "TPU v5" = v5p
    ("v4", 275e12),
    ("v3", 61.5e12),     # per core
    ("h200", 989e12), ("h100", 989e12), ("gh200", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
)


def peak_flops_per_device(device_kind: str, override: float = 0.0) -> Optional[float]:
    """Peak FLOP/s of one device, `override` if > 0; None when unknown (e.g. CPU)."""
    if override and override > 0:
        return float(override)
    kind = device_kind.lower()
    for key, flops in PEAK_FLOPS:
        if key in kind:
            return flops
    return None


def count_params(params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def model_flops_per_step(config, params, sample_tokens: float) -> float:
    """Model FLOPs of one training step (the MFU numerator; the AOT report's model FLOPs are this same function).

    6 * N * tokens per sample, N counted where it works: the vision tower and projector on every patch of every
    frame, the decoder and LM head on the sample's `sample_tokens` real tokens (video + text, no padding), the
    action heads once (an untied input embedding is a lookup, not a matmul, and is left out). Attention, not in
    6N: causal decoder 2 * T^2 * heads * head_dim per layer forward (the causal half of 4 * T^2 ...),
    bidirectional vision 4 * P^2 * width per frame and layer; training = 3x forward. Times the global batch
    (one sample per row; a packed row counts as one sample of its total length). `params`: arrays or
    ShapeDtypeStructs.
    """
    v, t = config.model.vision, config.model.text
    frames = int(config.data.num_frames)
    patches = (int(v.image_size) // int(v.patch_size)) ** 2
    per_patch = count_params(params["vision"]) + count_params(params["projector"])
    per_sample = count_params(params.get("action", {}))     # the action heads read one position per sample
    per_token = count_params(params) - per_patch - per_sample
    if not bool(t.tie_word_embeddings):
        per_token -= int(t.vocab_size) * int(t.hidden_size)
    dense = 6.0 * (per_token * sample_tokens + per_patch * patches * frames + per_sample)
    attention = 3.0 * (int(t.num_layers) * 2.0 * sample_tokens ** 2 * int(t.num_heads) * int(t.head_dim)
                       + int(v.num_layers) * frames * 4.0 * patches ** 2 * int(v.hidden_size))
    return (dense + attention) * int(config.data.global_batch_size)


def mfu(flops_per_step: float, step_time_s: float, num_devices: int, peak: Optional[float]) -> Optional[float]:
    if not peak or step_time_s <= 0:
        return None
    return flops_per_step / (step_time_s * num_devices * peak)


class MetricWriter:
    """Writes scalars to <workdir>/metrics.jsonl (exact values), the console and every tracker of
    config.train.trackers (TensorBoard by default; trackers.py); process 0 only.
    `failures(step, records)` lists skipped training records in <workdir>/data_failures.jsonl."""

    def __init__(self, workdir: Optional[str], start_step: Optional[int] = None, trackers=("tensorboard",),
                 train_config=None, run_config: Optional[dict] = None):
        """`start_step`: the step a resumed run starts from; rows of later steps (written after the checkpoint
        it resumes from, so about to be re-run) are dropped from metrics.jsonl and data_failures.jsonl first,
        so no step appears twice. `train_config` (config.train) gives the wandb project / entity / run name,
        `run_config` the config dict a wandb run records."""
        self._trackers = []
        self._jsonl = None
        self._failures_path = None
        if workdir and jax.process_index() == 0:
            self._trackers = trackers_lib.make_trackers(workdir, tuple(trackers), train_config, run_config)
            path = fs.join(workdir, "metrics.jsonl")
            self._failures_path = fs.join(workdir, FAILURES_FILE)
            if start_step is not None:
                for p in (path, self._failures_path):
                    if fs.exists(p):
                        _truncate_after(p, start_step)
            self._jsonl = fs.open_file(path, "a")

    @property
    def trackers(self) -> list:
        return list(self._trackers)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train"):
        if jax.process_index() != 0:
            return
        for tracker in self._trackers:
            tracker.write(step, scalars, prefix)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), "prefix": prefix, **scalars}) + "\n")
            self._jsonl.flush()
        logging.info("%s step %d: %s", prefix, step, format_scalars(scalars))

    def failures(self, step: int, records: Sequence[Mapping]):
        """Appends one row per record ({step, file, offset, reason, ...}) to data_failures.jsonl."""
        if self._failures_path is None or not records:
            return
        with fs.open_file(self._failures_path, "a") as f:
            f.write("".join(json.dumps({"step": int(step), **r}) + "\n" for r in records))

    def close(self):
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _truncate_after(path: str, step: int) -> None:
    kept, dropped = [], 0
    for line in fs.read_text(path).splitlines():
        try:
            rec_step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            dropped += 1          # a torn last line of a killed run
            continue
        if rec_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        fs.atomic_write(path, "".join(kept))
        logging.info("%s: dropped %d row(s) after step %d (re-run from the checkpoint)", path, dropped, step)


def format_scalars(scalars: Mapping[str, float]) -> str:
    parts = []
    for k, v in scalars.items():
        if v is None:
            parts.append(f"{k}=n/a")
        elif isinstance(v, float) and (abs(v) < 1e-3 or abs(v) >= 1e5) and v != 0:
            parts.append(f"{k}={v:.3e}")
        else:
            parts.append(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
