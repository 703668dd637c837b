"""Action-model (AVION / TIM) top-k prediction files: read, validate, write, and synthesise.

File format (LLaVAction `generate_description.py` / `ek_eval.py`):
    {"<row index>": {"predictions": ["v:n", ...], "target": "v:n"}, ...}
keys are the 0-based data-row indices of the annotation CSV, predictions are in confidence order.

Synthetic files (tests, demo) imitate a real recogniser: the GT is top-1 with probability `top1_acc`, otherwise it
sits lower in the list or is missing, and with `confusable=True` the other entries share the verb or the noun with
the GT, which is what makes action-model distractors hard. EK100 annotations: EPIC-KITCHENS authors, CC BY-NC 4.0.
"""
import json
import os
from typing import Dict, List, Optional, Sequence

from llavaction_jax.data.ek100 import Annotations, split_action_key
from data_prep.seeding import question_rng

Predictions = Dict[int, List[str]]


class PredictionError(ValueError):
    """A prediction file that does not match its annotations; the message lists the offending rows."""


def _format_rows(rows: Sequence, limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in list(rows)[:limit])
    more = f" ... (+{len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{len(rows)} row(s): {shown}{more}"


def read_prediction_file(path: str):
    """-> (predictions {row: [vn, ...]}, targets {row: vn or None}); checks the JSON structure only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prediction file not found: {path}")
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dups = sorted({k for k in keys if keys.count(k) > 1})
        if dups:
            raise PredictionError(f"{path}: duplicate keys {dups} (json would keep only the last)")
        return dict(pairs)

    with open(path, "rb") as f:
        try:
            raw = json.loads(f.read().decode("utf-8"), object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as e:
            raise PredictionError(f"{path}: not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise PredictionError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    if not isinstance(raw, dict):
        raise PredictionError(f"{path}: expected a JSON object keyed by row index, got {type(raw).__name__}")
    preds: Predictions = {}
    targets: Dict[int, Optional[str]] = {}
    bad_keys, bad_entries = [], []
    for key, entry in raw.items():
        # Row keys are canonical ASCII decimals: "05" would silently share row 5 with "5", and str.isdigit() also
        # accepts digits int() refuses ("²").
        if not (key.isascii() and key.isdigit()) or str(int(key)) != key:
            bad_keys.append(key)
            continue
        if (not isinstance(entry, dict) or not isinstance(entry.get("predictions"), list)
                or not all(isinstance(p, str) for p in entry["predictions"])):
            bad_entries.append(key)
            continue
        row = int(key)
        preds[row] = list(entry["predictions"])
        targets[row] = entry.get("target")
    if bad_keys:
        raise PredictionError(f"{path}: keys must be row indices without leading zeros (0, 1, ...), bad keys in "
                              f"{_format_rows(bad_keys)}")
    if bad_entries:
        raise PredictionError(f"{path}: entries need a 'predictions' list of 'v:n' strings, bad entries in "
                              f"{_format_rows(bad_entries)}")
    return preds, targets


def validate_predictions(preds: Predictions, targets: Dict[int, Optional[str]], annotations: Annotations,
                         k: int, path: str = "<predictions>", require_in_label_space: bool = True) -> None:
    """Every CSV row present with >= k distinct known actions, no extra rows, targets equal to the CSV's action."""
    n = len(annotations.segments)
    label_space = annotations.label_space
    problems = []
    missing = [r for r in range(n) if r not in preds]
    if missing:
        problems.append(f"missing predictions for {_format_rows(missing)}")
    extra = sorted(r for r in preds if r >= n)
    if extra:
        problems.append(f"rows beyond the {n} annotation rows: {_format_rows(extra)}")
    short = sorted(r for r, p in preds.items() if r < n and len(p) < k)
    if short:
        problems.append(f"fewer than k={k} predictions in {_format_rows(short)}")
    unknown, not_in_space, dup = [], [], []
    for r in sorted(preds):
        p = preds[r]
        for vn in p:
            if not label_space.is_known_class_pair(vn):
                unknown.append(f"{r} ({vn!r})")
                break
            if require_in_label_space and vn not in label_space.action_to_id:
                not_in_space.append(f"{r} ({vn!r})")
                break
        if len(set(p)) != len(p):
            dup.append(r)
    if unknown:
        problems.append(f"unknown verb/noun class ids or malformed 'v:n' in {_format_rows(unknown)}")
    if not_in_space:
        problems.append(f"actions outside the label space ({label_space.num_actions} actions; include the train "
                        f"CSV in the label space) in {_format_rows(not_in_space)}")
    if dup:
        problems.append(f"duplicate actions within one prediction list in {_format_rows(dup)}")
    mismatch = []
    for r, target in sorted(targets.items()):
        if target is not None and r < n and target != annotations.segments[r].vn:
            mismatch.append(f"{r} (file {target!r} vs CSV {annotations.segments[r].vn!r})")
    if mismatch:
        problems.append(f"target differs from the annotation CSV ({annotations.path}) in {_format_rows(mismatch)}")
    if problems:
        raise PredictionError(f"{path}: " + "; ".join(problems))


