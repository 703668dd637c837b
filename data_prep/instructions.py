"""LLaVAction instruction data for EK100 (LLaVA conversation JSONL in the contract's sample schema).

Tasks (as LLaVAction's llavaction/action/generate_description.py, generate_temporal_detection_data.py and the
training mixture scripts/train/avion_tim_top5_gpt4o_detection_direct_178K_100percent.yaml build them):
- mqa / prior_mqa: hard-negative multiple choice (train mode: distractors from the action model's top 2k); on a
  fraction (default 0.3) of the clips that have two close previous actions, the prior-action prompt is used.
- direct_narration: "What action are you performing?" -> the clip's narration.
- temporal_detection: the clip is padded by delta seconds (start_pad ~ U(0, delta), end_pad = delta - start_pad);
  the answer is the action's start and end relative to the padded clip, "{rel_start}, {rel_end}", each number
  written str(round(x, 2)) as the original does ("1.8", not "1.80").
- caption / qa: pass-through of external JSONL (GPT-4o distilled captions and their QA pairs, generic video QA),
  validated and converted to the schema; the original LLaVAction EK100 JSONL files (MCQ, direct narration,
  temporal detection, captions) convert the same way (convert_ek100_jsonl).
Prior-action triples: within a video, segments sorted by end time; three consecutive segments qualify when both
gaps (next start - previous end) are <= 3 s; offsets are start-time differences rounded to 2 decimals.
Every random choice uses a per-sample RNG from (seed, task, narration_id), so outputs do not depend on order.

EK100 annotations: EPIC-KITCHENS authors (Damen et al., IJCV 2022), CC BY-NC 4.0.
"""
import ast
import dataclasses
import json
import os
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from llavaction_jax.cli import UserError
from llavaction_jax.data import atomic, prompts
from llavaction_jax.data.ek100 import Annotations, LabelSpace, Segment
from data_prep.mqa import make_question
from data_prep.predictions import Predictions, load_predictions
from data_prep.seeding import question_rng

# The values of a sample's "task" field (what the training mixture and the prompts tell apart); the tasks that
# make_instructions builds are the registry TASKS at the end of this file.
SAMPLE_TASKS = ("mqa", "prior_mqa", "direct_narration", "temporal_detection", "caption", "qa")
DEFAULT_MAX_GAP = 3.0
DEFAULT_PRIOR_FRACTION = 0.3
DEFAULT_DELTA = 5.0


class InstructionFormatError(ValueError):
    """A malformed external instruction file; the message names the file, line and field."""


def segment_sample(sample_id: str, seg: Segment, label_space: LabelSpace, task: str, human: str, gpt: str) -> dict:
    """The sample record of one EK100 segment: a human turn (after the video placeholder) and the gpt answer."""
    return {
        "id": sample_id,
        "video_id": seg.video_id,
        "participant_id": seg.participant_id,
        "start_timestamp": seg.start,
        "stop_timestamp": seg.stop,
        "conversations": [{"from": "human", "value": prompts.IMAGE_PLACEHOLDER + "\n" + human},
                          {"from": "gpt", "value": gpt}],
        "task": task,
        "verb_class": seg.verb_class,
        "noun_class": seg.noun_class,
        "action_id": label_space.action_to_id.get(seg.vn, -1),
        "narration_id": seg.narration_id,
        "narration": seg.narration,
    }


def action_text(seg: Segment, label_space: LabelSpace, representation: str) -> str:
    """The clip's narration for GT_* representations, else the official "verb noun" key."""
    if representation.startswith("GT"):
        return seg.narration
    return label_space.official_key(seg.vn)


# ---- prior-action context ------------------------------------------------------------------------------------------
def prior_action_triples(annotations: Annotations, max_gap: float = DEFAULT_MAX_GAP,
                         representation: str = "GT_random_narration") -> Dict[str, dict]:
    """narration_id -> {prev2_offset, prev2_narration, prev1_offset, prev1_narration, cur_narration}."""
    by_video: Dict[str, List[Segment]] = {}
    for seg in annotations.segments:
        by_video.setdefault(seg.video_id, []).append(seg)
    ls = annotations.label_space
    out: Dict[str, dict] = {}
    for video_id in sorted(by_video):
        segs = sorted(by_video[video_id], key=lambda s: (s.stop, s.start, s.row_index))
        for i in range(2, len(segs)):
            p2, p1, cur = segs[i - 2], segs[i - 1], segs[i]
            if p1.start - p2.stop <= max_gap and cur.start - p1.stop <= max_gap:
                out[cur.narration_id] = {
                    "prev2_offset": round(cur.start - p2.start, 2),
                    "prev2_narration": action_text(p2, ls, representation),
                    "prev1_offset": round(cur.start - p1.start, 2),
                    "prev1_narration": action_text(p1, ls, representation),
                    "cur_narration": action_text(cur, ls, representation),
                }
    return out


