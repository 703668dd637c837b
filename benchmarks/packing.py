"""Padding with and without sequence packing (config.data.packing), for the current and proposed length buckets.

    python benchmarks/packing.py [--demo_workdir DIR] [--rows 32] [--batches 200]

Pad fraction = padding tokens / all tokens of the padded batches (what the decoder computes on). The batches
are formed exactly as the training pipeline forms them, from per-sample token counts in stream order:
unpacked = `rows` samples per batch padded to batching.pad_length of the longest; packed = packing.RowPacker
(first fit in stream order, `max_length` tokens and P videos per row) padded to pad_length of the fullest row.

(a) the demo mixture: llavaction_demo.data_stage.build_data's training MQA JSONL (built into --demo_workdir, reused
    when present), tokenised by the pipeline's TextStage with the demo's tiny tokenizer: real token counts.
(b) an EK100-MQA-shaped mixture for configs/llavaction_7b.py: 64-frame MQA samples (num_video_tokens of the 7B
    model at 64 frames = 13441 video tokens + 130..190 text tokens: ChatML system prompt, time instruction,
    five options, answer, in Qwen2 tokens) mixed with 16-frame MQA samples (3361 video tokens + the same text)
    and text-only samples (lognormal, median 400 tokens, clipped to 60..3000, like LLaVA's text SFT data).
Also printed: samples per batch, padded tokens per sample (the decoder cost of one sample) and, for packed
rows, the fraction of vision-tower video slots that hold a real video (unused slots still run SigLIP).
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from configs import demo as demo_cfg  # noqa: E402
from configs import llavaction_7b  # noqa: E402
from llavaction_demo import data_stage, train_eval  # noqa: E402
from llavaction_jax.input import packing  # noqa: E402
from llavaction_jax.input.batching import pad_length  # noqa: E402
from llavaction_jax.input.text_stage import TextStage  # noqa: E402
from llavaction_jax.input.tokenizer import Tokenizer  # noqa: E402
from llavaction_jax.model import num_video_tokens  # noqa: E402

PROPOSED_7B = (4096, 8192, 14336, 16384)


def unpacked_stats(lengths, has_video, rows, buckets, max_length, batches):
    real = padded = samples = videos = 0
    for i in range(batches):
        batch = lengths[i * rows:(i + 1) * rows]
        if len(batch) < rows:
            break
        padded += rows * pad_length(max(batch), buckets, max_length)
        real += int(np.sum(batch))
        samples += rows
        videos += int(np.sum(has_video[i * rows:(i + 1) * rows]))
    return dict(pad=1 - real / padded, samples=samples / batches, tokens_per_sample=padded / samples,
                video_slots=videos / (samples or 1))


def packed_stats(lengths, has_video, rows, buckets, max_length, per_row, batches):
    real = padded = samples = videos = 0
    k = 0
    for _ in range(batches):
        packer = packing.RowPacker(rows, max_length, per_row)
        while k < len(lengths) and packer.add(packing.Sample("", [0] * int(lengths[k]), [], None, None,
                                                             bool(has_video[k]))):
            k += 1
        if k >= len(lengths):
            raise ValueError("not enough samples for the requested number of batches")
        length = pad_length(max(packer.used), buckets, max_length)
        padded += rows * length
        real += sum(packer.used)
        samples += packer.num_samples
        videos += sum(packer.videos)
    return dict(pad=1 - real / padded, samples=samples / batches, tokens_per_sample=padded / samples,
                video_slots=videos / (batches * rows * per_row))


def demo_lengths(workdir, seed=0):
    """(token counts, has_video) of the demo's training samples in a shuffled stream order, and its config."""
    cfg = demo_cfg.get_config()
    jsonl = os.path.join(workdir, "data", "train_mqa.jsonl")
    if not os.path.exists(jsonl):
        data_stage.build_data(cfg, workdir, quiet=True)
    tok_dir = os.path.join(workdir, "tokenizer")
    if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        tok = Tokenizer.load(tok_dir, video_token_id=cfg.model.video_token_id)
    else:
        data = {"train": {"jsonl": jsonl}, "eval": {"jsonl": os.path.join(workdir, "data", "eval_mqa.jsonl")}}
        tok, _ = train_eval.train_tokenizer(cfg, data, workdir)
    text = TextStage(cfg, tok)
    with open(jsonl, encoding="utf-8") as f:
        samples = [line for line in f if line.strip()]
    lengths = np.array([len(text(s, True)[1]) for s in samples])
    order = np.random.default_rng(seed).permutation(len(lengths))
    return lengths[order], np.ones(len(lengths), bool), cfg


