"""Generate LLaVAction instruction JSONL for one task (same CLI family as data_prep.make_mqa).

    python -m data_prep.make_instructions --task mcq --annotations EPIC_100_train.csv \\
        --predictions avion_pred_ids_train.json --source avion --k 5 --prior_fraction 0.3 --out mcq_avion.jsonl
    python -m data_prep.make_instructions --task direct_narration --annotations EPIC_100_train.csv --out direct.jsonl
    python -m data_prep.make_instructions --task temporal_detection --annotations EPIC_100_train.csv --delta 5 \\
        --out detection.jsonl
    python -m data_prep.make_instructions --task convert_ek100 --input train_anno_gpt-gt-reason.jsonl \\
        --annotations EPIC_100_train.csv --out captions.jsonl      # original LLaVAction EK100 JSONL (any type)
    python -m data_prep.make_instructions --task video_qa --input llava_video_178k.jsonl --out qa.jsonl

EK100 annotations: EPIC-KITCHENS authors (Damen et al., IJCV 2022), CC BY-NC 4.0.
"""
import sys
import time

from llavaction_jax import argparsing, cli
from llavaction_jax.cli import UserError
from llavaction_jax.data import ek100
from data_prep import instructions, mqa, predictions

TASKS = ("mcq", "direct_narration", "temporal_detection", "convert_ek100", "video_qa")


def build_parser() -> argparsing.ArgumentParser:
    p = argparsing.ArgumentParser(prog="python -m data_prep.make_instructions", description=__doc__)
    p.add_argument("--task", choices=TASKS, required=True, help="the instruction task to build")
    p.add_argument("--annotations", default=None, help="EK100 segment CSV (required except for video_qa)")
    p.add_argument("--label_csvs", nargs="*", default=None, help="label-space CSVs (default: see make_mqa)")
    p.add_argument("--class_dir", default=None, help="folder with the verb/noun class CSVs (default: the "
                   "annotations' folder)")
    p.add_argument("--predictions", default=None, help="action-model top-k JSON (mcq with --mode train)")
    p.add_argument("--source", default="avion", help="distractor source name (mcq, convert_ek100)")
    p.add_argument("--mode", choices=("train", "random"), default="train", help="mcq distractors")
    p.add_argument("--k", type=int, default=5, help="options per question (mcq)")
    p.add_argument("--representation", choices=mqa.REPRESENTATIONS, default="GT_random_narration",
                   help="how an action is written as an option")
    p.add_argument("--prior_fraction", type=float, default=instructions.DEFAULT_PRIOR_FRACTION,
                   help="fraction of mcq questions that state the previous actions")
    p.add_argument("--max_gap", type=float, default=instructions.DEFAULT_MAX_GAP,
                   help="largest gap (s) between a segment and the previous actions it mentions")
    p.add_argument("--delta", type=float, default=instructions.DEFAULT_DELTA, help="temporal detection padding (s)")
    p.add_argument("--input", default=None, help="external JSONL (convert_ek100, video_qa)")
    p.add_argument("--allow_unseen_actions", action="store_true",
                   help="keep segments whose action is not in the label space")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output instruction JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    ann = None
    if args.task != "video_qa":
        if not args.annotations:
            raise UserError(f"--annotations is required for --task {args.task}")
        ann = ek100.load_annotations(args.annotations, label_csvs=args.label_csvs, class_dir=args.class_dir)
    if args.task in ("convert_ek100", "video_qa") and not args.input:
        raise UserError(f"--input is required for --task {args.task}")
    if args.task == "mcq":
        preds = None
        if args.mode == "train":
            if not args.predictions:
                raise UserError("--predictions is required for --task mcq --mode train")
            preds = predictions.load_predictions(args.predictions, ann, 2 * args.k,
                                                 require_in_label_space=not args.allow_unseen_actions)
        samples = instructions.mcq_samples(ann, preds, source=args.source if args.mode == "train" else "random",
                                           k=args.k, mode=args.mode, representation=args.representation,
                                           seed=args.seed, prior_fraction=args.prior_fraction,
                                           max_gap=args.max_gap)
    elif args.task == "direct_narration":
        samples = instructions.direct_narration_samples(ann, args.representation)
    elif args.task == "temporal_detection":
        samples = instructions.temporal_detection_samples(ann, args.delta, args.seed, args.representation)
    elif args.task == "convert_ek100":
        samples = instructions.convert_ek100_jsonl(args.input, ann, source=args.source)
    else:
        samples = instructions.convert_video_qa_jsonl(args.input)
    n = instructions.write_jsonl(args.out, samples)
    print(f"wrote {n} {args.task} samples to {args.out} in {time.time() - t0:.2f}s", file=sys.stderr)
    return 0


# Library errors that mean bad input; each names its file (and line / field).
USER_ERRORS = (ek100.AnnotationError, instructions.InstructionFormatError, predictions.PredictionError,
                                 FileNotFoundError)

if __name__ == "__main__":
    sys.exit(cli.run(main, user_errors=USER_ERRORS))
