"""Answer one question about one video clip.

python -m llavaction_jax.predict --checkpoint DIR --video FILE [--start S --end E]
    (--options "take plate" "open fridge" ... | --question "What am I doing?")

With --options the options get letters A, B, ... and the LLaVAction MCQ prompt (data_prep.prompts.mcq_prompt); the
answer is printed from option-letter scoring and from greedy generation (parsed with the reference parser). With
--question the model's greedy generation is printed.
"""
import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from data_prep import prompts
from llavaction_jax.eval.scoring import LETTERS


def mcq_sample(options: Sequence[str], start: float, end: float) -> dict:
    lettered = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return {"id": "input", "start_timestamp": start, "stop_timestamp": end, "options": lettered, "answer": None,
            "conversations": [{"from": "human", "value": prompts.IMAGE_PLACEHOLDER + "\n" + prompts.mcq_prompt(lettered)}]}


def answer_options(model, tok, config, mesh, frames: np.ndarray, options: Sequence[str], start: float,
                   end: float) -> dict:
    """The eval record of one MCQ: letter_pred, letter_scores, gen_pred, raw_generation, options."""
    from llavaction_jax.eval.evaluator import Evaluator
    from llavaction_jax.eval.items import EvalItem
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"--options needs 2..26 options, got {len(options)}")
    sample = mcq_sample(options, start, end)
    evaluator = Evaluator(model, tok, config, mesh, batch_size=_batch_devices(mesh))
    return evaluator.evaluate([EvalItem(sample, lambda: frames)], 1)[0]


def answer_question(model, tok, config, mesh, frames: np.ndarray, question: str, start: float, end: float,
                    max_new_tokens: Optional[int] = None) -> str:
    """Greedy generation for a free-form question about the clip."""
    import jax
    from llavaction_jax.eval.evaluator import Evaluator, _strip_after_eos
    from llavaction_jax.eval.items import normalize_frames
    from llavaction_jax.model import generate
    n = _batch_devices(mesh)
    evaluator = Evaluator(model, tok, config, mesh, methods=("generate",), batch_size=n,
                          max_new_tokens=max_new_tokens)
    sample = {"id": "input", "start_timestamp": start, "stop_timestamp": end,
              "conversations": [{"from": "human", "value": prompts.IMAGE_PLACEHOLDER + "\n" + question}]}
    ids = evaluator.prompt_ids(sample, has_video=True)
    # The batch axis is sharded over the mesh: repeat the single prompt on every batch shard.
    input_ids = np.tile(np.asarray([ids], np.int32), (n, 1))
    pix = np.tile(normalize_frames(frames)[None], (n, 1, 1, 1, 1))
    put = lambda x: jax.device_put(x, evaluator.batch_sharding)
    tokens = generate(model, put(input_ids), put(pix), put(np.ones_like(input_ids)), evaluator.max_new_tokens,
                      tok.eos_id, tok.pad_id)
    return tok.decode(_strip_after_eos(np.asarray(tokens)[0], tok.eos_id))


def _batch_devices(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llavaction_jax.predict", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir or converted/HF checkpoint dir")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--start", type=float, default=None, help="clip start (s); default: start of the video")
    p.add_argument("--end", type=float, default=None, help="clip end (s); default: end of the video")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--options", nargs="+", help="answer options (letters A, B, ... are added)")
    group.add_argument("--question", help="free-form question")
    p.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: from the checkpoint)")
    p.add_argument("--num_frames", type=int, default=None)
    p.add_argument("--max_new_tokens", type=int, default=None)
    args = p.parse_args(argv)

    from data_prep import video as video_lib
    from llavaction_jax.eval.checkpoint import load_for_eval
    from llavaction_jax.eval.samples import read_video_file
    model, tok, config, mesh = load_for_eval(args.checkpoint, tokenizer=args.tokenizer)
    if args.num_frames is not None:
        config.data.num_frames = args.num_frames
    if args.max_new_tokens is not None:
        config.eval.max_new_tokens = args.max_new_tokens
    frames = read_video_file(args.video, args.start, args.end, int(config.data.num_frames),
                             int(config.model.vision.image_size))
    info = video_lib.probe_container(args.video)
    start = 0.0 if args.start is None else args.start
    end = (info.num_frames - 1) / info.fps if args.end is None else args.end
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


if __name__ == "__main__":
    sys.exit(main())
