"""Eval report: PNG figures (matplotlib, Agg backend) and one HTML page that shows them with the summary.

Figures: per-verb accuracy bars, accuracy by distractor source (one bar per method), and a grid of sample clips
(frames strip + question options, prediction and truth).
"""
import html
import os
from typing import Dict, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from llavaction_jax.eval.metrics import METHOD_FIELDS  # noqa: E402

PER_VERB_PNG = "per_verb_accuracy.png"
BY_SOURCE_PNG = "accuracy_by_source.png"
SAMPLES_PNG = "samples.png"
REPORT_HTML = "report.html"


def _verb_label(verb_class: str, verb_names: Optional[Mapping[int, str]]) -> str:
    try:
        v = int(verb_class)
    except ValueError:
        return verb_class
    return f"{verb_names[v]} ({v})" if verb_names and v in verb_names else str(v)


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


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def summary_rows(summary: Mapping) -> list:
    """(metric, method, value) rows shared by the HTML table and the demo's printed table."""
    rows = [("samples", "", str(summary["num_samples"])), ("chance", "", _pct(summary["chance"]))]
    for method in summary["methods"]:
        block = summary[method]
        rows.append(("MQA accuracy", method, _pct(block["accuracy"])))
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
    return rows


def write_report(out_dir: str, summary: Mapping, records: Sequence[Mapping], frames: Mapping[str, np.ndarray],
                 verb_names: Optional[Mapping[int, str]] = None, title: str = "EK100-MQA evaluation") -> Dict[str, str]:
    """Writes the three PNGs and report.html into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in (PER_VERB_PNG, BY_SOURCE_PNG, SAMPLES_PNG, REPORT_HTML)}
    plot_per_verb(summary, paths[PER_VERB_PNG], verb_names)
    plot_by_source(summary, paths[BY_SOURCE_PNG])
    plot_samples(records, frames, paths[SAMPLES_PNG])
    table = "\n".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                      for a, b, c in summary_rows(summary))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:2px 10px}} img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table><tr><th>metric</th><th>method</th><th>value</th></tr>
{table}
</table>
<h2>Accuracy per verb</h2><img src="{PER_VERB_PNG}" alt="per-verb accuracy">
<h2>Accuracy by distractor source</h2><img src="{BY_SOURCE_PNG}" alt="accuracy by source">
<h2>Samples</h2><img src="{SAMPLES_PNG}" alt="sample clips with predictions">
</body></html>
"""
    with open(paths[REPORT_HTML], "w", encoding="utf-8") as f:
        f.write(page)
    return paths