# ---- EK100 tasks ---------------------------------------------------------------------------------------------------
def mcq_samples(annotations: Annotations, preds: Optional[Predictions], *, source: str, k: int = 5,
                mode: str = "train", representation: str = "GT_random_narration", seed: int = 0,
                prior_fraction: float = DEFAULT_PRIOR_FRACTION, max_gap: float = DEFAULT_MAX_GAP) -> List[dict]:
    """Hard-negative (mode="train") or random (mode="random") MCQ; a `prior_fraction` of the clips with a prior
    triple get the prior-action prompt (task "prior_mqa", the triple stored under "prior")."""
    if mode not in ("train", "random"):
        raise ValueError(f"instruction MCQ uses mode 'train' or 'random', got {mode!r}")
    if not 0.0 <= prior_fraction <= 1.0:
        raise ValueError(f"prior_fraction must be in [0, 1], got {prior_fraction}")
    if mode == "train":
        if preds is None:
            raise ValueError("mode 'train' needs action-model predictions")
        short = [s.row_index for s in annotations.segments if len(preds.get(s.row_index, ())) < 2 * k]
        if short:
            raise ValueError(f"mode 'train' with k={k} needs {2 * k} predictions per row; {len(short)} row(s) "
                             f"have fewer, e.g. rows {short[:10]}")
    priors = prior_action_triples(annotations, max_gap, representation) if prior_fraction > 0 else {}
    out = []
    for seg in annotations.segments:
        q = make_question(seg, preds[seg.row_index] if preds is not None else None, annotations.label_space,
                          mode=mode, k=k, representation=representation, source=source, seed=seed)
        q["id"] = f"mqa/{source}/{seg.narration_id}"
        prior = priors.get(seg.narration_id)
        if prior is not None and question_rng(seed, "prior", seg.narration_id).random() < prior_fraction:
            q["task"] = "prior_mqa"
            q["prior"] = prior
            q["conversations"][0]["value"] = (prompts.IMAGE_PLACEHOLDER + "\n"
                                              + prompts.prior_mcq_prompt(q["options"], prior))
        out.append(q)
    return out


def direct_narration_samples(annotations: Annotations,
                             representation: str = "GT_random_narration") -> List[dict]:
    ls = annotations.label_space
    return [segment_sample(f"direct_narration/{seg.narration_id}", seg, ls, "direct_narration",
                           prompts.direct_narration_prompt(), action_text(seg, ls, representation))
            for seg in annotations.segments]


