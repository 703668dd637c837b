"""Metrics over prediction records (one dict per sample, as written to predictions.jsonl).

A record holds: id, source, mode, options, answer (letter, or None when the ground truth is not among the options,
as in recognition mode), verb_class / noun_class / action_id, option_actions (the "verb_class:noun_class" action
of each option, as llavaction-prep mqa writes it, or None), and per method a prediction: "letter_pred" (option-letter scoring) and "gen_pred" (greedy generation parsed
with the reference parser; None when it matched no option). Recognition top-1 maps the chosen option back to its
action: the predicted verb / noun / action is that option's verb class / noun class / "v:n" pair.
"""
import collections
from typing import Iterable, Mapping, Sequence

# What config.eval.methods may name: the Evaluator's letter scoring and greedy generation.
METHODS = ("letters", "generate")
# Method name -> the record field holding its predicted letter. "strict" is derived from generation.
METHOD_FIELDS = {"letters": "letter_pred", "generate": "gen_pred", "strict": "strict_pred"}

# The three protocols every summary and report gives, in this order: (short name, one-line explanation).
PROTOCOLS = {
    "generate": ("(a) reference protocol",
                 "greedy generation + the original LLaVAction parser: the answer TEXT must equal the true option's "
                 "text; the letter written in front of it is ignored"),
    "letters": ("(b) letter scoring",
                "the option letter with the highest next-token logit right after the prompt must be the true one"),
    "strict": ("(c) strict generation",
               "the generation must name the true option by its letter AND its text (e.g. 'C. take pie' with "
               "truth C)"),
}


def ordered_methods(methods: Iterable[str]) -> list:
    """Evaluated methods in protocol order (a, b, c); generation implies its strict variant."""
    methods = list(methods)
    if "generate" in methods and "strict" not in methods:
        methods.append("strict")
    return [m for m in PROTOCOLS if m in methods]


def _mean(values: Sequence[bool]) -> float:
    return float(sum(values)) / len(values) if values else float("nan")


def is_correct(record: Mapping, pred_field: str) -> bool:
    pred = record.get(pred_field)
    return pred is not None and record.get("answer") is not None and pred == record["answer"]


def split_action(action) -> tuple:
    """"12:34" (option_actions entries of llavaction-prep mqa) -> (12, 34)."""
    verb, sep, noun = str(action).partition(":")
    if not sep or not verb.lstrip("-").isdigit() or not noun.lstrip("-").isdigit():
        raise ValueError(f"option action {action!r} is not of the form 'verb_class:noun_class'")
    return int(verb), int(noun)


def predicted_action(record: Mapping, pred_field: str):
    """(verb, noun) of the chosen option, or None (no prediction, or no option -> action map)."""
    pred, option_actions = record.get(pred_field), record.get("option_actions")
    if pred is None or not option_actions:
        return None
    index = ord(pred) - ord("A")
    if not 0 <= index < len(option_actions):
        raise ValueError(f"record {record.get('id')!r}: prediction {pred!r} outside its {len(option_actions)} options")
    return split_action(option_actions[index])


def recognition_top1(records: Sequence[Mapping], pred_field: str) -> dict:
    """Verb / noun / action top-1 over records that carry option_actions (an unparsed answer counts as wrong)."""
    scored = [r for r in records if r.get("option_actions")]
    hits = {"verb": [], "noun": [], "action": []}
    for r in scored:
        chosen = predicted_action(r, pred_field)
        truth = (int(r["verb_class"]), int(r["noun_class"]))
        hits["verb"].append(chosen is not None and chosen[0] == truth[0])
        hits["noun"].append(chosen is not None and chosen[1] == truth[1])
        hits["action"].append(chosen is not None and chosen == truth)
    return {"n": len(scored), **{f"{k}_top1": _mean(v) for k, v in hits.items()}}


_TRUTH_KEYS = (("verb", "verb_class"), ("noun", "noun_class"), ("action", "action_id"))


def head_top_k(records: Sequence[Mapping], ks: Sequence[int]) -> dict:
    """Action-token heads' top-k: the true verb / noun / action class is among the head's k best classes
    ("head_topk" of the record, best first; "head_pred" alone serves k = 1). Records without heads are left out."""
    scored = [r for r in records if r.get("head_topk") or r.get("head_pred")]
    out = {"n": len(scored)}
    for k in ks:
        for kind, truth_key in _TRUTH_KEYS:
            hits = []
            for r in scored:
                best = r["head_topk"][kind] if r.get("head_topk") else [r["head_pred"][kind]]
                if len(best) < k:
                    raise ValueError(f"record {r.get('id')!r} holds the heads' {len(best)} best {kind} classes, "
                                     f"top-{k} was asked (evaluate with head_top_k >= {k})")
                hits.append(int(r[truth_key]) in [int(x) for x in best[:k]])
            out[f"{kind}_top{k}"] = _mean(hits)
    return out


