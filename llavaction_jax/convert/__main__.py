"""CLI: convert checkpoints.

  python -m llavaction_jax.convert import --format FORMAT --src SRC --dst DST   # a FORMAT checkpoint -> Orbax dir
  python -m llavaction_jax.convert export --format FORMAT --src SRC --dst DST   # any checkpoint -> FORMAT
  python -m llavaction_jax.convert card --src HF_EXPORT --data MQA.jsonl --video_root VIDEOS --out EVAL_DIR
      # evaluate the HF export itself with llavaction_jax.eval; its model card shows the numbers

FORMAT is a name of the registry in llavaction_jax/convert/formats (`--help` of a command lists them).

SRC and DST may also be given positionally (`import --format hf SRC DST`), as in earlier versions.
"""
import datetime
import json
import logging
import os
import sys
from typing import Optional

from configs import base as base_config
from llavaction_jax import argparsing, cli, fs, logs
from llavaction_jax.cli import UserError
from llavaction_jax.convert import api, formats, hf_processor, model_card
from llavaction_jax.convert.errors import ConvertError
from llavaction_jax.eval import __main__ as eval_cli
from llavaction_jax.model import spec as model_spec


def _overrides(items):
    out = {}
    for item in items or ():
        if "=" not in item:
            raise UserError("bad override", f"--override {item!r}", "key=value (value parsed as JSON, else a string)")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _paths(sub, src_help, dst_help):
    sub.add_argument("--src", default=None, help=src_help)
    sub.add_argument("--dst", default=None, help=dst_help)
    sub.add_argument("--overwrite", action="store_true",
                     help="replace a non-empty --dst (the new one is written aside and swapped in when complete)")
    sub.add_argument("src_pos", nargs="?", metavar="SRC", help="same as --src")
    sub.add_argument("dst_pos", nargs="?", metavar="DST", help="same as --dst")


def _described(names):
    return "; ".join(f"{n} = {formats.FORMATS[n].DESCRIPTION}" for n in names)


def measure_export(export_dir: str, data: str, out_dir: str, video_root: Optional[str] = None,
                   num_frames: Optional[int] = None, limit: Optional[int] = None) -> dict:
    """Evaluates the HF export `export_dir` with llavaction_jax.eval on `data` (results in `out_dir`) and rewrites
    the "Evaluation of this export" section of its README.md with them; returns what the section shows.

    The frame count is the export's own (video_preprocessor_config.json) unless `num_frames` overrides it."""
    card_path = os.path.join(export_dir, "README.md")
    sampling = hf_processor.read_sampling(export_dir)
    if sampling is None or not os.path.isfile(card_path):
        raise ConvertError(f"{export_dir}: not an HF export of llavaction_jax.convert (no README.md or no "
                           f"{hf_processor.SAMPLING_KEY!r} block in {hf_processor.VIDEO_CONFIG_FILE})")
    args = ["--checkpoint", export_dir, "--data", data, "--out", out_dir, "--no_resume", "--no_progress"]
    for flag, value in (("--video_root", video_root), ("--num_frames", num_frames), ("--limit", limit)):
        if value is not None:
            args += [flag, str(value)]
    eval_cli.main(args)
    summary = model_card.load_summary(os.path.join(out_dir, "summary.json"))
    measured = {"summary": summary, "data": os.path.basename(data),
                "num_frames": int(num_frames or sampling["num_frames"]),
                "tool": "`python -m llavaction_jax.eval` (JAX, loading this HF directory)",
                "date": datetime.date.today().isoformat()}
    with open(card_path, encoding="utf-8") as f:
        card = f.read()
    card = model_card.replace_section(card, model_card.EXPORT_EVAL_HEADING, model_card.export_eval_section(measured))
    fs.atomic_write(card_path, card)
    return measured


