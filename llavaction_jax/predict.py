"""Answer one question about one video clip.

llavaction-predict --checkpoint DIR [--step N] --video FILE [--start S --end E]
    (--options "take plate" "open fridge" ... | --question "What am I doing?")
(python -m llavaction_jax.predict ... is the same command)

--checkpoint: a training workdir, its checkpoints dir, one step dir, or a converted / HF checkpoint dir; a training
run's saved config gives the tokenizer, frame count and video layout.

With --options the options get letters A, B, ... and the LLaVAction MCQ prompt (llavaction_jax.data.prompts.mcq_prompt); the
answer is printed from option-letter scoring and from greedy generation (parsed with the reference parser). With
--question the model's greedy generation is printed.
"""
import math
import sys
from typing import Optional, Sequence, Tuple

import numpy as np

from configs import base as base_config, validate
from llavaction_jax.data import prompts, video as video_lib
from llavaction_jax import argparsing, cli
from llavaction_jax.cli import UserError
from llavaction_jax.convert.mapping import CheckpointMismatchError
from llavaction_jax.eval.evaluator import Evaluator
from llavaction_jax.eval.items import EvalItem
from llavaction_jax.eval.loading import load_for_eval
from llavaction_jax.eval.samples import read_video_file
from llavaction_jax.eval.scoring import LETTERS

END_TOLERANCE = 1.0    # seconds an --end may pass the video's end before it is an error (as llavaction-prep tfrecord)


def clip_bounds(path: str, start: Optional[float], end: Optional[float],
                end_tolerance: float = END_TOLERANCE) -> Tuple[float, float]:
    """Validated [start, end] seconds of the clip, by llavaction_jax.data.video's end-of-video rule: an end within the
    tolerance past the last frame is clipped to it (so the prompt states the clip length really read), anything
    else out of range is an error."""
    info = video_lib.probe_container(path)
    if not info.fps or info.num_frames <= 0:
        raise video_lib.VideoError(path, "container reports no frame rate or no frames")
    duration, last = info.num_frames / info.fps, (info.num_frames - 1) / info.fps
    expected = f"0 <= --start <= --end <= the video's length ({duration:.3f} s)"
    s = 0.0 if start is None else float(start)
    e = last if end is None else float(end)
    if not (math.isfinite(s) and math.isfinite(e)):
        raise UserError(f"clip times must be finite numbers, got --start {s} --end {e}", path, expected)
    if s < 0:
        raise UserError(f"--start {s} is negative", path, expected)
    if e < s:
        raise UserError(f"--end {e} is before --start {s}", path, expected)
    if s > last:
        raise UserError(f"--start {s} is after the last frame ({last:.3f} s)", path, expected)
    if e > duration + end_tolerance:
        raise UserError(f"--end {e} is past the end of the video ({duration:.3f} s; tolerance {end_tolerance} s)",
                        path, expected)
    return s, min(e, last)


def check_options(options: Sequence[str]) -> None:
    """2..26 options, each with text: an empty one would be asked as `A. ` and could be the answer."""
    if not 2 <= len(options) <= len(LETTERS):
        raise UserError(f"--options needs 2..26 options, got {len(options)}", "--options")
    for i, option in enumerate(options):
        if not option.strip():
            raise UserError(f"option {LETTERS[i]} is empty", f"--options (option {i + 1} of {len(options)})",
                            "each option a non-empty text, e.g. --options 'take plate' 'open fridge'")


def mcq_sample(options: Sequence[str], start: float, end: float) -> dict:
    lettered = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return {"id": "input", "start_timestamp": start, "stop_timestamp": end, "options": lettered, "answer": None,
            "conversations": [{"from": "human", "value": prompts.IMAGE_PLACEHOLDER + "\n" + prompts.mcq_prompt(lettered)}]}


def answer_options(model, tok, config, mesh, frames: np.ndarray, options: Sequence[str], start: float,
                   end: float) -> dict:
    """The eval record of one MCQ: letter_pred, letter_scores, gen_pred, raw_generation, options."""
    check_options(options)
    sample = mcq_sample(options, start, end)
    evaluator = Evaluator(model, tok, config, mesh, batch_size=_batch_devices(mesh))
    return evaluator.evaluate([EvalItem(sample, lambda: frames)], 1)[0]


def answer_question(model, tok, config, mesh, frames: np.ndarray, question: str, start: float, end: float,
                    max_new_tokens: Optional[int] = None) -> str:
    """Greedy generation for a free-form question about the clip, through the eval batching (the prompt from
    the training text stage, uint8 frames normalised on the device, the original's special-token-free decode)."""
    evaluator = Evaluator(model, tok, config, mesh, methods=("generate",), batch_size=_batch_devices(mesh),
                          max_new_tokens=max_new_tokens)
    sample = {"id": "input", "start_timestamp": start, "stop_timestamp": end,
              "conversations": [{"from": "human", "value": prompts.IMAGE_PLACEHOLDER + "\n" + question}]}
    return evaluator.evaluate([EvalItem(sample, lambda: frames)], 1)[0]["raw_generation"]


def _batch_devices(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))


def main(argv=None) -> int:
    p = argparsing.ArgumentParser(prog="llavaction-predict", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="training workdir, checkpoints dir or step dir, or a "
                   "converted/HF checkpoint dir")
    p.add_argument("--step", type=int, default=None, help="that committed step of the training run at "
                   "--checkpoint (default: the latest)")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--start", type=float, default=None, help="clip start (s); default: start of the video")
    p.add_argument("--end", type=float, default=None, help="clip end (s); default: end of the video")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--options", nargs="+", help="answer options (letters A, B, ... are added)")
    group.add_argument("--question", help="free-form question")
    p.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: from the checkpoint)")
    p.add_argument("--num_frames", type=int, default=None, help="frames read from the clip (default: the "
                   "checkpoint's config.data.num_frames)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="generation length (default: the "
                   "checkpoint's config.eval.max_new_tokens)")
    args = p.parse_args(argv)
    if args.options is not None:
        check_options(args.options)
    # Check the clip before the (slow) checkpoint load.
    start, end = clip_bounds(args.video, args.start, args.end)
    check = validate.with_overrides({"data.num_frames": args.num_frames, "eval.max_new_tokens": args.max_new_tokens})
    model, tok, config, mesh = load_for_eval(args.checkpoint, tokenizer=args.tokenizer, check_config=check,
                                             step=args.step, defaults=base_config.get_base_config())
    frames = read_video_file(args.video, start, end, int(config.data.num_frames),
                             int(config.model.vision.image_size))
    if args.options:
        record = answer_options(model, tok, config, mesh, frames, args.options, start, end)
        letter = record["letter_pred"]
        print("options: " + ", ".join(record["options"]))
        print(f"answer: {record['options'][LETTERS.index(letter)]}")
        gen = record["gen_pred"]
        parsed = record["options"][LETTERS.index(gen)] if gen else "no option matched"
        print(f"generated: {record['raw_generation']!r} -> {parsed}")
    else:
        print(f"answer: {answer_question(model, tok, config, mesh, frames, args.question, start, end)}")
    return 0


def _user_errors():
    return (video_lib.VideoError, CheckpointMismatchError, FileNotFoundError)


def console_main(argv=None) -> int:
    """The console script / `python -m` entry: the exit status under llavaction_jax.cli's convention."""
    return cli.run(main, argv, user_errors=_user_errors())


if __name__ == "__main__":
    sys.exit(console_main())
