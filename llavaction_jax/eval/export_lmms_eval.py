"""Export EK100-MQA as an lmms-eval task: YAML + utils.py + the questions as a local dataset (+ the clips).

    python -m llavaction_jax.eval.export_lmms_eval --mqa FILE --out DIR [--video_root ROOT] [--hf_export MODEL]

FILE is EK100-MQA JSONL (llavaction-prep mqa). DIR receives
  <task>.yaml     the task config: `dataset_path: json` with `dataset_kwargs.data_files` pointing at data/test.jsonl
                  (absolute, so `datasets.load_dataset` finds it from any working directory), generate_until with
                  greedy decoding, two metrics (accuracy = the reference protocol, strict_accuracy = letter and text);
  utils.py        doc_to_visual / doc_to_text / doc_to_target / process_results / aggregation, standard library
                  only, with LLaVAction's original answer parser (the same code as llavaction_jax/data/prompts.py);
  data/test.jsonl one doc per question (id, clip, question, options, answer, answer_text, source, ...);
  clips/<id>.mp4  with --video_root: each question's clip is EXACTLY the frames our eval feeds the model -- the
                  num_frames segment midpoints of [start, stop] (llavaction_jax.data.video, LLaVAction's sampler), resized
                  to the model's input size -- encoded losslessly (H.264 RGB, qp 0). A harness that samples
                  num_frames frames from the file then gets those frames whatever its rule: lmms-eval's llava_hf
                  takes `np.linspace(0, n - 1, max_frames_num, dtype=int)` (= every frame when n = max_frames_num)
                  and transformers' processor `arange(N) * n // N` (also every frame). A clip of the whole segment
                  would let it pick the segment's ends, which the model never saw (10 points on the demo).
--hf_export MODEL (an HF export of llavaction_jax.convert) gives the frame count (its video processor config) and
the clip size (its processor's input size); --num_frames / --clip_size override them.
Run it (the command is also printed, and written as a comment at the top of the YAML):
  lmms-eval --model llava_hf --force_simple --model_args pretrained=MODEL,max_frames_num=N,device=cpu,device_map=cpu \
            --tasks ek100_mqa --include_path DIR --batch_size 1
(`llava_onevision` needs the LLaVA-NeXT `llava` package and cannot load an HF export; `llava_hf` without
--force_simple takes lmms-eval's chat wrapper, which fails on these video docs.)
"""
import argparse
import fractions
import json
import os
import sys
from typing import List, Optional

import av
import numpy as np
from tqdm import tqdm

from llavaction_jax import cli, fs
from llavaction_jax.convert import hf_processor
from llavaction_jax.data import prompts, video as video_lib
from llavaction_jax.eval import samples

DEFAULT_TASK = "ek100_mqa"
UTILS_FILE = "utils.py"
DATA_FILE = os.path.join("data", "test.jsonl")
CLIPS_DIR = "clips"
DOC_FIELDS = ("id", "video_id", "participant_id", "start_timestamp", "stop_timestamp", "options", "answer",
              "answer_text", "source", "mode", "verb_class", "noun_class", "narration")

