"""Evaluate a source end to end and write predictions.jsonl, summary.json and the report (process 0 writes)."""
import json
import os
from typing import Mapping, Optional, Sequence

import jax

from llavaction_jax.eval import metrics, report
from llavaction_jax.eval.evaluator import Evaluator

PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"


def write_outputs(out_dir: str, records: Sequence[Mapping], summary: Mapping, frames: Mapping,
                  verb_names: Optional[Mapping[int, str]] = None, title: str = "EK100-MQA evaluation") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"predictions": os.path.join(out_dir, PREDICTIONS_FILE), "summary": os.path.join(out_dir, SUMMARY_FILE)}
    with open(paths["predictions"], "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(paths["summary"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    paths.update(report.write_report(out_dir, summary, records, frames, verb_names, title))
    return paths


def evaluate_source(model, tokenizer, config, mesh, source, out_dir: Optional[str] = None,
                    methods: Optional[Sequence[str]] = None, batch_size: Optional[int] = None,
                    verb_names: Optional[Mapping[int, str]] = None, title: str = "EK100-MQA evaluation"):
    """(records, summary, paths): every host evaluates its slice; process 0 writes the files under out_dir."""
    evaluator = Evaluator(model, tokenizer, config, mesh, methods=methods, batch_size=batch_size)
    records = evaluator.evaluate(source.iterate(), source.num_local)
    summary = metrics.summarize(records, evaluator.methods)
    paths = {}
    if out_dir and jax.process_index() == 0:
        paths = write_outputs(out_dir, records, summary, evaluator.report_frames, verb_names, title)
    return records, summary, paths
