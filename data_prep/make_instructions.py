"""Generate LLaVAction instruction JSONL for one task (same CLI family as data_prep.make_mqa).

    python -m data_prep.make_instructions --task mcq --annotations EPIC_100_train.csv \\
        --predictions avion_pred_ids_train.json --source avion --k 5 --prior_fraction 0.3 --out mcq_avion.jsonl
    python -m data_prep.make_instructions --task direct_narration --annotations EPIC_100_train.csv --out direct.jsonl
    python -m data_prep.make_instructions --task temporal_detection --annotations EPIC_100_train.csv --delta 5 \\
        --out detection.jsonl
    python -m data_prep.make_instructions --task convert_ek100 --input train_anno_gpt-gt-reason.jsonl \\
        --annotations EPIC_100_train.csv --out captions.jsonl      # original LLaVAction EK100 JSONL (any type)
    python -m data_prep.make_instructions --task video_qa --input llava_video_178k.jsonl --out qa.jsonl

The tasks, their --task choices, what each reads and the flags of its own come from the registry
data_prep.instructions.TASKS (one Task entry per task).

EK100 annotations: EPIC-KITCHENS authors (Damen et al., IJCV 2022), CC BY-NC 4.0.
"""
import sys
import time

from llavaction_jax import argparsing, cli
from llavaction_jax.cli import UserError
from llavaction_jax.data import ek100
from data_prep import instructions, mqa, predictions


def _task_flags(tasks) -> dict:
    """{flag: argparse keywords} over the tasks; a flag two tasks share must be declared the same way."""
    out = {}
    for name, task in tasks.items():
        for flag, kwargs in task.flags:
            if flag in out and out[flag] != kwargs:
                raise ValueError(f"instruction task {name!r} declares {flag} unlike another task: {kwargs} vs "
                                 f"{out[flag]}")
            out[flag] = kwargs
    return out


def build_parser() -> argparsing.ArgumentParser:
    tasks = instructions.TASKS
    p = argparsing.ArgumentParser(prog="python -m data_prep.make_instructions", description=__doc__)
    p.add_argument("--task", choices=tuple(tasks), required=True, help="the instruction task to build: "
                   + "; ".join(f"{name}: {task.help}" for name, task in tasks.items()))
    needs_input = ", ".join(name for name, task in tasks.items() if task.input)
    no_annotations = ", ".join(name for name, task in tasks.items() if not task.annotations)
    p.add_argument("--annotations", default=None, help="EK100 segment CSV (required except for "
                   f"{no_annotations or 'no task'})")
    p.add_argument("--label_csvs", nargs="*", default=None, help="label-space CSVs (default: see make_mqa)")
    p.add_argument("--class_dir", default=None, help="folder with the verb/noun class CSVs (default: the "
                   "annotations' folder)")
    p.add_argument("--input", default=None, help=f"external JSONL ({needs_input})")
    p.add_argument("--source", default="avion", help="distractor source name (mcq, convert_ek100)")
    p.add_argument("--representation", choices=mqa.REPRESENTATIONS, default="GT_random_narration",
                   help="how an action is written as an option")
    p.add_argument("--allow_unseen_actions", action="store_true",
                   help="keep segments whose action is not in the label space")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output instruction JSON")
    for flag, kwargs in _task_flags(tasks).items():
        p.add_argument(flag, **kwargs)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    task = instructions.TASKS[args.task]
    ann = None
    if task.annotations:
        if not args.annotations:
            raise UserError(f"--annotations is required for --task {args.task}")
        ann = ek100.load_annotations(args.annotations, label_csvs=args.label_csvs, class_dir=args.class_dir)
    if task.input and not args.input:
        raise UserError(f"--input is required for --task {args.task}")
    samples = task.build(args, ann)
    n = instructions.write_jsonl(args.out, samples)
    print(f"wrote {n} {args.task} samples to {args.out} in {time.time() - t0:.2f}s", file=sys.stderr)
    return 0


# Library errors that mean bad input; each names its file (and line / field).
USER_ERRORS = (ek100.AnnotationError, instructions.InstructionFormatError, predictions.PredictionError,
                                 FileNotFoundError)

if __name__ == "__main__":
    sys.exit(cli.run(main, user_errors=USER_ERRORS))
