"""Throughput of EK100-MQA question generation (data_prep.mqa) for 1 and N worker processes.

    python benchmarks/mqa_generation.py --annotations /path/EPIC_100_validation.csv --workers 1 2 4

Uses a synthetic top-20 prediction file; prints questions/s per mode and worker count and checks that every
worker count produces the same bytes.
"""
import argparse
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llavaction_jax.data import ek100
from data_prep import mqa, predictions  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--annotations", default=ek100.SAMPLE_VALIDATION_CSV)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    t = time.perf_counter()
    ann = ek100.load_annotations(args.annotations, with_video_info=False)
    print(f"load {len(ann)} segments + label space ({ann.label_space.num_actions} actions): "
          f"{time.perf_counter() - t:.2f}s")
    t = time.perf_counter()
    preds = predictions.make_synthetic_predictions(ann, 20, seed=0)
    print(f"synthetic top-20 predictions: {time.perf_counter() - t:.2f}s")
    for mode in mqa.MODES:
        digests = set()
        for workers in args.workers:
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                lines = list(mqa.iter_question_lines(ann, preds, mode=mode, k=mqa.DEFAULT_K[mode],
                                                     source="synthetic", seed=0, workers=workers))
                best = min(best, time.perf_counter() - t)
            digests.add(hashlib.sha256("\n".join(lines).encode()).hexdigest())
            print(f"{mode:12s} workers={workers}: {len(lines)} questions in {best:.2f}s "
                  f"({len(lines) / best:,.0f} q/s)")
        print(f"{mode:12s} identical output across worker counts: {len(digests) == 1}")


if __name__ == "__main__":
    main()