def option_ranking(record: Mapping) -> list:
    """A record's option indices, best first by letter score: the letter prediction, then the other options by
    descending (rounded) score, ties in letter order."""
    scores = record["letter_scores"]
    first = ord(record["letter_pred"]) - ord("A")
    rest = sorted((i for i in range(len(scores)) if i != first), key=lambda i: -scores[i])
    return [first] + rest


def letters_top_k(records: Sequence[Mapping], ks: Sequence[int]) -> dict:
    """Letter scoring's top-k: the true verb / noun / action is among the verbs / nouns / actions of the k best
    scored options (records with letter scores and option_actions; k past the option count = all options)."""
    scored = [r for r in records if r.get("option_actions") and r.get("letter_scores")]
    out = {"n": len(scored)}
    ranked = [[split_action(r["option_actions"][i]) for i in option_ranking(r)] for r in scored]
    for k in ks:
        hits = {"verb": [], "noun": [], "action": []}
        for r, actions in zip(scored, ranked):
            truth = (int(r["verb_class"]), int(r["noun_class"]))
            top = actions[:k]
            hits["verb"].append(truth[0] in {a[0] for a in top})
            hits["noun"].append(truth[1] in {a[1] for a in top})
            hits["action"].append(truth in top)
        out.update({f"{kind}_top{k}": _mean(v) for kind, v in hits.items()})
    return out


def recognition_top_k(records: Sequence[Mapping], ks: Sequence[int], methods: Iterable[str]) -> dict:
    """Verb / noun / action top-k per predictor: the action heads and letter scoring at every k in `ks`,
    generation (one answer) at k = 1 only. {"k": [...], "heads" | "letters" | "generate" | "strict": {...}}."""
    methods = ordered_methods(methods)
    out = {"k": [int(k) for k in ks]}
    if any(r.get("head_pred") for r in records):
        out["heads"] = head_top_k(records, ks)
    if "letters" in methods:
        out["letters"] = letters_top_k(records, ks)
    for method in ("generate", "strict"):
        if method in methods:
            out[method] = recognition_top1(records, METHOD_FIELDS[method])
    return out


def _grouped_accuracy(records: Sequence[Mapping], key: str, pred_field: str) -> dict:
    groups = collections.defaultdict(list)
    for r in records:
        groups[str(r.get(key))].append(is_correct(r, pred_field))
    return {g: {"n": len(v), "accuracy": _mean(v)} for g, v in sorted(groups.items())}


def summarize(records: Sequence[Mapping], methods: Iterable[str] = ("letters", "generate")) -> dict:
    """Summary dict: accuracy, per distractor source, per mode, per verb and recognition top-1, for each method."""
    records = list(records)
    methods = list(methods)
    unknown = [m for m in methods if m not in METHOD_FIELDS]
    if unknown:
        raise ValueError(f"unknown eval methods {unknown}; expected some of {list(METHOD_FIELDS)}")
    methods = ordered_methods(methods)
    summary = {
        "num_samples": len(records),
        "chance": _mean([1.0 / len(r["options"]) for r in records]),
        "methods": methods,
    }
    for method in methods:
        field = METHOD_FIELDS[method]
        by_mode = collections.defaultdict(list)
        for r in records:
            by_mode[str(r.get("mode"))].append(r)
        block = {
            "protocol": PROTOCOLS[method][0], "explanation": PROTOCOLS[method][1],
            "accuracy": _mean([is_correct(r, field) for r in records]),
            "by_source": _grouped_accuracy(records, "source", field),
            "by_mode": _grouped_accuracy(records, "mode", field),
            "per_verb": _grouped_accuracy(records, "verb_class", field),
            "per_noun": _grouped_accuracy(records, "noun_class", field),
            "recognition": {mode: recognition_top1(rs, field) for mode, rs in sorted(by_mode.items())},
        }
        if method == "generate":
            block["unparsed"] = sum(1 for r in records if r.get("gen_pred") is None)
        summary[method] = block
    head = [r for r in records if r.get("head_pred")]
    if head:
        summary["action_head"] = {"n": len(head), **{
            f"{k}_top1": _mean([int(r["head_pred"][k]) == int(r[f"{k}_class" if k != "action" else "action_id"])
                                for r in head])
            for k in ("verb", "noun", "action")}}
    return summary


def verb_confusion(records: Sequence[Mapping], pred_field: str) -> dict:
    """Verb confusion over records with option_actions: rows = true verb, columns = the chosen option's verb
    (column "none" = no prediction). {"labels": [verb ids], "matrix": [[count]], "none": [count per row]}."""
    scored = [r for r in records if r.get("option_actions") and int(r.get("verb_class", -1)) >= 0]
    labels = sorted({int(r["verb_class"]) for r in scored} | {
        split_action(a)[0] for r in scored for a in r["option_actions"]})
    pos = {v: i for i, v in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    none = [0] * len(labels)
    for r in scored:
        chosen = predicted_action(r, pred_field)
        row = pos[int(r["verb_class"])]
        if chosen is None:
            none[row] += 1
        else:
            matrix[row][pos[chosen[0]]] += 1
    return {"labels": labels, "matrix": matrix, "none": none}
