"""Eval report: PNG figures (matplotlib, Agg backend) and one HTML page (jinja2, autoescaped) around them.

The page: a provenance header (checkpoint, step, data, config, date), links to predictions / failures / summary,
the three protocols with their one-line explanations, accuracy by distractor source, per-verb and per-noun accuracy
with class names, a verb confusion matrix, the failures, and sample clips from both correct and wrong answers
(frames, question, options, letter scores, generation). Mathtext is off for every label: a "$" in an option or a
question is text, never a matplotlib formula.
"""
import datetime
import os
from typing import Dict, Mapping, Optional, Sequence

import jinja2

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from llavaction_jax.eval.metrics import METHOD_FIELDS, is_correct, verb_confusion  # noqa: E402

PER_VERB_PNG = "per_verb_accuracy.png"
BY_SOURCE_PNG = "accuracy_by_source.png"
SAMPLES_PNG = "samples.png"
CONFUSION_PNG = "verb_confusion.png"
REPORT_HTML = "report.html"
SAMPLES_DIR = "sample_frames"
# Labels are plain text: no "$...$" mathtext parsing (an option like "pay $5" must not crash or render math).
_RC = {"text.parse_math": False, "text.usetex": False}


def _verb_label(verb_class: str, verb_names: Optional[Mapping[int, str]]) -> str:
    try:
        v = int(verb_class)
    except ValueError:
        return verb_class
    return f"{verb_names[v]} ({v})" if verb_names and v in verb_names else str(v)


_class_label = _verb_label


def plot_per_verb(summary: Mapping, path: str, verb_names: Optional[Mapping[int, str]] = None,
                  max_verbs: int = 40) -> None:
    methods = summary["methods"]
    # Most frequent verbs first (the first method's counts).
    per_verb = summary[methods[0]]["per_verb"]
    verbs = sorted(per_verb, key=lambda v: -per_verb[v]["n"])[:max_verbs]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(verbs) * len(methods) + 2), 4))
    width = 0.8 / len(methods)
    x = np.arange(len(verbs))
    for i, method in enumerate(methods):
        acc = [summary[method]["per_verb"].get(v, {}).get("accuracy", np.nan) for v in verbs]
        ax.bar(x + i * width, np.nan_to_num(acc) * 100, width, label=method)
    ax.set_xticks(x + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"{_verb_label(v, verb_names)}\nn={per_verb[v]['n']}" for v in verbs], rotation=45,
                       ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.axhline(summary["chance"] * 100, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_title("MQA accuracy per verb class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_by_source(summary: Mapping, path: str) -> None:
    methods = summary["methods"]
    sources = sorted({s for m in methods for s in summary[m]["by_source"]})
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(sources) * len(methods) + 2), 3.5))
    width = 0.8 / len(methods)
    x = np.arange(len(sources))
    for i, method in enumerate(methods):
        acc = [summary[method]["by_source"].get(s, {}).get("accuracy", np.nan) for s in sources]
        bars = ax.bar(x + i * width, np.nan_to_num(acc) * 100, width, label=method)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(x + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"{s}\nn={summary[methods[0]]['by_source'][s]['n']}" if s in summary[methods[0]][
        "by_source"] else s for s in sources])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.axhline(summary["chance"] * 100, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_title("MQA accuracy by distractor source")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(records: Sequence[Mapping], frames: Mapping[str, np.ndarray], path: str,
                 max_frames_shown: int = 4) -> None:
    """One row per sample that has frames: a strip of frames, then the options with truth and predictions."""
    shown = [r for r in records if r["id"] in frames]
    n = max(1, len(shown))
    fig = plt.figure(figsize=(12, 2.4 * n))
    for row, record in enumerate(shown):
        clip = frames[record["id"]]
        picks = np.linspace(0, len(clip) - 1, min(max_frames_shown, len(clip))).round().astype(int)
        strip = np.concatenate([clip[i] for i in picks], axis=1)
        ax = fig.add_subplot(n, 2, 2 * row + 1)
        ax.imshow(strip)
        ax.set_axis_off()
        ax.set_title(f"{record['id']}  [{record.get('source')}]", fontsize=8)
        lines = [f"truth: {record.get('answer')}  " + "  ".join(
            f"{m}: {record.get(f)}" for m, f in METHOD_FIELDS.items() if f in record)]
        lines += [("> " if o[0] == record.get("answer") else "  ") + o for o in record["options"]]
        if record.get("raw_generation") is not None:
            lines.append(f"generated: {record['raw_generation'][:60]!r}")
        tx = fig.add_subplot(n, 2, 2 * row + 2)
        tx.set_axis_off()
        tx.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace")
    if not shown:
        fig.text(0.5, 0.5, "no sample frames (text-only evaluation)", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(confusion: Mapping, path: str, verb_names: Optional[Mapping[int, str]] = None,
                   title: str = "verb confusion") -> None:
    labels = [_verb_label(str(v), verb_names) for v in confusion["labels"]]
    m = np.asarray(confusion["matrix"], np.float64).reshape(len(labels), len(labels))
    n = max(1, len(labels))
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 1.5 + 0.6 * n))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted verb (chosen option)")
    ax.set_ylabel("true verb")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def summary_rows(summary: Mapping) -> list:
    """(metric, method, value) rows shared by the HTML table, the eval CLI and the demo's printed table."""
    rows = [("samples", "", str(summary["num_samples"]))]
    if "num_failures" in summary:
        rows.append(("failed clips (skipped, see failures.jsonl)", "", str(summary["num_failures"])))
    if summary.get("num_resumed"):
        rows.append(("resumed from an earlier run", "", str(summary["num_resumed"])))
    rows.append(("chance", "", _pct(summary["chance"])))
    for method in summary["methods"]:
        block = summary[method]
        name = block.get("protocol", method)
        rows.append((f"MQA accuracy {name}", method, _pct(block["accuracy"])))
        if block.get("explanation"):
            rows.append((f"  = {block['explanation']}", "", ""))
        for source, v in block["by_source"].items():
            rows.append((f"  source={source} (n={v['n']})", method, _pct(v["accuracy"])))
        for mode, rec in block["recognition"].items():
            if rec["n"]:
                rows.append((f"  recognition[{mode}] verb/noun/action top-1 (n={rec['n']})", method,
                             " / ".join(_pct(rec[k]) for k in ("verb_top1", "noun_top1", "action_top1"))))
        if "unparsed" in block:
            rows.append(("  unparsed generations", method, str(block["unparsed"])))
    if "action_head" in summary:
        h = summary["action_head"]
        rows.append((f"action-token heads verb/noun/action top-1 (n={h['n']})", "heads",
                     " / ".join(_pct(h[k]) for k in ("verb_top1", "noun_top1", "action_top1"))))
    topk = summary.get("recognition_top_k")
    if topk:
        for part in ("heads", "letters", "generate", "strict"):
            block = topk.get(part)
            for k in (topk["k"] if part in ("heads", "letters") else [1]) if block else []:
                rows.append((f"recognition verb/noun/action top-{k} (n={block['n']})", part,
                             " / ".join(_pct(block[f"{kind}_top{k}"]) for kind in ("verb", "noun", "action"))))
    return rows


