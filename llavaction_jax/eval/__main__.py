"""CLI: evaluate a checkpoint on EK100-MQA (JSONL + videos, or TFRecords) or a generic video multiple-choice JSONL.

python -m llavaction_jax.eval --checkpoint DIR --data X.jsonl|'shards-*.tfrecord' [--video_root ROOT] --out OUT

--checkpoint: a training workdir (llavaction_jax.train) or a converted / HF checkpoint dir (see eval/checkpoint.py).
--data: MQA JSONL (frames read from --video_root with data_prep.video, layout --video_layout), MQA TFRecords
  (comma-separated globs; frames inside), or a generic MC JSONL ({"video", "start", "end", "question", "options",
  "answer"} per line; detected automatically; relative video paths are under --video_root).
Writes OUT/predictions.jsonl, OUT/summary.json, OUT/report.html (+ PNGs) on process 0. Multi-process: every
process runs the same command (jax.distributed is initialised from the environment or the flags below).
"""
import argparse
import json
import os
import sys

from llavaction_jax import cli
from llavaction_jax.cli import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llavaction_jax.eval", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir or converted/HF checkpoint dir")
    p.add_argument("--data", required=True, help="MQA .jsonl, generic MC .jsonl, or TFRecord glob(s)")
    p.add_argument("--out", required=True, help="output dir for predictions, summary and report")
    p.add_argument("--video_root", default=None, help="root of the videos for JSONL data")
    p.add_argument("--video_layout", default="original", choices=("original", "chunks", "frames"))
    p.add_argument("--chunk_len", type=int, default=15, help="chunk length (s) of the 'chunks' layout")
    p.add_argument("--fps", type=float, default=None, help="frame rate of every video (the 'frames' layout needs "
                   "this or --fps_csv)")
    p.add_argument("--fps_csv", default=None, help="EPIC_100_video_info.csv: per-video frame rates")
    p.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: from the checkpoint)")
    p.add_argument("--methods", default=None, help="comma list of letters,generate (default: config.eval.methods)")
    p.add_argument("--batch_size", type=int, default=None, help="global eval batch size (default: config)")
    p.add_argument("--max_new_tokens", type=int, default=None)
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default: config.data.num_frames)")
    p.add_argument("--no_time_instruction", action="store_true", help="do not insert the time instruction")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--allow_absolute_paths", action="store_true",
                   help="generic MC: accept absolute video paths (default: every path must be under --video_root)")
    p.add_argument("--no_resume", action="store_true", help="ignore predictions an earlier run left in --out")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    return p


def _positive(name, value):
    if value is not None and value <= 0:
        raise UserError(f"{name} {value}", name, "a positive number")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("limit", "batch_size", "max_new_tokens", "num_frames", "chunk_len"):
        _positive(f"--{name}", getattr(args, name))
    from llavaction_jax import distributed
    distributed.initialize_from_env(args.coordinator_address, args.num_processes, args.process_id)
    import jax
    from llavaction_jax.eval import samples
    from llavaction_jax.eval.checkpoint import load_for_eval
    from llavaction_jax.eval.report import summary_rows

    is_jsonl = args.data.endswith(".jsonl")
    if is_jsonl and not os.path.isfile(args.data):
        raise UserError(f"file not found: {args.data}", "--data", "an existing .jsonl file")
    if is_jsonl and not samples.is_generic_jsonl(args.data) and not args.video_root:
        # Checked before the (slow) model load; mqa_jsonl_source refuses it too.
        raise UserError("MQA JSONL data needs its videos", "--video_root",
                        "the root of the EK100 videos (or evaluate the MQA TFRecords, which hold the frames)")
    from configs import validate
    # The checkpoint's config with this command's overrides, validated before the model is built.
    check = validate.with_overrides({"data.num_frames": args.num_frames, "eval.max_new_tokens": args.max_new_tokens,
                                     "data.add_time_instruction": False if args.no_time_instruction else None})
    model, tok, config, mesh, provenance = load_for_eval(args.checkpoint, tokenizer=args.tokenizer,
                                                         with_provenance=True, check_config=check)
    from llavaction_jax.eval.run import evaluate_source     # (the input pipeline, TF: after the config is checked)
    frames, size = int(config.data.num_frames), int(config.model.vision.image_size)
    if is_jsonl:
        if samples.is_generic_jsonl(args.data):
            source = samples.generic_mc_source(args.data, args.video_root, frames, size, limit=args.limit,
                                               allow_absolute=args.allow_absolute_paths)
        else:
            fps_table = None
            if args.fps_csv:
                from data_prep.video import load_video_fps
                fps_table = load_video_fps(args.fps_csv)
            source = samples.mqa_jsonl_source(args.data, args.video_root, frames, size, args.video_layout,
                                              args.chunk_len, limit=args.limit, fps=args.fps, fps_table=fps_table)
    else:
        source = samples.tfrecord_source(args.data, frames, size, limit=args.limit)
    methods = tuple(m for m in args.methods.split(",") if m) if args.methods else None
    provenance = dict(provenance, data=args.data, video_root=args.video_root, limit=args.limit)
    verb_names, noun_names = _class_names(config)
    _, summary, paths = evaluate_source(model, tok, config, mesh, source, out_dir=args.out, methods=methods,
                                        batch_size=args.batch_size, resume=not args.no_resume,
                                        progress=not args.no_progress, provenance=provenance,
                                        verb_names=verb_names, noun_names=noun_names)
    if jax.process_index() == 0:
        for a, b, c in summary_rows(summary):
            print(f"{a + (f' [{b}]' if b else ''):<70} {c}".rstrip())
        print(json.dumps({k: v for k, v in paths.items()}))
    return 0


def _class_names(config):  # noqa: ARG001 - EK100's class lists are fixed
    """EK100 verb / noun names for the report (the embedded class CSVs), or (None, None) if unreadable."""
    from data_prep import ek100
    assets = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "data_prep", "assets", "ek100_sample")
    verbs = ek100.load_verb_texts(os.path.join(assets, ek100.VERB_CLASSES_CSV))
    nouns = ek100.load_noun_texts(os.path.join(assets, ek100.NOUN_CLASSES_CSV))
    return dict(enumerate(verbs)), dict(enumerate(nouns))


if __name__ == "__main__":
    sys.exit(cli.run(main, user_errors=(argparse.ArgumentError,)))
