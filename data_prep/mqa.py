"""EK100-MQA question generation (LLaVAction's multiple-choice action questions).

Modes (as `AvionMultiChoiceGenerator` / `RandomMultiChoiceGenerator` in llavaction/action/utils.py of LLaVAction):
- benchmark:   top-k action-model predictions; if the GT is missing the k-th prediction is replaced by the GT.
- recognition: top-k (default 20), no GT injection; when the GT is absent `answer` is null and
               `gt_in_options` is false (the two-stage recognition setting, accuracy capped by recall@k).
- train:       k-1 distractors drawn from the top-2k non-GT predictions, plus the GT.
- random:      k-1 distinct non-GT actions of the label space, plus the GT.
Options are shuffled by a per-question RNG derived from (seed, narration_id) and frozen in the file, so the same
seed gives byte-identical output whatever the number of worker processes.

Representations (LLaVAction's `--action_representation`, handled by `parse_vn_ids` in the same utils.py):
official_key ("verb noun" class texts), GT_key (GT = the clip's narration, distractors = official keys),
GT_random_narration (GT = the clip's narration, distractors = a random real narration of their class),
top1_narration (each action's most frequent narration).

EK100 annotations: EPIC-KITCHENS authors (Damen et al., IJCV 2022), CC BY-NC 4.0.
"""
import json
import multiprocessing
import os
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from llavaction_jax.data import atomic, prompts
from llavaction_jax.data.prompts import LETTERS
from llavaction_jax.data.ek100 import Annotations, LabelSpace, Segment
from data_prep.predictions import Predictions
from data_prep.seeding import question_rng
from llavaction_jax.cli import UserError

MODES = ("benchmark", "recognition", "train", "random")
REPRESENTATIONS = ("official_key", "GT_key", "GT_random_narration", "top1_narration")
DEFAULT_K = {"benchmark": 5, "recognition": 20, "train": 5, "random": 5}


class OptionCollisionError(RuntimeError):
    pass


def required_prediction_depth(mode: str, k: int) -> int:
    """How many predictions per row a mode reads (train samples from the top 2k)."""
    if mode == "random":
        return 0
    return 2 * k if mode == "train" else k


def choose_answer_ids(mode: str, gt: str, preds_row: Optional[Sequence[str]], k: int,
                      rng: np.random.Generator, actions: Sequence[str]) -> List[str]:
    """The k actions of one question, in display order (already shuffled)."""
    if mode == "benchmark":
        ids = list(preds_row[:k])
        if gt not in ids:
            ids[-1] = gt                      # the reference pops the k-th prediction and appends the GT
    elif mode == "recognition":
        ids = list(preds_row[:k])
    elif mode == "train":
        pool = [vn for vn in preds_row[:2 * k] if vn != gt]
        pool = [pool[i] for i in rng.permutation(len(pool))]
        ids = [gt] + pool[:k - 1]
    elif mode == "random":
        if len(actions) < k:
            raise ValueError(f"random mode needs at least k={k} actions, the label space has {len(actions)}")
        picks = [actions[i] for i in rng.choice(len(actions), size=k, replace=False)]
        ids = [gt] + [vn for vn in picks if vn != gt][:k - 1]
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if len(ids) != k or len(set(ids)) != k:
        raise ValueError(f"could not build {k} distinct actions for GT {gt} in mode {mode}: {ids}")
    return [ids[i] for i in rng.permutation(k)]


def _official_key(label_space: LabelSpace, vn: str) -> str:
    return prompts.normalise_option_text(label_space.official_key(vn))


def _first_text(vn: str, is_gt: bool, narration: str, representation: str, label_space: LabelSpace,
                rng: np.random.Generator) -> str:
    if is_gt and representation in ("GT_key", "GT_random_narration"):
        return narration
    if representation in ("official_key", "GT_key"):
        return label_space.official_key(vn)
    pool = label_space.narrations.get(vn)
    if not pool:                              # action never seen in the label-space CSVs: no narration to use
        return label_space.official_key(vn)
    if representation == "GT_random_narration":
        return pool[int(rng.integers(len(pool)))]
    if representation == "top1_narration":
        return label_space.narrations_by_frequency[vn][0]
    raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")