def load_predictions(path: str, annotations: Annotations, k: int, require_in_label_space: bool = True) -> Predictions:
    preds, targets = read_prediction_file(path)
    validate_predictions(preds, targets, annotations, k, path, require_in_label_space)
    return preds


def write_predictions(path: str, preds: Predictions, annotations: Annotations) -> None:
    """Write in the original format (targets taken from the annotations)."""
    out = {str(r): {"predictions": list(preds[r]), "target": annotations.segments[r].vn} for r in sorted(preds)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)


def recall_at_k(preds: Predictions, annotations: Annotations, k: int) -> float:
    hits = sum(seg.vn in preds[seg.row_index][:k] for seg in annotations.segments)
    return hits / max(1, len(annotations.segments))


def make_synthetic_predictions(annotations: Annotations, k: int, seed: int, top1_acc: float = 0.6,
                               confusable: bool = True, miss_rate: float = 0.3) -> Predictions:
    """Deterministic top-k lists over the label space's actions.

    GT at rank 0 with probability top1_acc; otherwise missing with probability miss_rate, else at a uniform rank in
    1..k-1. Other entries: actions sharing the GT's verb or noun first (confusable), then random actions.
    """
    if not 0.0 <= top1_acc <= 1.0 or not 0.0 <= miss_rate <= 1.0:
        raise ValueError("top1_acc and miss_rate must be in [0, 1]")
    actions = annotations.label_space.actions
    if k < 1 or k > len(actions) - 1:
        raise ValueError(f"k must be in [1, {len(actions) - 1}] for a label space of {len(actions)} actions")
    by_verb: Dict[int, List[str]] = {}
    by_noun: Dict[int, List[str]] = {}
    for vn in actions:
        v, n = split_action_key(vn)
        by_verb.setdefault(v, []).append(vn)
        by_noun.setdefault(n, []).append(vn)
    preds: Predictions = {}
    for seg in annotations.segments:
        rng = question_rng(seed, "synthetic-predictions", seg.narration_id)
        gt = seg.vn
        chosen: List[str] = []
        taken = {gt}
        if confusable:
            similar = [vn for vn in by_verb.get(seg.verb_class, []) + by_noun.get(seg.noun_class, [])
                       if vn != gt]
            similar = list(dict.fromkeys(similar))  # unique, stable order
            for i in rng.permutation(len(similar)):
                if len(chosen) == k:
                    break
                chosen.append(similar[i])
                taken.add(similar[i])
        while len(chosen) < k:
            vn = actions[int(rng.integers(len(actions)))]
            if vn not in taken:
                chosen.append(vn)
                taken.add(vn)
        u = rng.random()
        if u < top1_acc:
            chosen = [gt] + chosen[:k - 1]
        elif rng.random() >= miss_rate and k > 1:
            rank = int(rng.integers(1, k))
            chosen = chosen[:rank] + [gt] + chosen[rank:k - 1]
        preds[seg.row_index] = chosen
    return preds
