"""Evaluate a checkpoint on one benchmark of the registry (llavaction_jax.eval.benchmarks): EK100-MQA,
EK100 recognition top-k, or generic video multiple choice.

llavaction-eval --checkpoint DIR --data X.jsonl|'shards-*.tfrecord' [--video_root ROOT] --out OUT
llavaction-eval --checkpoint WORKDIR --eval NAME --out OUT        # an entry of the run's config.evals
llavaction-eval --checkpoint WORKDIR --step 10 --data 'val-*.tfrecord' --out OUT   # one saved step
(python -m llavaction_jax.eval ... is the same command)

--checkpoint: a training workdir (llavaction_jax.train), its checkpoints dir, one step dir (.../checkpoints/N), or a
  converted / HF checkpoint dir. A training run's saved config gives the tokenizer, frame count and video layout.
--step N: that committed step of the training run (default: the latest).
--eval NAME: the entry NAME of the checkpoint's config.evals (its type, data and fields; flags given override them).
--type: the benchmark (ek100_mqa, recognition, generic_mc); default the entry's, else from --data: a generic MC
  JSONL ({"video", "start", "end", "question", "options", "answer"} per line) is generic_mc, anything else ek100_mqa.
--data: MQA JSONL (frames read from --video_root with llavaction_jax.data.video, layout --video_layout), MQA TFRecords
  (comma-separated globs; frames inside), or a generic MC JSONL (relative video paths are under --video_root).
Writes OUT/predictions.jsonl, OUT/fingerprint.json, OUT/summary.json, OUT/report.html (+ PNGs) on process 0 (OUT: a
local dir or a URL such as gs://...). A rerun into the same OUT resumes only when the fingerprint (checkpoint,
data files, frames, methods, max_new_tokens) matches, and refuses otherwise (--no_resume evaluates afresh). Multi-process: every
process runs the same command (jax.distributed is initialised from the environment or the flags below).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import jax

from configs import base as base_config, validate
from llavaction_jax import argparsing, cli, distributed, fs
from llavaction_jax.cli import UserError
from llavaction_jax.convert.mapping import CheckpointMismatchError
from llavaction_jax.eval import benchmarks, fingerprint as fingerprint_lib, run as run_lib
from llavaction_jax.eval.loading import load_for_eval
from llavaction_jax.eval.report import summary_rows

# Flags that set a common field of the benchmark entry (dest -> field); each benchmark's own fields come from its
# FLAGS (benchmarks.cli_flags). None = not given, the entry / defaults decide.
_COMMON_FLAGS = {"data": "data", "methods": "methods", "batch_size": "batch_size",
                 "max_new_tokens": "max_new_tokens", "limit": "max_samples"}


def build_parser() -> argparsing.ArgumentParser:
    p = argparsing.ArgumentParser(prog="llavaction-eval", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="training workdir, checkpoints dir or step dir, or a "
                   "converted/HF checkpoint dir")
    p.add_argument("--step", type=int, default=None, help="that committed step of the training run at "
                   "--checkpoint (default: the latest)")
    p.add_argument("--data", default=None, help="MQA .jsonl, generic MC .jsonl, or TFRecord glob(s) "
                   "(default: the --eval entry's)")
    p.add_argument("--out", required=True, help="output dir for predictions, summary and report")
    p.add_argument("--eval", default=None, help="name of an entry of the checkpoint's config.evals")
    p.add_argument("--type", default=None, help=f"benchmark: one of {', '.join(benchmarks.REGISTRY)} (default: "
                   "the --eval entry's, else detected from --data)")
    p.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: from the checkpoint)")
    p.add_argument("--methods", default=None, help="comma list of letters,generate (default: config.eval.methods)")
    p.add_argument("--batch_size", type=int, default=None, help="global eval batch size (default: config)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="generation length of the generate method "
                   "(default: config.eval.max_new_tokens)")
    p.add_argument("--num_frames", type=int, default=None, help="frames per clip (default: the HF export's video "
                   "processor config, else config.data.num_frames)")
    p.add_argument("--no_time_instruction", action="store_true", help="do not insert the time instruction")
    p.add_argument("--limit", "--max_samples", dest="limit", type=int, default=None,
                   help="evaluate only the first N samples")
    p.add_argument("--no_resume", action="store_true", help="ignore predictions an earlier run left in --out")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process; default: "
                   "from the environment)")
    p.add_argument("--num_processes", type=int, default=None, help="number of processes (multi-process)")
    p.add_argument("--process_id", type=int, default=None, help="this process's index (multi-process)")
    own = p.add_argument_group("benchmark fields", "the benchmarks' own config.evals fields (each module's FLAGS)")
    for field, kwargs in benchmarks.cli_flags().items():
        own.add_argument(f"--{field}", dest=field, **{"default": None, **kwargs})
    return p


def _positive(name, value):
    if value is not None and value <= 0:
        raise UserError(f"{name} {value}", name, "a positive number")


def _entry_from_flags(args, entry: dict) -> dict:
    """The entry (from --eval, or empty) with the fields the flags set; --type / detection fill its type."""
    entry = dict(entry)
    flags = {**_COMMON_FLAGS, **{field: field for field in benchmarks.cli_flags()}}
    for dest, field in flags.items():
        value = getattr(args, dest)
        if value is not None:
            entry[field] = value
    if args.type:
        entry["type"] = args.type
    if not entry.get("data"):
        raise UserError("no eval data", "--data", "a .jsonl file or TFRecord glob(s), or --eval NAME of an entry "
                        "of the checkpoint's config.evals")
    if not entry.get("type"):
        entry["type"] = benchmarks.detect_type(str(entry["data"]))
    entry.pop("every", None)                         # a training schedule; the CLI runs the entry once
    return entry


def _check_out(out: str) -> str:
    """--out as the fs layer takes it: a local dir or a persistent URL (never a local './gs:/...' folder)."""
    out = fs.check_output(out, f"--out {out}")
    if fs.exists(out) and not fs.is_dir(out):
        raise UserError("exists and is not a directory", f"--out {out}", "a directory for predictions.jsonl, "
                        "summary.json and the report (new, or one this tool wrote)")
    return out


def _fingerprint(eval_cfg, config, provenance) -> dict:
    return fingerprint_lib.make(provenance["params_dir"], provenance["step"], provenance["config"],
                            benchmarks.data_files(eval_cfg), benchmarks.settings(eval_cfg),
                            int(config.data.num_frames), tuple(eval_cfg.methods), int(eval_cfg.max_new_tokens),
                            str(eval_cfg.type))


def _stage_remote_out(out: str, resume: bool) -> str:
    """A local dir standing in for a URL --out (the report writers use the OS), holding what a resume reads."""
    stage = tempfile.mkdtemp(prefix="llavaction-eval-")
    if resume:
        for name in (run_lib.PREDICTIONS_FILE, fingerprint_lib.FILE):
            if fs.exists(fs.join(out, name)):
                with open(os.path.join(stage, name), "w", encoding="utf-8") as f:
                    f.write(fs.read_text(fs.join(out, name)))
    return stage


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("limit", "batch_size", "max_new_tokens", "num_frames"):
        _positive(f"--{name}", getattr(args, name))
    args.out = _check_out(args.out)
    distributed.initialize_from_env(args.coordinator_address, args.num_processes, args.process_id)

    if not args.eval:
        # Checked before the (slow) model load; the benchmarks refuse these too.
        # All samples unless --limit (config.eval.max_samples caps the trainer's periodic eval, not this run).
        entry = dict(_entry_from_flags(args, {}), max_samples=args.limit or 0)
        if str(entry["data"]).endswith(".jsonl") and not os.path.isfile(entry["data"]):
            raise UserError(f"file not found: {entry['data']}", "--data", "an existing .jsonl file")
        benchmarks.check_early(entry, "--{0}")
    # The checkpoint's config with this command's overrides, validated before the model is built.
    check = validate.with_overrides({"data.num_frames": args.num_frames, "eval.max_new_tokens": args.max_new_tokens,
                                     "data.add_time_instruction": False if args.no_time_instruction else None})
    model, tok, config, mesh, provenance = load_for_eval(args.checkpoint, tokenizer=args.tokenizer,
                                                         with_provenance=True, check_config=check, step=args.step,
                                                         defaults=base_config.get_base_config())
    name, where = "cli", "--{0}"
    if args.eval:
        evals = benchmarks.entries(config)
        if args.eval not in evals:
            raise UserError(f"no eval named {args.eval!r} in the checkpoint's config.evals", "--eval",
                            f"one of {sorted(evals)}" if evals else "--type / --data (the config names no evals)")
        name, where = args.eval, f"config.evals.{args.eval}.{{0}} / --{{0}}"
        entry = _entry_from_flags(args, evals[args.eval])
    eval_cfg = benchmarks.resolve(entry, config, name, where=where)
    remote = fs.is_url(args.out)
    local_out = _stage_remote_out(args.out, not args.no_resume) if remote else args.out
    bench = benchmarks.build(eval_cfg, config, mesh, tok, local_out)
    fingerprint = _fingerprint(eval_cfg, config, provenance)
    provenance = dict(provenance, benchmark=eval_cfg.type, eval=args.eval, data=eval_cfg.data,
                      video_root=eval_cfg.get("video_root"), limit=int(eval_cfg.max_samples) or None)
    provenance.pop("params_dir")
    bench.run(model, resume=not args.no_resume, progress=not args.no_progress, provenance=provenance,
              fingerprint=fingerprint)
    if remote and jax.process_index() == 0:
        fs.copy_tree(local_out, args.out)
        shutil.rmtree(local_out, ignore_errors=True)
        bench.paths = {k: fs.join(args.out, os.path.relpath(v, local_out)) for k, v in bench.paths.items()}
    if jax.process_index() == 0:
        for a, b, c in summary_rows(bench.summary):
            print(f"{a + (f' [{b}]' if b else ''):<70} {c}".rstrip())
        print(json.dumps({k: v for k, v in bench.paths.items()}))
    return 0


def console_main(argv=None) -> int:
    """The console script / `python -m` entry: the exit status under llavaction_jax.cli's convention."""
    return cli.run(main, argv, user_errors=(argparse.ArgumentError, CheckpointMismatchError))


if __name__ == "__main__":
    sys.exit(console_main())
