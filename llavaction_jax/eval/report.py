"""Eval report: PNG figures (matplotlib, Agg backend) and one HTML page (jinja2, autoescaped) around them.

The page, in this order: the summary (provenance, the three protocols with their one-line explanations, links to
predictions / failures / summary, every summary metric folded), the per-class tables (distractor source, verb and
noun with class names, next to their figures and the verb confusion matrix), a gallery of distinct errors (each
question wrong under at least one protocol shown once: frames, each protocol's answer, options with letter scores,
generation), then the failures. Mathtext is off for every label: a "$" in an option or a
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

from llavaction_jax import fs  # noqa: E402
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


# Page order: summary and protocols, per-class tables (with their figures), a gallery of distinct errors (each
# question once), then the failures. Long tables scroll inside their box, so the page stays a few screens tall.
_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;font-size:14px;margin:1em 2em;max-width:1360px}
h1{font-size:22px;margin:.3em 0} h2{font-size:18px;margin:1em 0 .4em} h3{font-size:14px;margin:.2em 0}
td,th{padding:1px 8px;text-align:left;vertical-align:top} table{border-collapse:collapse}
tr:nth-child(even){background:#f4f4f4} .row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.scroll{max-height:360px;overflow-y:auto;border:1px solid #ddd} .fig{max-height:280px;max-width:44%}
.gallery{display:grid;grid-template-columns:repeat(4,1fr);gap:.6em}
.card{border:1px solid #ccc;padding:.4em;font-size:12px;overflow-wrap:anywhere} .card img{width:100%;max-height:80px;object-fit:contain}
.ok{color:#070} .bad{color:#b00} pre{white-space:pre-wrap;margin:0} details{margin:.3em 0}
</style></head>
<body><h1>{{ title }}</h1>
<section id="summary"><h2>Summary</h2>
<div class="row"><table class="provenance">{% for k, v in provenance %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<table class="protocols"><tr><th>protocol</th><th>method</th><th>accuracy</th><th>what counts as correct</th></tr>
{% for p in protocols %}<tr><td>{{ p.name }}</td><td>{{ p.method }}</td><td>{{ p.accuracy }}</td><td>{{ p.explanation }}</td></tr>{% endfor %}
</table></div>
<p>Files: {% for name, href in links %}<a href="{{ href }}">{{ name }}</a>{% if not loop.last %} &middot; {% endif %}{% endfor %}</p>
<details><summary>all summary metrics</summary><table class="metrics"><tr><th>metric</th><th>method</th><th>value</th></tr>
{% for a, b, c in rows %}<tr><td>{{ a }}</td><td>{{ b }}</td><td>{{ c }}</td></tr>{% endfor %}
</table></details>
{% if config %}<details><summary>config</summary><pre>{{ config }}</pre></details>{% endif %}
</section>
<section id="per-class"><h2>Per class</h2>
<div class="row">{% for name, header, rows in class_tables %}<div><h3>{{ name }}</h3><div class="scroll"><table>
<tr><th>{{ header }}</th><th>n</th>{% for m in methods %}<th>{{ m }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table></div></div>{% endfor %}</div>
<div class="row"><img class="fig" src="{{ by_source_png }}" alt="accuracy by source"><img class="fig" src="{{ per_verb_png }}" alt="per-verb accuracy">
{% if confusion_png %}<img class="fig" src="{{ confusion_png }}" alt="verb confusion matrix ({{ confusion_method }})">{% endif %}</div>
</section>
<section id="errors"><h2>Errors: {{ num_errors }} distinct question{{ '' if num_errors == 1 else 's' }} wrong under at least one protocol{% if num_errors > cards|length %} (the first {{ cards|length }} shown; all are in predictions.jsonl){% endif %}</h2>
{% if cards %}<div class="gallery">{% for c in cards %}<div class="card" id="q-{{ c.id }}"><b>{{ c.id }}</b> [{{ c.source }}] truth <b>{{ c.answer }}</b><br>
{% for m, v, ok in c.preds %}<span class="{{ 'ok' if ok else 'bad' }}">{{ m }}: {{ v }}</span>{% if not loop.last %} &middot; {% endif %}{% endfor %}
{% if c.img %}<br><img src="{{ c.img }}" alt="frames of {{ c.id }}">{% endif %}
<table>{% for o, sc in c.options %}<tr><td>{{ '> ' if o[:1] == c.answer else '' }}{{ o }}</td><td>{{ sc }}</td></tr>{% endfor %}</table>
{% if c.generation is not none %}generated: <code>{{ c.generation }}</code>{% endif %}
{% if c.question %}<details><summary>prompt</summary><pre>{{ c.question }}</pre></details>{% endif %}</div>
{% endfor %}</div>{% else %}<p>none</p>{% endif %}
</section>
<section id="failures"><h2>Failures ({{ failures|length + more_failures }})</h2>
{% if failures %}<div class="scroll"><table><tr><th>id</th><th>video</th><th>error</th><th>reason</th></tr>
{% for f in failures %}<tr><td>{{ f.id }}</td><td>{{ f.video_id }}</td><td>{{ f.error }}</td><td>{{ f.reason }}</td></tr>{% endfor %}
</table></div>{% if more_failures %}<p>... and {{ more_failures }} more in failures.jsonl</p>{% endif %}{% else %}<p>none</p>{% endif %}
</section>
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


def error_records(records: Sequence[Mapping], methods: Sequence[str], frames: Mapping[str, np.ndarray]) -> list:
    """Questions wrong under at least one of `methods`, each once (first record of an id wins), those with kept
    frames first, otherwise in source order."""
    seen, errors = set(), []
    for r in records:
        if r["id"] in seen:
            continue
        seen.add(r["id"])
        if any(not is_correct(r, METHOD_FIELDS[m]) for m in methods):
            errors.append(r)
    return sorted(errors, key=lambda r: (r["id"] not in frames, int(r.get("index", -1))))


def write_report(out_dir: str, summary: Mapping, records: Sequence[Mapping], frames: Mapping[str, np.ndarray],
                 verb_names: Optional[Mapping[int, str]] = None, title: str = "EK100-MQA evaluation",
                 failures: Sequence[Mapping] = (), provenance: Optional[Mapping] = None,
                 noun_names: Optional[Mapping[int, str]] = None, max_failures_shown: int = 200,
                 max_errors_shown: int = 24, max_samples_png: int = 8) -> Dict[str, str]:
    """Writes the PNGs and report.html into out_dir (a local path or a URL, through fs.staged_files: a failure
    half-way leaves the earlier report's files whole); returns their paths."""
    with fs.staged_files(out_dir) as stage:
        paths = _write_report(stage, summary, records, frames, verb_names, title, failures, provenance, noun_names,
                              max_failures_shown, max_errors_shown, max_samples_png)
    return {name: fs.join(fs.normalize(out_dir), name) for name in paths}


def _write_report(out_dir, summary, records, frames, verb_names, title, failures, provenance, noun_names,
                  max_failures_shown, max_errors_shown, max_samples_png) -> Dict[str, str]:
    names = (PER_VERB_PNG, BY_SOURCE_PNG, SAMPLES_PNG, CONFUSION_PNG, REPORT_HTML)
    paths = {name: os.path.join(out_dir, name) for name in names}
    methods = list(summary["methods"])
    # The confusion matrix of the reference protocol if evaluated, else the first method.
    confusion_method = "generate" if "generate" in methods else methods[0]
    confusion = verb_confusion(records, METHOD_FIELDS[confusion_method])
    errors = error_records(records, methods, frames)
    shown = errors[:max_errors_shown]
    with matplotlib.rc_context(_RC):
        plot_per_verb(summary, paths[PER_VERB_PNG], verb_names)
        plot_by_source(summary, paths[BY_SOURCE_PNG])
        # samples.png: the first errors of the gallery as one picture (for viewers without the HTML page).
        plot_samples([r for r in shown if r["id"] in frames][:max_samples_png], frames, paths[SAMPLES_PNG])
        if confusion["labels"]:
            plot_confusion(confusion, paths[CONFUSION_PNG], verb_names, f"verb confusion ({confusion_method})")
        else:
            del paths[CONFUSION_PNG]
        cards = _error_cards(shown, frames, out_dir, methods)
    prov = dict(provenance or {})
    config = prov.pop("config", None)
    prov.setdefault("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    protocols = [{"name": summary[m].get("protocol", m), "method": m, "accuracy": _pct(summary[m]["accuracy"]),
                  "explanation": summary[m].get("explanation", "")} for m in methods]
    class_tables = [("By distractor source", "source", _table(summary, "by_source", None)),
                    ("Per verb", "verb", _table(summary, "per_verb", verb_names)),
                    ("Per noun", "noun", _table(summary, "per_noun", noun_names))]
    links = [(n, n) for n in ("predictions.jsonl", "failures.jsonl", "summary.json", SAMPLES_PNG)]
    page = _TEMPLATE.render(
        title=title, provenance=[(k, "" if v is None else str(v)) for k, v in prov.items()], config=config,
        links=links, protocols=protocols, rows=summary_rows(summary), methods=methods, class_tables=class_tables,
        by_source_png=BY_SOURCE_PNG, per_verb_png=PER_VERB_PNG,
        confusion_png=CONFUSION_PNG if CONFUSION_PNG in paths else None, confusion_method=confusion_method,
        num_errors=len(errors), cards=cards,
        failures=list(failures)[:max_failures_shown], more_failures=max(0, len(failures) - max_failures_shown))
    with open(paths[REPORT_HTML], "w", encoding="utf-8") as f:
        f.write(page)
    return paths


def _error_cards(records: Sequence[Mapping], frames: Mapping[str, np.ndarray], out_dir: str,
                 methods: Sequence[str]) -> list:
    """One card per question: a frame strip PNG when its frames were kept, each protocol's answer (right or
    wrong), the options with letter scores, the generation and the prompt (folded)."""
    cards = []
    if any(r["id"] in frames for r in records):
        os.makedirs(os.path.join(out_dir, SAMPLES_DIR), exist_ok=True)
    for k, r in enumerate(records):
        img = None
        if r["id"] in frames:
            img = f"{SAMPLES_DIR}/{k:03d}.png"
            plt.imsave(os.path.join(out_dir, img), np.concatenate(list(frames[r["id"]]), axis=1))
        scores = r.get("letter_scores") or [None] * len(r["options"])
        scores = ["" if sc is None else f"{sc:.2f}" for sc in scores]
        preds = [(m, r.get(METHOD_FIELDS[m]), is_correct(r, METHOD_FIELDS[m])) for m in methods]
        cards.append({
            "id": r["id"], "source": r.get("source"), "answer": r.get("answer"), "img": img,
            "question": r.get("question", ""), "options": list(zip(r["options"], scores)), "preds": preds,
            "generation": r.get("raw_generation")})
    return cards
