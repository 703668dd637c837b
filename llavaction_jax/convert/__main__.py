"""CLI: convert checkpoints.

  python -m llavaction_jax.convert import --format {llava_qwen,hf} SRC DST   # safetensors dir -> Orbax dir
  python -m llavaction_jax.convert export --format {llava_qwen,hf} SRC DST   # Orbax dir -> safetensors dir
"""
import argparse
import json
import logging
import sys


def _overrides(items):
    out = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"--override {item!r}: expected key=value (value parsed as JSON, else a string)")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llavaction_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="safetensors checkpoint dir -> Orbax params dir (+ model_config.json)")
    imp.add_argument("--format", required=True, choices=["llava_qwen", "hf"])
    imp.add_argument("--dtype", default=None, help="parameter dtype (default: the checkpoint's, e.g. bfloat16)")
    imp.add_argument("--override", action="append", help="model config override key=value, e.g. action_token=true")
    imp.add_argument("--allow_missing", action="append", default=[],
                     help="regex of parameter paths that may be absent and are initialised (e.g. '^action/')")
    imp.add_argument("src")
    imp.add_argument("dst")
    exp = sub.add_parser("export", help="Orbax params dir -> safetensors checkpoint dir")
    exp.add_argument("--format", required=True, choices=["llava_qwen", "hf"])
    exp.add_argument("--extra_tensors", default=None,
                     help="llava_qwen: safetensors file/dir holding the dropped SigLIP layer to write back")
    exp.add_argument("--max_shard_gb", type=float, default=2.0)
    exp.add_argument("--allow_layout_change", action="store_true",
                     help="hf: export a grid-newline model anyway (HF computes the one_token layout)")
    exp.add_argument("--override", action="append", help="model config override key=value")
    exp.add_argument("--tokenizer", default=None,
                     help="hf: dir with tokenizer.json (default: the source's, or the training run's "
                          "data.tokenizer_path); needed for the tokenizer / processor files")
    exp.add_argument("--eval_summary", default=None,
                     help="hf: eval summary.json whose accuracies go into the model card (default: the training "
                          "workdir's latest periodic eval)")
    exp.add_argument("src")
    exp.add_argument("dst")
    args = parser.parse_args(argv)
    # Our notes (quirks applied, unused keys) at INFO; Orbax's per-save chatter stays at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("llavaction_jax").setLevel(logging.INFO)

    from llavaction_jax.convert import api
    if args.command == "import":
        info = api.import_checkpoint(args.src, args.dst, args.format, dtype=args.dtype,
                                     config_overrides=_overrides(args.override), allow_missing=args.allow_missing)
    else:
        info = api.export_checkpoint(args.src, args.dst, args.format, extra_tensors=args.extra_tensors,
                                     max_shard_bytes=int(args.max_shard_gb * (1 << 30)),
                                     allow_layout_change=args.allow_layout_change,
                                     config_overrides=_overrides(args.override),
                                     tokenizer_path=args.tokenizer, eval_summary=args.eval_summary)
        info = {k: v for k, v in info.items() if k != "keys"} | {"num_keys": len(info["keys"])}
    json.dump(info, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