def temporal_detection_samples(annotations: Annotations, delta: float = DEFAULT_DELTA, seed: int = 0,
                               representation: str = "GT_random_narration") -> List[dict]:
    """Padded clips; start_timestamp/stop_timestamp of the sample are the PADDED clip (what the video reader loads),
    clamped to [0, video duration] when the video info is known. The action itself is kept under
    "action_start"/"action_stop"."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    ls = annotations.label_space
    info = annotations.video_info or {}
    out = []
    for seg in annotations.segments:
        rng = question_rng(seed, "temporal_detection", seg.narration_id)
        start_pad = float(rng.uniform(0.0, delta)) if delta > 0 else 0.0
        end_pad = delta - start_pad
        clip_start = round(max(0.0, seg.start - start_pad), 2)
        clip_stop = round(seg.stop + end_pad, 2)
        if seg.video_id in info:
            clip_stop = min(clip_stop, info[seg.video_id]["duration"])
        clip_stop = max(clip_stop, seg.stop)
        # As generate_temporal_detection_data.py: every number through str(round(x, 2)), relative times from
        # the rounded action and clip times.
        rel_start = prompts.seconds_2dp(round(seg.start, 2) - clip_start)
        rel_end = prompts.seconds_2dp(round(seg.stop, 2) - clip_start)
        sample = segment_sample(f"temporal_detection/{seg.narration_id}", seg, ls, "temporal_detection",
                                prompts.temporal_detection_prompt(action_text(seg, ls, representation),
                                                                  seg.stop - seg.start),
                                f"{rel_start}, {rel_end}")
        # The prompt is the whole human turn for this task (no perspective prefix), as in the reference.
        sample["start_timestamp"], sample["stop_timestamp"] = clip_start, clip_stop
        sample["action_start"], sample["action_stop"] = seg.start, seg.stop
        out.append(sample)
    return out


# ---- external JSONL pass-through -----------------------------------------------------------------------------------
_CAPTION_TYPES = ("gpt-gt-reason", "caption")
_QA_TYPES = ("gpt-gt-instruct-reason", "qa", "open-ended")
_OTHER_TYPES = ("direct_narration", "temporal_detection", "mqa", "prior_mqa")
_OPTION_RE = re.compile(r"^([A-Z])\. (.+)$")


def _read_jsonl(path: str) -> Iterable:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise InstructionFormatError(f"{path}: line {line_no}: not valid JSON: {e}") from None


def _check_conversations(path: str, line_no: int, conv, multi_turn: bool,
                         empty_human_ok: bool = False) -> List[dict]:
    """`empty_human_ok`: the first human turn may be "" (the original's direct-narration files store an empty
    question; the prompt is rebuilt from question_type)."""
    def fail(msg):
        raise InstructionFormatError(f"{path}: line {line_no}: field 'conversations': {msg}")

    if not isinstance(conv, list) or len(conv) < 2 or len(conv) % 2:
        fail("expected an even number (>= 2) of turns")
    if not multi_turn and len(conv) != 2:
        fail(f"expected exactly 2 turns (human, gpt), got {len(conv)}")
    for i, turn in enumerate(conv):
        want = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != want:
            fail(f"turn {i} must come from {want!r}")
        if not isinstance(turn.get("value"), str):
            fail(f"turn {i} has a non-string 'value'")
        if not turn["value"].strip() and not (i == 0 and empty_human_ok):
            fail(f"turn {i} has an empty 'value'")
    return [{"from": t["from"], "value": t["value"]} for t in conv]


def _strip_image(text: str) -> str:
    head = prompts.IMAGE_PLACEHOLDER + "\n"
    if text.startswith(head):
        return text[len(head):]
    return text.replace(prompts.IMAGE_PLACEHOLDER, "").lstrip("\n")


def _number(path, line_no, rec, *names):
    for name in names:
        if name in rec:
            value = rec[name]
            try:
                return float(value)
            except (TypeError, ValueError):
                raise InstructionFormatError(f"{path}: line {line_no}: field '{name}': expected a number of "
                                             f"seconds, got {value!r}") from None
    raise InstructionFormatError(f"{path}: line {line_no}: missing field '{names[0]}'")


def _parse_original_options(path: str, line_no: int, rec: dict, human: str) -> List[str]:
    """Options of an MCQ record: our "options" field, or the original's human value str(list_of_options)."""
    options = rec.get("options")
    if options is None:
        try:
            options = ast.literal_eval(_strip_image(human).strip())
        except (ValueError, SyntaxError):
            options = None
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise InstructionFormatError(f"{path}: line {line_no}: field 'conversations': an MCQ human turn must be "
                                     f"the option list, e.g. \"['A. take plate', 'B. open tap']\"")
    for i, option in enumerate(options):
        m = _OPTION_RE.match(option)
        if not m or m.group(1) != chr(65 + i):
            raise InstructionFormatError(f"{path}: line {line_no}: field 'options': option {i} {option!r} is not "
                                         f"'{chr(65 + i)}. text'")
    texts = [o[3:] for o in options]
    if len(set(texts)) != len(texts):
        raise InstructionFormatError(f"{path}: line {line_no}: field 'options': duplicate option texts {texts}")
    return options