_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1200px} td,th{padding:2px 10px;text-align:left}
table{border-collapse:collapse} tr:nth-child(even){background:#f4f4f4} img{max-width:100%}
.card{border:1px solid #ccc;margin:1em 0;padding:.5em} .ok{color:#070} .bad{color:#b00} pre{white-space:pre-wrap}
</style></head>
<body><h1>{{ title }}</h1>
<h2>Provenance</h2>
<table>{% for k, v in provenance %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% if config %}<details><summary>config</summary><pre>{{ config }}</pre></details>{% endif %}
<p>Files: {% for name, href in links %}<a href="{{ href }}">{{ name }}</a>{% if not loop.last %} &middot; {% endif %}{% endfor %}</p>
<h2>Protocols</h2>
<table><tr><th>protocol</th><th>method</th><th>accuracy</th><th>what counts as correct</th></tr>
{% for p in protocols %}<tr><td>{{ p.name }}</td><td>{{ p.method }}</td><td>{{ p.accuracy }}</td><td>{{ p.explanation }}</td></tr>{% endfor %}
</table>
<h2>Summary</h2>
<table><tr><th>metric</th><th>method</th><th>value</th></tr>
{% for a, b, c in rows %}<tr><td>{{ a }}</td><td>{{ b }}</td><td>{{ c }}</td></tr>{% endfor %}
</table>
<h2>Accuracy by distractor source</h2><img src="{{ by_source_png }}" alt="accuracy by source">
<table><tr><th>source</th><th>n</th>{% for m in methods %}<th>{{ m }}</th>{% endfor %}</tr>
{% for row in by_source %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
<h2>Accuracy per verb</h2><img src="{{ per_verb_png }}" alt="per-verb accuracy">
<table><tr><th>verb</th><th>n</th>{% for m in methods %}<th>{{ m }}</th>{% endfor %}</tr>
{% for row in per_verb %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
<h2>Accuracy per noun</h2>
<table><tr><th>noun</th><th>n</th>{% for m in methods %}<th>{{ m }}</th>{% endfor %}</tr>
{% for row in per_noun %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
{% if confusion_png %}<h2>Verb confusion ({{ confusion_method }})</h2><img src="{{ confusion_png }}" alt="verb confusion matrix">{% endif %}
<h2>Failures ({{ failures|length }})</h2>
{% if failures %}<table><tr><th>id</th><th>video</th><th>error</th><th>reason</th></tr>
{% for f in failures %}<tr><td>{{ f.id }}</td><td>{{ f.video_id }}</td><td>{{ f.error }}</td><td>{{ f.reason }}</td></tr>{% endfor %}
</table>{% if more_failures %}<p>... and {{ more_failures }} more in failures.jsonl</p>{% endif %}{% else %}<p>none</p>{% endif %}
<h2>Samples (correct and wrong)</h2><img src="{{ samples_png }}" alt="sample clips with predictions">
{% for c in cards %}<div class="card"><b class="{{ 'ok' if c.correct else 'bad' }}">{{ 'correct' if c.correct else 'wrong' }}</b>
 {{ c.id }} [{{ c.source }}] truth {{ c.answer }}{% for k, v in c.preds %} &middot; {{ k }}: {{ v }}{% endfor %}<br>
{% if c.img %}<img src="{{ c.img }}" alt="frames of {{ c.id }}"><br>{% endif %}
<pre>{{ c.question }}</pre>
<table><tr><th>option</th><th>letter score</th></tr>{% for o, sc in c.options %}<tr><td>{{ '> ' if o[:1] == c.answer else '' }}{{ o }}</td><td>{{ sc }}</td></tr>{% endfor %}</table>
{% if c.generation is not none %}generated: <code>{{ c.generation }}</code>{% endif %}</div>
{% endfor %}
</body></html>
""")


def _table(summary: Mapping, key: str, names: Optional[Mapping[int, str]]) -> list:
    methods = summary["methods"]
    first = summary[methods[0]][key]
    rows = []
    for group in sorted(first, key=lambda g: -first[g]["n"]):
        label = _class_label(group, names) if key != "by_source" else group
        rows.append([label, first[group]["n"]] + [_pct(summary[m][key].get(group, {}).get("accuracy"))
                                                  for m in methods])
    return rows


def write_report(out_dir: str, summary: Mapping, records: Sequence[Mapping], frames: Mapping[str, np.ndarray],
                 verb_names: Optional[Mapping[int, str]] = None, title: str = "EK100-MQA evaluation",
                 failures: Sequence[Mapping] = (), provenance: Optional[Mapping] = None,
                 noun_names: Optional[Mapping[int, str]] = None, max_failures_shown: int = 200) -> Dict[str, str]:
    """Writes the PNGs and report.html into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    names = (PER_VERB_PNG, BY_SOURCE_PNG, SAMPLES_PNG, CONFUSION_PNG, REPORT_HTML)
    paths = {name: os.path.join(out_dir, name) for name in names}
    methods = list(summary["methods"])
    # The confusion matrix of the reference protocol if evaluated, else the first method.
    confusion_method = "generate" if "generate" in methods else methods[0]
    confusion = verb_confusion(records, METHOD_FIELDS[confusion_method])
    with matplotlib.rc_context(_RC):
        plot_per_verb(summary, paths[PER_VERB_PNG], verb_names)
        plot_by_source(summary, paths[BY_SOURCE_PNG])
        plot_samples(records, frames, paths[SAMPLES_PNG])
        if confusion["labels"]:
            plot_confusion(confusion, paths[CONFUSION_PNG], verb_names, f"verb confusion ({confusion_method})")
        else:
            del paths[CONFUSION_PNG]
        cards = _sample_cards(records, frames, out_dir, "strict" if "strict" in methods else methods[0])
    prov = dict(provenance or {})
    config = prov.pop("config", None)
    prov.setdefault("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    protocols = [{"name": summary[m].get("protocol", m), "method": m, "accuracy": _pct(summary[m]["accuracy"]),
                  "explanation": summary[m].get("explanation", "")} for m in methods]
    page = _TEMPLATE.render(
        title=title, provenance=[(k, "" if v is None else str(v)) for k, v in prov.items()], config=config,
        links=[(n, n) for n in ("predictions.jsonl", "failures.jsonl", "summary.json")],
        protocols=protocols, rows=summary_rows(summary), methods=methods,
        by_source=_table(summary, "by_source", None), per_verb=_table(summary, "per_verb", verb_names),
        per_noun=_table(summary, "per_noun", noun_names), by_source_png=BY_SOURCE_PNG, per_verb_png=PER_VERB_PNG,
        confusion_png=CONFUSION_PNG if CONFUSION_PNG in paths else None, confusion_method=confusion_method,
        failures=list(failures)[:max_failures_shown], more_failures=max(0, len(failures) - max_failures_shown),
        samples_png=SAMPLES_PNG, cards=cards)
    with open(paths[REPORT_HTML], "w", encoding="utf-8") as f:
        f.write(page)
    return paths


def _sample_cards(records: Sequence[Mapping], frames: Mapping[str, np.ndarray], out_dir: str, method: str) -> list:
    """One card per sample with kept frames: a frame strip PNG, the question, options + letter scores, generation."""
    cards = []
    shown = [r for r in records if r["id"] in frames]
    if shown:
        os.makedirs(os.path.join(out_dir, SAMPLES_DIR), exist_ok=True)
    for k, r in enumerate(shown):
        clip = frames[r["id"]]
        img = f"{SAMPLES_DIR}/{k:03d}.png"
        plt.imsave(os.path.join(out_dir, img), np.concatenate(list(clip), axis=1))
        scores = r.get("letter_scores") or [None] * len(r["options"])
        correct = is_correct(r, METHOD_FIELDS[method])
        cards.append({
            "id": r["id"], "source": r.get("source"), "answer": r.get("answer"), "correct": bool(correct), "img": img,
            "question": r.get("question", ""), "options": list(zip(r["options"], scores)),
            "preds": [(m, r.get(f)) for m, f in METHOD_FIELDS.items() if f in r],
            "generation": r.get("raw_generation")})
    return cards
