"""Generate EK100-MQA questions (JSONL), or a synthetic action-model prediction file.

    python -m data_prep.make_mqa --annotations EPIC_100_validation.csv --predictions tim_pred_ids_val.json \\
        --source tim --mode benchmark --k 5 --representation GT_random_narration --seed 0 --workers 4 --out mqa.jsonl
    python -m data_prep.make_mqa --annotations EPIC_100_validation.csv --write_synthetic_predictions preds.json \\
        --k 20 --seed 0 --top1_acc 0.6

The label space (action ids, narration pools) comes from --label_csvs; by default EPIC_100_train.csv +
EPIC_100_validation.csv next to the annotations (the original 3806 actions), else the local
EPIC_100_uda_source_train.csv + EPIC_100_validation.csv subset. EK100 annotations: EPIC-KITCHENS authors, CC BY-NC 4.0.
"""
import sys
import time

from llavaction_jax import argparsing, cli
from llavaction_jax.cli import UserError
from llavaction_jax.data import ek100
from data_prep import mqa, predictions


def build_parser() -> argparsing.ArgumentParser:
    p = argparsing.ArgumentParser(prog="python -m data_prep.make_mqa", description=__doc__)
    p.add_argument("--annotations", required=True, help="EK100 segment CSV (e.g. EPIC_100_validation.csv)")
    p.add_argument("--label_csvs", nargs="*", default=None,
                   help="CSVs that define the action label space and narration pools (default: see above)")
    p.add_argument("--class_dir", default=None, help="folder with the verb/noun class CSVs (default: annotations')")
    p.add_argument("--predictions", default=None, help="AVION/TIM top-k JSON (not needed for --mode random)")
    p.add_argument("--source", default=None, help="distractor source recorded per question (tim, avion, ...)")
    p.add_argument("--mode", choices=mqa.MODES, default="benchmark",
                   help="benchmark / recognition: distractors from --predictions; train: for training; random: "
                   "random distractors")
    p.add_argument("--k", type=int, default=None, help="options per question (default: 5, recognition 20)")
    p.add_argument("--representation", choices=mqa.REPRESENTATIONS, default="GT_random_narration",
                   help="how an action is written as an option")
    p.add_argument("--seed", type=int, default=0, help="random seed (option order, narrations)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--allow_unseen_actions", action="store_true",
                   help="accept predicted actions missing from the label space (they get official-key texts)")
    p.add_argument("--out", default=None, help="output JSONL")
    p.add_argument("--write_synthetic_predictions", default=None, metavar="JSON",
                   help="instead of questions, write a synthetic prediction file for --annotations")
    p.add_argument("--top1_acc", type=float, default=0.6, help="synthetic predictions: top-1 accuracy")
    p.add_argument("--not_confusable", action="store_true", help="synthetic predictions: random distractors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    k = args.k if args.k is not None else mqa.DEFAULT_K[args.mode]
    mqa.check_k(k)                      # before the annotations are read or a prediction file is judged by it
    t0 = time.time()
    ann = ek100.load_annotations(args.annotations, label_csvs=args.label_csvs, class_dir=args.class_dir,
                                 with_video_info=False)
    print(f"{args.annotations}: {len(ann)} segments; label space {ann.label_space.num_actions} actions",
          file=sys.stderr)
    if args.write_synthetic_predictions:
        preds = predictions.make_synthetic_predictions(ann, k, args.seed, top1_acc=args.top1_acc,
                                                       confusable=not args.not_confusable)
        predictions.write_predictions(args.write_synthetic_predictions, preds, ann)
        print(f"wrote {args.write_synthetic_predictions}: top-{k}, recall@1 "
              f"{predictions.recall_at_k(preds, ann, 1):.4f}, recall@{k} {predictions.recall_at_k(preds, ann, k):.4f}",
              file=sys.stderr)
        return 0
    if not args.out:
        raise UserError("--out is required when generating questions")
    preds = None
    depth = mqa.required_prediction_depth(args.mode, k)
    if depth:
        if not args.predictions:
            raise UserError(f"--predictions is required for --mode {args.mode}")
        preds = predictions.load_predictions(args.predictions, ann, depth,
                                             require_in_label_space=not args.allow_unseen_actions)
    source = args.source or ("random" if args.mode == "random" else "unknown")
    n = mqa.write_questions(args.out, ann, preds, mode=args.mode, k=k, representation=args.representation,
                            source=source, seed=args.seed, workers=args.workers)
    print(f"wrote {n} questions to {args.out} in {time.time() - t0:.2f}s", file=sys.stderr)
    return 0


# Library errors that mean bad input; each names its file (and line / field).
USER_ERRORS = (ek100.AnnotationError, predictions.PredictionError, FileNotFoundError)

if __name__ == "__main__":
    sys.exit(cli.run(main, user_errors=USER_ERRORS))