def convert_ek100_jsonl(path: str, annotations: Optional[Annotations] = None, source: str = "unknown") -> List[dict]:
    """Original LLaVAction EK100 training JSONL (or files already in our schema) -> samples.

    Original records: video "P01-P01_01", start_timestamp/end_timestamp (numbers or strings), question_type,
    verb_id/noun_id/action_id, conversations. Handled question types:
    - "mc_*" (e.g. mc_GT_random_narration): human value is str(list_of_options), gpt "C. text" -> task "mqa";
    - "direct_narration", "gpt-gt-reason"/"caption": the exact prompt is rebuilt (the original rebuilds prompts from
      question_type at load time) and the answer kept;
    - "temporal_detection", "gpt-gt-instruct-reason": the stored question is kept verbatim.
    With `annotations`, class ids are checked and action_id is recomputed in its label space."""
    out = []
    ls = annotations.label_space if annotations is not None else None
    for line_no, rec in _read_jsonl(path):
        def fail(field, msg):
            raise InstructionFormatError(f"{path}: line {line_no}: field '{field}': {msg}")

        if not isinstance(rec, dict):
            raise InstructionFormatError(f"{path}: line {line_no}: expected a JSON object")
        if "video_id" in rec:
            video_id, participant_id = rec["video_id"], rec.get("participant_id") or rec["video_id"].split("_")[0]
        elif isinstance(rec.get("video"), str) and "-" in rec["video"]:
            participant_id, video_id = rec["video"].split("-", 1)
        else:
            fail("video", f"expected 'P01-P01_01' (or a 'video_id' field), got {rec.get('video')!r}")
        start = _number(path, line_no, rec, "start_timestamp")
        stop = _number(path, line_no, rec, "stop_timestamp", "end_timestamp")
        if start < 0 or stop < start:
            fail("stop_timestamp", f"expected 0 <= start <= stop, got start={start} stop={stop}")
        qtype = rec.get("task") or rec.get("question_type")
        if not isinstance(qtype, str) or not (qtype.startswith("mc_") or qtype in
                                              _CAPTION_TYPES + _QA_TYPES + _OTHER_TYPES):
            fail("question_type", f"expected mc_*, one of {_CAPTION_TYPES + _QA_TYPES + _OTHER_TYPES}, got {qtype!r}")
        # Types whose prompt is rebuilt from question_type may store an empty question (generate_description.py
        # writes "" for direct narration).
        conv = _check_conversations(path, line_no, rec.get("conversations"), multi_turn=False,
                                    empty_human_ok=qtype in ("direct_narration",) + _CAPTION_TYPES)
        ids = {}
        for ours, theirs in (("verb_class", "verb_id"), ("noun_class", "noun_id"), ("action_id", "action_id")):
            value = rec.get(ours, rec.get(theirs, -1))
            if not isinstance(value, int) or isinstance(value, bool) or value < -1:
                fail(theirs, f"expected an integer class id (or -1), got {value!r}")
            ids[ours] = value
        if ls is not None and ids["verb_class"] >= 0:
            if ids["verb_class"] >= len(ls.verb_texts):
                fail("verb_id", f"unknown verb class {ids['verb_class']}")
            if ids["noun_class"] < 0 or ids["noun_class"] >= len(ls.noun_texts):
                fail("noun_id", f"unknown noun class {ids['noun_class']}")
            ids["action_id"] = ls.action_to_id.get(f"{ids['verb_class']}:{ids['noun_class']}", -1)
        human, answer = conv[0]["value"], conv[1]["value"]
        extra = {}
        if qtype.startswith("mc_") or qtype in ("mqa", "prior_mqa"):
            task = "mqa"
            options = _parse_original_options(path, line_no, rec, human)
            if answer not in options:
                fail("conversations", f"the gpt answer {answer!r} is not one of the options {options}")
            question = prompts.mcq_prompt(options)
            extra = {"options": options, "answer": answer[0], "answer_text": answer[3:],
                     "source": rec.get("source", source), "mode": rec.get("mode", "train")}
        elif qtype in _CAPTION_TYPES:
            task, question = "caption", prompts.caption_prompt()
        elif qtype == "direct_narration":
            task, question = "direct_narration", prompts.direct_narration_prompt()
        elif qtype == "temporal_detection":
            task, question = "temporal_detection", _strip_image(human)
        else:
            task, question = "qa", _strip_image(human)
        out.append({
            "id": f"{task}/{rec.get('id', video_id)}/{line_no}",
            "video_id": video_id,
            "participant_id": participant_id,
            "start_timestamp": start,
            "stop_timestamp": stop,
            "conversations": [{"from": "human", "value": prompts.IMAGE_PLACEHOLDER + "\n" + question},
                              {"from": "gpt", "value": answer}],
            "task": task,
            **ids,
            **extra,
        })
    return out