def main(argv=None):
    parser = argparsing.ArgumentParser(prog="llavaction-convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="checkpoint dir -> Orbax params dir (+ model_config.json)")
    imp.add_argument("--format", required=True, choices=sorted(formats.FORMATS),
                     help="the source's format: " + _described(sorted(formats.FORMATS)))
    imp.add_argument("--dtype", default=None, choices=model_spec.DTYPES,
                     help="parameter dtype (default: the checkpoint's, e.g. bfloat16)")
    imp.add_argument("--override", action="append", help="model config override key=value, e.g. action_token=true")
    imp.add_argument("--allow_missing", action="append", default=[],
                     help="regex of parameter paths that may be absent and are initialised (e.g. '^action/')")
    imp.add_argument("--allow_nonfinite", action="store_true",
                     help="import tensors holding NaN / inf as they are (a warning names them) instead of refusing")
    _paths(imp, "checkpoint dir, e.g. safetensors (config.json + model.safetensors[.index.json])", "new Orbax dir")
    exp = sub.add_parser("export", help="checkpoint dir (usually an Orbax dir or a training workdir) -> FORMAT")
    exp.add_argument("--format", required=True, choices=formats.writable(),
                     help="the destination's format: " + _described(formats.writable()))
    exp.add_argument("--extra_tensors", default=None,
                     help="llava_qwen: safetensors file/dir holding the dropped SigLIP layer to write back")
    exp.add_argument("--max_shard_gb", type=float, default=2.0, help="largest safetensors shard (GB)")
    exp.add_argument("--allow_layout_change", action="store_true",
                     help="hf: export a grid-newline model anyway (HF computes the one_token layout)")
    exp.add_argument("--override", action="append", help="model config override key=value")
    exp.add_argument("--tokenizer", default=None,
                     help="hf: dir with tokenizer.json (default: the source's, or the training run's "
                          "data.tokenizer_path); needed for the tokenizer / processor files")
    exp.add_argument("--eval_summary", default=None,
                     help="hf: eval summary.json whose accuracies go into the model card (default: the training "
                          "workdir's latest periodic eval)")
    _paths(exp, "Orbax dir from `convert import`, a training workdir or any other checkpoint dir", "new dir")
    card = sub.add_parser("card", help="evaluate an HF export with llavaction_jax.eval and put its accuracy on its "
                                       "model card")
    card.add_argument("--src", required=True, help="HF export dir (written by `convert export --format hf`)")
    card.add_argument("--data", required=True, help="eval data, as llavaction_jax.eval --data")
    card.add_argument("--out", required=True, help="dir for the eval's predictions / summary / report")
    card.add_argument("--video_root", default=None, help="as llavaction_jax.eval --video_root")
    card.add_argument("--num_frames", type=int, default=None, help="override the export's frame count")
    card.add_argument("--limit", type=int, default=None, help="first N questions only")
    args = parser.parse_args(argv)
    if args.command == "card":
        measured = measure_export(args.src, args.data, args.out, args.video_root, args.num_frames, args.limit)
        summary = measured["summary"]
        json.dump({"card": f"{args.src}/README.md", "num_samples": summary.get("num_samples"),
                   "num_frames": measured["num_frames"],
                   "accuracy": {m: summary[m]["accuracy"] for m in summary.get("methods", [])}}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for name in ("src", "dst"):
        flag, pos = getattr(args, name), getattr(args, name + "_pos")
        if flag is not None and pos is not None and flag != pos:
            raise UserError(f"two {name} paths given: --{name} {flag!r} and positional {pos!r}", f"--{name}")
        if flag is None and pos is None:
            raise UserError(f"missing --{name}", f"convert {args.command}", f"--{name} PATH")
        setattr(args, name, flag if flag is not None else pos)
    if args.command == "import":
        info = api.import_checkpoint(args.src, args.dst, args.format, dtype=args.dtype,
                                     config_overrides=_overrides(args.override), allow_missing=args.allow_missing,
                                     overwrite=args.overwrite, allow_nonfinite=args.allow_nonfinite)
    else:
        info = api.export_checkpoint(args.src, args.dst, args.format, extra_tensors=args.extra_tensors,
                                     max_shard_bytes=int(args.max_shard_gb * (1 << 30)),
                                     allow_layout_change=args.allow_layout_change,
                                     config_overrides=_overrides(args.override),
                                     tokenizer_path=args.tokenizer, eval_summary=args.eval_summary,
                                     overwrite=args.overwrite,
                                     num_frames=int(base_config.get_base_config().data.num_frames))
        info = {k: v for k, v in info.items() if k != "keys"} | {"num_keys": len(info["keys"])}
    json.dump(info, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _user_errors():
    """Bad input beyond cli.UserError (whose family the converter raises: convert/errors.py): a model config
    value no model is built from (an --override, a checkpoint's config). Any other exception is a bug and keeps
    its traceback."""
    return (model_spec.ModelConfigError,)


def console_main(argv=None) -> int:
    """The console script / `python -m` entry: the exit status under llavaction_jax.cli's convention."""
    # Our notes (quirks applied, unused keys) at INFO; Orbax's per-save chatter stays at WARNING.
    logs.use_console_format("%(levelname)s %(name)s: %(message)s")
    logging.getLogger("llavaction_jax").setLevel(logging.INFO)
    return cli.run(main, argv, user_errors=_user_errors())


if __name__ == "__main__":
    sys.exit(console_main())