def _distinct_text(vn: str, is_gt: bool, narration: str, representation: str, label_space: LabelSpace,
                   rng: np.random.Generator, used: set) -> Optional[str]:
    """The option text of `vn`, or None if every text it could take is already used by another option.

    A distractor whose first text is taken redraws among its class's other narrations (narration
    representations), then falls back to its official key."""
    text = prompts.normalise_option_text(_first_text(vn, is_gt, narration, representation, label_space, rng))
    if text not in used:
        return text
    if is_gt:
        return None
    if representation in ("GT_random_narration", "top1_narration"):
        candidates = list(dict.fromkeys(
            t for t in (prompts.normalise_option_text(x) for x in label_space.narrations_by_frequency.get(vn, []))
            if t not in used))
        if candidates:
            return candidates[int(rng.integers(len(candidates)))]
    key = _official_key(label_space, vn)
    return key if key not in used else None


def option_texts(answer_ids: List[str], gt: str, narration: str, representation: str, label_space: LabelSpace,
                 rng: np.random.Generator, spare_ids: Iterator[str]) -> List[str]:
    """Texts in display order, all distinct. The GT text is fixed first; a distractor that cannot get a distinct
    text is replaced IN PLACE (answer_ids is updated) by the next action from `spare_ids`."""
    order = sorted(range(len(answer_ids)), key=lambda i: answer_ids[i] != gt)   # GT first, then display order
    texts: List[Optional[str]] = [None] * len(answer_ids)
    used: set = set()
    for i in order:
        text = _distinct_text(answer_ids[i], answer_ids[i] == gt, narration, representation, label_space, rng, used)
        while text is None or not text:
            if answer_ids[i] == gt:
                raise OptionCollisionError(f"GT {gt} has no usable text (narration {narration!r})")
            replacement = next((vn for vn in spare_ids if vn != gt and vn not in answer_ids), None)
            if replacement is None:
                raise OptionCollisionError(f"cannot make {len(answer_ids)} distinct options for GT {gt} "
                                           f"(narration {narration!r}); used texts {sorted(used)}")
            answer_ids[i] = replacement
            text = _distinct_text(replacement, False, narration, representation, label_space, rng, used)
        used.add(text)
        texts[i] = text
    return texts


def _spare_actions(preds_row: Optional[Sequence[str]], k: int, label_space: LabelSpace,
                   rng: np.random.Generator) -> Iterator[str]:
    """Replacement distractors: the next predictions after the top-k, then the label space in a random order."""
    if preds_row is not None:
        yield from preds_row[k:]
    actions = label_space.actions
    for i in rng.permutation(len(actions)):
        yield actions[i]


def make_question(seg: Segment, preds_row: Optional[Sequence[str]], label_space: LabelSpace, *, mode: str, k: int,
                  representation: str, source: str, seed: int) -> dict:
    rng = question_rng(seed, f"mqa/{mode}", seg.narration_id)
    gt = seg.vn
    answer_ids = choose_answer_ids(mode, gt, preds_row, k, rng, label_space.actions)
    spare = _spare_actions(preds_row, 2 * k if mode == "train" else k, label_space, rng)
    texts = option_texts(answer_ids, gt, seg.narration, representation, label_space, rng, spare)
    options = [f"{LETTERS[i]}. {t}" for i, t in enumerate(texts)]
    if len(set(texts)) != k or len(set(answer_ids)) != k:
        raise OptionCollisionError(f"{seg.narration_id}: options are not distinct: {options}")
    gt_in_options = gt in answer_ids
    if gt_in_options:
        idx = answer_ids.index(gt)
        answer, answer_text = LETTERS[idx], texts[idx]
        gpt_value = options[idx]
    else:
        # Recognition miss: the GT text the model would have needed, without a letter.
        answer = None
        answer_text = prompts.normalise_option_text(
            _first_text(gt, True, seg.narration, representation, label_space, rng))
        gpt_value = answer_text
    return {
        "id": seg.narration_id,
        "video_id": seg.video_id,
        "participant_id": seg.participant_id,
        "start_timestamp": seg.start,
        "stop_timestamp": seg.stop,
        "conversations": [
            {"from": "human", "value": prompts.IMAGE_PLACEHOLDER + "\n" + prompts.mcq_prompt(options)},
            {"from": "gpt", "value": gpt_value},
        ],
        "task": "mqa",
        "verb_class": seg.verb_class,
        "noun_class": seg.noun_class,
        "action_id": label_space.action_to_id.get(gt, -1),
        "options": options,
        "answer": answer,
        "answer_text": answer_text,
        "gt_in_options": gt_in_options,
        "option_actions": answer_ids,
        "source": source,
        "mode": mode,
        "representation": representation,
        "narration_id": seg.narration_id,
        "narration": seg.narration,
    }