def convert_video_qa_jsonl(path: str, durations: Optional[Mapping[str, float]] = None) -> List[dict]:
    """Generic video QA / caption data (LLaVA-Video-178K style: id, video path, multi-turn conversations).

    The whole video is the clip: start 0, stop = the record's "duration" or durations[video]; video_id is the
    video path, participant_id "", dataset "video_qa" (it gets the original's generic-video time instruction,
    prompts.insert_video_qa_time_instruction). The first human turn is normalised to start with "<image>\\n"."""
    out = []
    seen = set()
    for line_no, rec in _read_jsonl(path):
        if not isinstance(rec, dict):
            raise InstructionFormatError(f"{path}: line {line_no}: expected a JSON object")
        video = rec.get("video")
        if not isinstance(video, str) or not video:
            raise InstructionFormatError(f"{path}: line {line_no}: field 'video': expected a video path")
        if "duration" in rec:
            duration = _number(path, line_no, rec, "duration")
        elif durations is not None and video in durations:
            duration = float(durations[video])
        else:
            raise InstructionFormatError(f"{path}: line {line_no}: field 'duration': missing (give it in the record "
                                         f"or through `durations`) for video {video!r}")
        if not duration > 0:
            raise InstructionFormatError(f"{path}: line {line_no}: field 'duration': expected > 0, got {duration}")
        conv = _check_conversations(path, line_no, rec.get("conversations"), multi_turn=True)
        conv[0]["value"] = prompts.IMAGE_PLACEHOLDER + "\n" + _strip_image(conv[0]["value"])
        for turn in conv[1:]:
            if prompts.IMAGE_PLACEHOLDER in turn["value"]:
                raise InstructionFormatError(f"{path}: line {line_no}: field 'conversations': only the first human "
                                             f"turn may hold {prompts.IMAGE_PLACEHOLDER}")
        sample_id = f"qa/{rec.get('id', video)}"
        if sample_id in seen:
            sample_id = f"{sample_id}/{line_no}"
        seen.add(sample_id)
        out.append({
            "id": sample_id, "video_id": video, "participant_id": "",
            "start_timestamp": 0.0, "stop_timestamp": duration,
            "conversations": conv, "task": "qa", "dataset": "video_qa",
            "verb_class": -1, "noun_class": -1, "action_id": -1,
            "data_source": rec.get("data_source", ""),
        })
    return out


def write_jsonl(path: str, samples: Sequence[dict]) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    return len(samples)


# ---- the task registry (make_instructions --task NAME) -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Task:
    """One task of make_instructions: `build(args, annotations)` -> samples, from the parsed flags (the CLI's common
    ones: --annotations, --input, --representation, --source, --seed, ...; plus this task's `flags`).

    annotations: the task reads an EK100 segment CSV (--annotations, loaded for build; else build gets None).
    input: the task reads an external file (--input).
    flags: ((flag, argparse keywords), ...) the task adds to the CLI; tasks may share a flag with the same keywords.
    """
    build: Callable[..., List[dict]]
    help: str
    annotations: bool = True
    input: bool = False
    flags: tuple = ()


def _mcq_from_flags(args, annotations: Annotations) -> List[dict]:
    preds = None
    if args.mode == "train":
        if not args.predictions:
            raise UserError("--predictions is required for --task mcq --mode train")
        preds = load_predictions(args.predictions, annotations, 2 * args.k,
                                 require_in_label_space=not args.allow_unseen_actions)
    return mcq_samples(annotations, preds, source=args.source if args.mode == "train" else "random", k=args.k,
                       mode=args.mode, representation=args.representation, seed=args.seed,
                       prior_fraction=args.prior_fraction, max_gap=args.max_gap)


MCQ_FLAGS = (
    ("--predictions", dict(default=None, help="action-model top-k JSON (mcq with --mode train)")),
    ("--mode", dict(choices=("train", "random"), default="train", help="mcq distractors")),
    ("--k", dict(type=int, default=5, help="options per question (mcq)")),
    ("--prior_fraction", dict(type=float, default=DEFAULT_PRIOR_FRACTION,
                              help="fraction of mcq questions that state the previous actions")),
    ("--max_gap", dict(type=float, default=DEFAULT_MAX_GAP,
                       help="largest gap (s) between a segment and the previous actions it mentions (mcq)")),
)

# One entry per task; the CLI's --task choices, requirements and flags come from here.
TASKS = {
    "mcq": Task(_mcq_from_flags, "hard-negative / random multiple choice (mqa, prior_mqa)", flags=MCQ_FLAGS),
    "direct_narration": Task(lambda args, ann: direct_narration_samples(ann, args.representation),
                             "the clip's narration as the answer"),
    "temporal_detection": Task(
        lambda args, ann: temporal_detection_samples(ann, args.delta, args.seed, args.representation),
        "start and end of the action in a padded clip",
        flags=(("--delta", dict(type=float, default=DEFAULT_DELTA, help="temporal detection padding (s)")),)),
    "convert_ek100": Task(lambda args, ann: convert_ek100_jsonl(args.input, ann, source=args.source),
                          "original LLaVAction EK100 JSONL (any question type)", input=True),
    "video_qa": Task(lambda args, ann: convert_video_qa_jsonl(args.input), "generic video QA JSONL",
                     annotations=False, input=True),
}
