"""Evaluate a source end to end and write predictions.jsonl, summary.json and the report (process 0 writes)."""
import json
import os
from typing import Mapping, Optional, Sequence

import jax

from llavaction_jax.eval import metrics, report, samples
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


def scalar_metrics(summary: Mapping) -> dict:
    """The summary's headline numbers as flat {name: float} (for metrics.jsonl / TensorBoard)."""
    out = {}
    for method in summary["methods"]:
        block = summary[method]
        out[f"{method}_accuracy"] = block["accuracy"]
        for source, v in block["by_source"].items():
            out[f"{method}_accuracy_{source}"] = v["accuracy"]
    if "action_head" in summary:
        for k in ("verb", "noun", "action"):
            out[f"head_{k}_top1"] = summary["action_head"][f"{k}_top1"]
    return {k: float(v) for k, v in out.items() if v is not None}


def periodic_eval_fn(config, mesh, workdir: str, tokenizer=None):
    """The trainer's `eval_fn(model, step)` for config.data.eval_files (MQA TFRecords).

    Every call evaluates the files (the first config.eval.max_samples records when > 0) with config.eval.methods,
    writes predictions, summary and report under `<workdir>/eval/step_<step>` and returns `scalar_metrics`.
    """
    files = str(config.data.eval_files)
    if not files:
        raise ValueError("config.train.eval_every > 0 needs config.data.eval_files (MQA TFRecord globs)")
    if tokenizer is None:
        from llavaction_jax.input.tokenizer import Tokenizer
        tokenizer = Tokenizer.load(config.data.tokenizer_path, video_token_id=int(config.model.video_token_id))
    limit = int(config.eval.get("max_samples", 0)) or None
    # Built once (bad globs fail now, not at the first eval); every call re-reads the records from disk.
    source = samples.tfrecord_source(files, int(config.data.num_frames), limit=limit)

    def eval_fn(model, step):
        _, summary, _ = evaluate_source(model, tokenizer, config, mesh, source,
                                        out_dir=os.path.join(workdir, "eval", f"step_{step}"),
                                        title=f"EK100-MQA evaluation at step {step}")
        return scalar_metrics(summary)
    return eval_fn
