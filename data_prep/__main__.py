"""The offline data tools as one command: llavaction-prep SUBCOMMAND [its flags] (or python -m data_prep ...).

subcommands:
  mqa           EK100-MQA questions (JSONL) or synthetic action-model predictions      (data_prep.make_mqa)
  instructions  training instructions (LLaVA JSON) for the LLaVAction tasks           (data_prep.make_instructions)
  tfrecord      MQA / instruction JSONL + videos -> TFRecord shards with the frames  (data_prep.to_tfrecord)
  synthetic     synthetic EK100-style videos for rows of an EK100 CSV                (data_prep.synthetic_videos)

examples:
  llavaction-prep mqa --annotations EPIC_100_validation.csv --predictions tim_pred_ids_val.json --source tim \\
      --out mqa.jsonl
  llavaction-prep tfrecord --samples mqa.jsonl --video_root videos --layout original --out records/
  llavaction-prep synthetic --help                     (each subcommand's own flags)
"""
import importlib
import sys

from llavaction_jax import argparsing, cli

# subcommand -> module (its main(argv) -> int, and USER_ERRORS: its bad-input exception types)
SUBCOMMANDS = {"mqa": "data_prep.make_mqa", "instructions": "data_prep.make_instructions",
               "tfrecord": "data_prep.to_tfrecord", "synthetic": "data_prep.synthetic_videos"}


def build_parser() -> argparsing.ArgumentParser:
    p = argparsing.ArgumentParser(prog="llavaction-prep", description=__doc__)
    p.add_argument("command", choices=sorted(SUBCOMMANDS), help="the tool to run (see above)")
    p.add_argument("args", nargs="...", help="the tool's own flags (llavaction-prep COMMAND --help)")
    return p


def console_main(argv=None) -> int:
    """The console script / `python -m data_prep` entry: the exit status under llavaction_jax.cli's convention."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(SUBCOMMANDS[args.command])
    return cli.run(module.main, args.args, user_errors=tuple(getattr(module, "USER_ERRORS", ())))


if __name__ == "__main__":
    sys.exit(console_main())