UTILS_SOURCE = r'''"""lmms-eval task functions for EK100-MQA (written as utils.py into an exported task directory).

Self-contained (standard library only): lmms-eval imports this file from the task directory; llavaction_jax need
not be installed there. The answer parser is LLaVAction's (ek_eval.process_raw_pred + rstrip(",")), the same code as
llavaction_jax/data/prompts.py (tests/test_export_lmms_eval.py checks both give the same letters).

Metrics (one doc = one question):
  accuracy         the reference protocol: the generation's answer TEXT (last "X. text" match, cut at its first ".")
                   equals the ground-truth option's text; the letter the model wrote is ignored.
  strict_accuracy  the letter of that same "X. text" match is the ground-truth letter AND its text is right.
Each is reported overall; the per-distractor-source split goes to the log.
"""
import json
import logging
import os
import re

log = logging.getLogger("lmms-eval.ek100_mqa")

TASK_DIR = os.path.dirname(os.path.abspath(__file__))
# Clips: <clip dir>/<doc["clip"]>; EK100_MQA_CLIP_DIR overrides the directory written at export time.
CLIP_DIR = os.environ.get("EK100_MQA_CLIP_DIR", os.path.join(TASK_DIR, "clips"))

TIME_INSTRUCTION = "The provided video lasts for {duration:.3f} seconds, and {n} frames are uniformly sampled from it."
_ANSWER_RE = re.compile(r"[A-Z]\.\s(.+)")
_LETTER_RE = re.compile(r"([A-Z])\.\s(.+)")


# ---- the original LLaVAction answer parser ------------------------------------------------------------------------

def extract_answer_text(raw_text):
    """LLaVAction's ek_eval.process_raw_pred, then rstrip(",") as in its comparison with the ground truth."""
    if "None" in raw_text:
        candidate = raw_text.replace("None. ", "")
    else:
        matches = _ANSWER_RE.findall(raw_text)
        candidate = matches[-1].split(".", 1)[0] if matches else raw_text
    return candidate.rstrip(",")


def option_text(option):
    letter, sep, text = option.partition(". ")
    if not sep or len(letter) != 1 or not letter.isupper():
        raise ValueError(f"option {option!r} is not of the form 'A. text'")
    return text


def normalise_option_text(text):
    return text.split(".", 1)[0].rstrip(",").strip()


def parse_answer(raw_text, options):
    """Letter of the option whose text equals the extracted answer (exact match), or None."""
    candidate = extract_answer_text(raw_text)
    for option in options:
        if normalise_option_text(option_text(option)) == candidate:
            return option[0]
    return None


def generated_letter(raw_text):
    """The letter of the "X. text" match the parser reads its text from (the last one), or None."""
    if "None" in raw_text:
        return None
    matches = _LETTER_RE.findall(raw_text)
    return matches[-1][0] if matches else None


# ---- lmms-eval hooks ----------------------------------------------------------------------------------------------

def ek100_mqa_doc_to_visual(doc):
    path = doc["clip"] if os.path.isabs(doc["clip"]) else os.path.join(CLIP_DIR, doc["clip"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EK100-MQA clip {path!r} of question {doc['id']!r} not found: export the task "
                                "with --video_root, or set EK100_MQA_CLIP_DIR to the folder holding the clips")
    return [path]


def ek100_mqa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    """The LLaVAction MCQ prompt (after its "<image>\\n", which the model's own chat template places), preceded by
    the time instruction when `num_frames` is set (it must then be the number of frames the model samples)."""
    kwargs = lmms_eval_specific_kwargs or {}
    text = doc["question"]
    n = kwargs.get("num_frames")
    if n:
        duration = float(doc["stop_timestamp"]) - float(doc["start_timestamp"])
        text = TIME_INSTRUCTION.format(duration=duration, n=int(n)) + text
    return f"{kwargs.get('pre_prompt', '')}{text}{kwargs.get('post_prompt', '')}"


def ek100_mqa_doc_to_target(doc):
    return doc["options"][ord(doc["answer"]) - ord("A")] if doc.get("answer") else doc["answer_text"]


def score(doc, generation):
    """(reference-protocol correct, strict correct, parsed letter) for one generation."""
    answer = doc.get("answer") or None
    parsed = parse_answer(generation, doc["options"])
    correct = answer is not None and parsed == answer
    return correct, correct and generated_letter(generation) == answer, parsed


def ek100_mqa_process_results(doc, results):
    generation = results[0] if results else ""
    correct, strict, parsed = score(doc, generation)
    base = {"id": doc["id"], "source": doc.get("source", "unknown"), "parsed": parsed}
    return {"accuracy": dict(base, correct=bool(correct)), "strict_accuracy": dict(base, correct=bool(strict))}


def _aggregate(results, name):
    if not results:
        raise ValueError(f"EK100-MQA {name}: no results to aggregate")
    by_source = {}
    for r in results:
        by_source.setdefault(r["source"], []).append(bool(r["correct"]))
    log.info("EK100-MQA %s by distractor source: %s", name,
             json.dumps({s: {"n": len(v), "accuracy": sum(v) / len(v)} for s, v in sorted(by_source.items())}))
    return sum(bool(r["correct"]) for r in results) / len(results)


def ek100_mqa_aggregate_accuracy(results):
    return _aggregate(results, "accuracy")


def ek100_mqa_aggregate_strict(results):
    return _aggregate(results, "strict_accuracy")'''


