"""Benchmark: TFRecord conversion throughput vs. the decode cost of the same clips.

    python benchmarks/data_conversion.py [--layout chunks] [--video_size 320] [--size 384] [--frames 16]
                                         [--clips 48] [--workers 1 2]

Writes synthetic EK-style videos (class patterns over noise, H.264, 30 fps, 1 s GOP) into a temp dir, samples
``--clips`` clips of 1.5-4.5 s (EK100-like), then times per clip:
  decode            seek + decode of the N sampled frames (native resolution)
  decode+resize     ... plus the bicubic squash to --size
  decode+resize+jpeg ... plus JPEG encoding (q95, 4:4:4): everything a worker does except writing
  convert           data_prep.to_tfrecord.convert end to end (process start, TF import, shard files, manifest),
                    as total clips/s, plus each worker's steady-state clips/s (records / in-worker shard time)
and prints them side by side. Numbers depend on the machine load (2 shared cores here).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import to_tfrecord  # noqa: E402
from llavaction_jax.data.records import encode_jpeg  # noqa: E402
from data_prep.synthetic_videos import make_synthetic_dataset  # noqa: E402
from llavaction_jax.data.video import VideoReader  # noqa: E402


def make_clips(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows, t = [], 0.5
    for i in range(n):
        dur = float(rng.uniform(1.5, 4.5))
        rows.append({"id": f"clip{i:04d}", "video_id": f"P01_{1 + i // 16:02d}", "participant_id": "P01",
                     "start_timestamp": round(t, 2), "stop_timestamp": round(t + dur, 2),
                     "verb_class": int(rng.integers(24)), "noun_class": int(rng.integers(36)), "action_id": i,
                     "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "A. x"}],
                     "task": "mqa"})
        t = 0.5 if (i + 1) % 16 == 0 else t + dur + 0.5
    return rows


def time_per_clip(fn, rows, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r in rows:
            fn(r)
        best = min(best, (time.perf_counter() - t0) / len(rows))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layout", default="chunks", choices=["original", "chunks", "frames"])
    p.add_argument("--video_size", type=int, default=320, help="side of the synthetic source videos")
    p.add_argument("--size", type=int, default=384, help="output frame side")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rows = make_clips(args.clips, args.seed)
        t0 = time.perf_counter()
        make_synthetic_dataset(rows, os.path.join(tmp, "videos"), args.layout, fps=30, size=args.video_size,
                               seed=args.seed)
        print(f"wrote {len({r['video_id'] for r in rows})} synthetic {args.video_size}x{args.video_size} videos "
              f"({args.layout}) in {time.perf_counter() - t0:.1f}s; {args.clips} clips, {args.frames} frames each")
        root = os.path.join(tmp, "videos")
        fps = 30 if args.layout == "frames" else None

        def reader(size, **kw):
            return VideoReader(root, args.layout, size=size, fps=fps, **kw)

        def clip(r, rd):
            return rd.read_clip(r["video_id"], r["start_timestamp"], r["stop_timestamp"], args.frames)[0]

        native, sized = reader(None), reader(args.size)
        sequential = reader(None, seek_gap=10 ** 9)
        for rd in (native, sized, sequential):   # warm metadata caches so timings are decode only
            for r in rows:
                rd.metadata(r["video_id"])
        t_dec = time_per_clip(lambda r: clip(r, native), rows)
        t_seq = time_per_clip(lambda r: clip(r, sequential), rows)
        t_res = time_per_clip(lambda r: clip(r, sized), rows)
        t_jpg = time_per_clip(lambda r: [encode_jpeg(f, 95) for f in clip(r, sized)], rows)

        samples = os.path.join(tmp, "samples.jsonl")
        with open(samples, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        conv = {}
        for w in args.workers:
            out = os.path.join(tmp, f"out_w{w}")
            t0 = time.perf_counter()
            m = to_tfrecord.convert(samples, root, args.layout, out, num_frames=args.frames, size=args.size,
                                    num_shards=max(2, 2 * w), workers=w, fps=fps, progress=False, summary=False)
            dt = time.perf_counter() - t0
            assert m["num_records"] == args.clips and m["num_skipped"] == 0, m
            conv[w] = (args.clips / dt, m["run"]["clips_per_s_per_worker"])
        mb = sum(s["num_records"] for s in m["shards"])
        size_mb = sum(os.path.getsize(os.path.join(out, s["file"])) for s in m["shards"]) / 2 ** 20

    print(f"\n{'stage (per ' + str(args.frames) + '-frame clip)':<40}{'ms/clip':>10}{'clips/s':>10}")
    for name, t in (("decode (seek+decode, native res)", t_dec), ("decode, sequential (no re-seek)", t_seq),
                    (f"decode + resize to {args.size}", t_res), ("decode + resize + JPEG q95", t_jpg)):
        print(f"{name:<40}{1000 * t:>10.1f}{1 / t:>10.1f}")
    for w, (rate, per_worker) in conv.items():
        print(f"{'convert end-to-end, ' + str(w) + ' worker(s)':<40}{1000 / rate:>10.1f}{rate:>10.1f}"
              f"   (in-worker steady state: {per_worker:.1f} clips/s per worker, "
              f"{1000 / per_worker:.0f} ms/clip)")
    print(f"\nrecords: {mb}, {size_mb / mb * 1024:.0f} KiB/record ({args.frames} JPEGs at {args.size}px)")


if __name__ == "__main__":
    main()