def ek100_7b_lengths(n, weights=(0.6, 0.2, 0.2), seed=0):
    """Token counts of a 7B stream: kind 0 = 64-frame MQA, 1 = 16-frame MQA, 2 = text-only (see module doc)."""
    cfg = llavaction_7b.get_config()
    video = {0: num_video_tokens(cfg.model, 64), 1: num_video_tokens(cfg.model, 16)}
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=np.asarray(weights) / np.sum(weights))
    mqa_text = rng.integers(130, 191, size=n)
    text_only = np.clip(np.round(rng.lognormal(np.log(400), 0.8, size=n)), 60, 3000).astype(int)
    return kind, mqa_text, text_only, video, cfg


def table(title, lengths, has_video, rows, bucket_sets, max_length, per_rows, batches):
    print(f"\n{title}")
    print(f"  {'buckets':<34} {'mode':<14} {'pad fraction':>12} {'samples/batch':>14} {'tokens/sample':>14} "
          f"{'video slots used':>17}")
    out = []
    for name, buckets in bucket_sets:
        label = f"{name} {tuple(buckets)}"
        u = unpacked_stats(lengths, has_video, rows, buckets, max_length, batches)
        out.append((label, "unpacked", u))
        for p in per_rows:
            out.append((label, f"packed P={p}",
                        packed_stats(lengths, has_video, rows, buckets, max_length, p, batches)))
    for label, mode, s in out:
        print(f"  {label:<34} {mode:<14} {s['pad']:>12.4f} {s['samples']:>14.2f} {s['tokens_per_sample']:>14.1f} "
              f"{s['video_slots']:>17.3f}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo_workdir", default="/tmp/packing_benchmark_demo")
    ap.add_argument("--rows", type=int, default=32, help="rows per host batch (7B: 256 global / 8 hosts)")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--skip_demo", action="store_true")
    args = ap.parse_args()

    if not args.skip_demo:
        lengths, has_video, cfg = demo_lengths(args.demo_workdir)
        rows = int(cfg.data.global_batch_size)
        batches = len(lengths) // (4 * rows)     # packed rows may take up to 3 samples each
        print(f"(a) demo mixture: {len(lengths)} training samples, tokens min/median/max "
              f"{lengths.min()}/{int(np.median(lengths))}/{lengths.max()}, {rows} rows, {batches} batches")
        table("(a) demo (configs/demo.py, max_length 256)", lengths, has_video, rows,
              [("current", cfg.data.length_buckets), ("tight", (176, 256))],
              int(cfg.data.max_length), (1, 2), batches)
        # Every demo sample has the same length, so at max_length 256 no two fit a row: packing needs room.
        table("(a') demo at max_length 512 (the packing capacity)", lengths, has_video, rows,
              [("room", (192, 256, 384, 512))], 512, (1, 2, 3), batches)

    need = args.batches * args.rows * 8
    kind, mqa_text, text_only, video, cfg = ek100_7b_lengths(need)
    v64, v16 = video[0], video[1]
    lengths = np.where(kind == 0, v64 + mqa_text, np.where(kind == 1, v16 + mqa_text, text_only))
    has_video = kind < 2
    print(f"\n(b) EK100-MQA-shaped 7B mixture: 60% 64-frame ({v64} video tokens + 130..190 text), 20% 16-frame "
          f"({v16} + 130..190), 20% text-only (median 400); {args.rows} rows, {args.batches} batches")
    table("(b) 7B (configs/llavaction_7b.py, max_length 16384)", lengths, has_video, args.rows,
          [("current", cfg.data.length_buckets), ("proposed", PROPOSED_7B)],
          int(cfg.data.max_length), (1, 2, 4), args.batches)
    only64 = np.where(has_video, v64 + mqa_text, text_only)     # the 16-frame samples at 64 frames
    table("(b') 7B, 80% 64-frame MQA + 20% text-only (one num_frames per run, as the pipeline requires)",
          only64, has_video, args.rows, [("current", cfg.data.length_buckets), ("proposed", PROPOSED_7B)],
          int(cfg.data.max_length), (1, 2), args.batches)


if __name__ == "__main__":
    main()