def lmms_eval_command(model: str, task: str, task_dir: str, num_frames: int) -> str:
    """The lmms-eval 0.7.3 command that runs an HF export of ours on the exported task (see the module docstring)."""
    return (f"lmms-eval --model llava_hf --force_simple --model_args pretrained={model},max_frames_num="
            f"{int(num_frames)},device=cpu,device_map=cpu --tasks {task} --include_path {task_dir} --batch_size 1")


def task_yaml(task: str, data_file: str, max_new_tokens: int, num_frames: int, time_instruction: bool,
              command: str) -> str:
    """The task config (hand-written YAML: `!function` tags are lmms-eval's, not plain YAML)."""
    return f"""# EK100-MQA (EPIC-KITCHENS-100 multiple-choice action questions, LLaVAction's benchmark); written by
# python -m llavaction_jax.eval.export_lmms_eval. EPIC-KITCHENS-100 annotations: Damen et al., IJCV 2022, CC BY-NC 4.0.
# Each clip holds exactly the {int(num_frames)} frames the model takes; run an HF export with (max_frames_num must
# be {int(num_frames)}, so that llava_hf's linspace sampling takes every frame):
#   {command}
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(data_file)}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.ek100_mqa_doc_to_visual
doc_to_text: !function utils.ek100_mqa_doc_to_text
doc_to_target: !function utils.ek100_mqa_doc_to_target
process_results: !function utils.ek100_mqa_process_results
generation_kwargs:
  max_new_tokens: {int(max_new_tokens)}
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
  until: []
metric_list:
  - metric: accuracy
    aggregation: !function utils.ek100_mqa_aggregate_accuracy
    higher_is_better: true
  - metric: strict_accuracy
    aggregation: !function utils.ek100_mqa_aggregate_strict
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: ""
    # LLaVAction's time instruction names the number of frames the model takes (0: no time instruction).
    num_frames: {int(num_frames) if time_instruction else 0}
metadata:
  version: 1.0
  protocols:
    accuracy: generation + the original LLaVAction parser; the answer text must match (the reference protocol)
    strict_accuracy: the generated letter and its text must both be right
"""


def _doc(sample: dict, where: str) -> dict:
    samples.check_mqa_sample(sample, where)
    for key in ("video_id", "start_timestamp", "stop_timestamp"):
        if sample.get(key) is None:
            raise cli.UserError(f"MQA sample has no {key!r}", where, "a video_id and start/stop timestamps")
    question = sample["conversations"][0]["value"]
    head = prompts.IMAGE_PLACEHOLDER + "\n"
    if not question.startswith(head) or question.count(prompts.IMAGE_PLACEHOLDER) != 1:
        raise cli.UserError("MQA question does not start with the one '<image>\\n' placeholder", where,
                            "a human turn '<image>\\n<prompt>' as llavaction-prep mqa writes")
    doc = {k: sample.get(k) for k in DOC_FIELDS}
    doc["id"] = str(doc["id"])
    doc["answer"] = sample.get("answer") or None
    doc["question"] = question[len(head):]
    doc["clip"] = f"{_safe_name(doc['id'])}.mp4"
    doc["option_actions"] = [str(a) for a in sample.get("option_actions") or []]
    return doc