# ---- parallel generation -------------------------------------------------------------------------------------------
_STATE: Dict[str, object] = {}


def _init_worker(state: dict) -> None:
    _STATE.clear()
    _STATE.update(state)


def _make_lines(rows: Sequence[int]) -> List[str]:
    ann: Annotations = _STATE["annotations"]
    preds: Optional[Predictions] = _STATE["preds"]
    kw = _STATE["kwargs"]
    out = []
    for r in rows:
        seg = ann.segments[r]
        q = make_question(seg, preds[r] if preds is not None else None, ann.label_space, **kw)
        out.append(json.dumps(q, ensure_ascii=False))
    return out


class QuestionArgsError(UserError, ValueError):
    """Question settings that cannot work (k, mode, representation), naming the flag: the one-line user error
    (a ValueError too, for library callers)."""


def check_k(k: int) -> None:
    if not 2 <= k <= 26:
        raise QuestionArgsError(f"k={k} options per question", "--k", "2..26 (one letter A-Z per option)")


def _check_args(annotations: Annotations, preds: Optional[Predictions], mode: str, k: int,
                representation: str) -> None:
    if mode not in MODES:
        raise QuestionArgsError(f"unknown mode {mode!r}", "--mode", f"one of {MODES}")
    if representation not in REPRESENTATIONS:
        raise QuestionArgsError(f"unknown representation {representation!r}", "--representation",
                                f"one of {REPRESENTATIONS}")
    check_k(k)
    actions = annotations.label_space.num_actions
    if mode == "random" and k > actions:
        raise QuestionArgsError(f"k={k} options per question but the label space has only {actions} actions",
                                "--k", f"at most {actions} for --mode random (distinct actions per question)")
    depth = required_prediction_depth(mode, k)
    if depth and preds is None:
        raise ValueError(f"mode {mode!r} needs an action-model prediction file")
    if depth:
        short = [r for r in range(len(annotations.segments)) if len(preds.get(r, ())) < depth]
        if short:
            raise ValueError(f"mode {mode!r} with k={k} needs {depth} predictions per row; "
                             f"{len(short)} row(s) have fewer, e.g. rows {short[:10]}")


def iter_question_lines(annotations: Annotations, preds: Optional[Predictions], *, mode: str, k: int,
                        representation: str = "GT_random_narration", source: str = "random", seed: int = 0,
                        workers: int = 1, chunk_size: int = 512) -> Iterator[str]:
    """JSON lines in annotation row order; identical for any `workers`."""
    _check_args(annotations, preds, mode, k, representation)
    state = {"annotations": annotations, "preds": preds,
             "kwargs": dict(mode=mode, k=k, representation=representation, source=source, seed=seed)}
    rows = list(range(len(annotations.segments)))
    chunks = [rows[i:i + chunk_size] for i in range(0, len(rows), chunk_size)]
    if workers <= 1:
        _init_worker(state)
        for chunk in chunks:
            yield from _make_lines(chunk)
        return
    # forkserver/spawn: safe even when the parent process has imported JAX or started threads.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
        for lines in pool.imap(_make_lines, chunks):      # imap keeps the input order
            yield from lines


def generate_questions(annotations: Annotations, preds: Optional[Predictions], **kwargs) -> List[dict]:
    return [json.loads(line) for line in iter_question_lines(annotations, preds, **kwargs)]


def write_questions(path: str, annotations: Annotations, preds: Optional[Predictions], **kwargs) -> int:
    """Write the JSONL atomically (temp file + rename); returns the number of questions."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    n = 0
    with atomic.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in iter_question_lines(annotations, preds, **kwargs):
            f.write(line + "\n")
            n += 1
    return n


def read_questions(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