def _safe_name(sample_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)


def write_lossless_clip(path: str, frames, fps: fractions.Fraction) -> int:
    """RGB uint8 frames -> an MP4 that decodes to the same pixels: H.264 in RGB (libx264rgb), qp 0, every frame a
    keyframe (decord, PyAV and torchcodec all read it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264rgb", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "rgb24"
        s.options = {"qp": "0", "preset": "veryfast", "g": "1"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return len(frames)


def clip_rate(duration: float, num_frames: int) -> fractions.Fraction:
    """A frame rate at which num_frames frames last about the segment's duration (players show its length)."""
    return fractions.Fraction(num_frames / max(duration, 1e-2)).limit_denominator(1000)


def cut_clip(reader, doc: dict, path: str, num_frames: int) -> int:
    """Writes the num_frames frames our eval takes from the question's [start, stop] segment (its midpoints)."""
    start, stop = float(doc["start_timestamp"]), float(doc["stop_timestamp"])
    frames, _ = reader.read_clip(doc["video_id"], start, stop, num_frames, participant_id=doc.get("participant_id"))
    return write_lossless_clip(path, frames, clip_rate(stop - start, num_frames))


def export_settings(hf_export: Optional[str]) -> dict:
    """{num_frames, clip_size} an HF export of ours names (video processor config, processor input size)."""
    try:
        sampling = hf_processor.read_sampling(hf_export)
    except ValueError as e:
        raise cli.UserError(str(e), "--hf_export") from None
    if sampling is None:
        raise cli.UserError(f"no {hf_processor.SAMPLING_KEY!r} block in {hf_processor.VIDEO_CONFIG_FILE}",
                            hf_export, "an HF export written by python -m llavaction_jax.convert export --format hf "
                            "(or give --num_frames and --clip_size)")
    size = None
    try:
        with open(os.path.join(hf_export, hf_processor.VIDEO_CONFIG_FILE), encoding="utf-8") as f:
            size = int(json.load(f)["size"]["height"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {"num_frames": int(sampling["num_frames"]), "clip_size": size}


def export(mqa_file: str, out_dir: str, task: str = DEFAULT_TASK, video_root: Optional[str] = None,
           video_layout: str = "original", chunk_len: int = 15, ext: str = "MP4", fps: Optional[float] = None,
           clip_size: Optional[int] = None, limit: Optional[int] = None, max_new_tokens: int = 32,
           num_frames: int = 16, time_instruction: bool = True, model: str = "MODEL_DIR",
           progress: bool = False) -> dict:
    if not task.replace("_", "").isalnum():
        raise cli.UserError(f"task name {task!r} is not a plain identifier", "--task", "letters, digits and '_'")
    try:
        rows = samples.read_jsonl(mqa_file)[:limit]
    except (OSError, ValueError) as e:
        raise cli.UserError(str(e), "--mqa", "an EK100-MQA JSONL file") from None
    if not rows:
        raise cli.UserError("no questions", mqa_file, "at least one MQA JSONL row")
    try:
        docs = [_doc(s, f"{mqa_file}: row {i + 1}") for i, s in enumerate(rows)]
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    seen = {}
    for i, d in enumerate(docs):
        if d["clip"] in seen:
            raise cli.UserError(f"question id {d['id']!r} repeats (or maps to the same clip name as row "
                                f"{seen[d['clip']] + 1})", f"{mqa_file}: row {i + 1}", "unique question ids")
        seen[d["clip"]] = i
    out_dir = fs.check_output(out_dir, f"--out {out_dir}")
    out_dir = out_dir if fs.is_url(out_dir) else os.path.abspath(out_dir)
    data_file = fs.join(out_dir, DATA_FILE)
    command = lmms_eval_command(model, task, out_dir, num_frames)
    clips = 0
    # Everything is written into a local stage and put in place file by file when complete (fs.staged_files):
    # a failure half-way (a clip that cannot be cut, a full disk) leaves no half file, and gs:// works.
    with fs.staged_files(out_dir) as stage:
        os.makedirs(os.path.join(stage, "data"))
        with open(os.path.join(stage, DATA_FILE), "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        with open(os.path.join(stage, UTILS_FILE), "w", encoding="utf-8") as f:
            f.write(UTILS_SOURCE)
        with open(os.path.join(stage, f"{task}.yaml"), "w", encoding="utf-8") as f:
            f.write(task_yaml(task, data_file, max_new_tokens, num_frames, time_instruction, command))
        if video_root:
            reader = video_lib.VideoReader(video_root, video_layout, size=clip_size, chunk_len=chunk_len, ext=ext,
                                           fps=fps)
            iterator = docs
            if progress:
                iterator = tqdm(docs, desc="clips", unit="clip")
            for d in iterator:
                try:
                    cut_clip(reader, d, os.path.join(stage, CLIPS_DIR, d["clip"]), num_frames)
                except video_lib.VideoError as e:
                    raise cli.UserError(f"cannot cut the clip of question {d['id']!r}: {e}", video_root,
                                        f"videos readable in the {video_layout!r} layout") from None
                clips += 1
    return {"task": task, "yaml": fs.join(out_dir, f"{task}.yaml"), "data": data_file,
            "num_docs": len(docs), "clips": clips, "num_frames": int(num_frames), "clip_size": clip_size,
            "lmms_eval_command": command}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llavaction_jax.eval.export_lmms_eval",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mqa", required=True, help="EK100-MQA JSONL (llavaction-prep mqa)")
    parser.add_argument("--out", required=True, help="task directory to write (lmms-eval --include_path DIR)")
    parser.add_argument("--task", default=DEFAULT_TASK, help="task name (default %(default)s)")
    parser.add_argument("--hf_export", default=None,
                        help="HF export the task is for: its frame count and input size (and its path in the "
                             "printed lmms-eval command)")
    parser.add_argument("--video_root", default=None, help="EK100 videos: cut each question's clip into DIR/clips")
    parser.add_argument("--video_layout", default="original", choices=video_lib.VIDEO_DIR_LAYOUTS)
    parser.add_argument("--chunk_len", type=int, default=15)
    parser.add_argument("--ext", default="MP4")
    parser.add_argument("--fps", type=float, default=None, help="force the source videos' fps (frames layout)")
    parser.add_argument("--clip_size", type=int, default=None,
                        help="square side of the clips (default: the --hf_export's input size, else native)")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--num_frames", type=int, default=None,
                        help="frames per clip = frames the model takes (default: the --hf_export's, else 16)")
    parser.add_argument("--no_time_instruction", action="store_true",
                        help="no LLaVAction time instruction before the question")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "num_frames", "clip_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise cli.UserError(f"--{name} must be positive, got {value}")
    if not os.path.isfile(args.mqa):
        raise cli.UserError(f"no such file {args.mqa!r}", "--mqa", "an EK100-MQA JSONL file")
    settings = {"num_frames": 16, "clip_size": None}
    if args.hf_export:
        if not os.path.isdir(args.hf_export):
            raise cli.UserError(f"not a directory: {args.hf_export!r}", "--hf_export", "an HF export directory")
        settings = export_settings(args.hf_export)
    num_frames = args.num_frames or settings["num_frames"]
    clip_size = args.clip_size or settings["clip_size"]
    info = export(args.mqa, args.out, args.task, args.video_root, args.video_layout, args.chunk_len, args.ext,
                  args.fps, clip_size, args.limit, args.max_new_tokens, num_frames,
                  time_instruction=not args.no_time_instruction,
                  model=os.path.abspath(args.hf_export) if args.hf_export else "MODEL_DIR", progress=True)
    json.dump(info, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
