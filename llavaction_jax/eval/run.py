"""Evaluate a source end to end and write predictions.jsonl, summary.json and the report (process 0 writes)."""
import json
import os
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from llavaction_jax import fs
from llavaction_jax.cli import UserError
from llavaction_jax.distributed import allgather_ints, broadcast_json
from llavaction_jax.eval import fingerprint as fingerprint_lib, metrics, report
from llavaction_jax.eval.evaluator import Evaluator

PREDICTIONS_FILE = "predictions.jsonl"
FAILURES_FILE = "failures.jsonl"
SUMMARY_FILE = "summary.json"


def _atomic_write_lines(path: str, rows: Sequence[Mapping]) -> None:
    fs.atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_partial_predictions(path: str) -> list:
    """The records of a predictions file an interrupted run left (a torn last line is dropped)."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):          # killed mid-write: that record is simply evaluated again
                break
            raise UserError(f"line {n} is not valid JSON", path,
                            "a predictions.jsonl written by this tool (or use a fresh --out)") from None
    return records


class PredictionWriter:
    """Process 0 appends each batch's records / failures as they are produced (flushed + fsynced); a rerun with
    the same out_dir reads them back and only evaluates what is missing. Failures are retried on a rerun.

    `fingerprint` (eval/fingerprint.py): what makes these predictions; saved ones are resumed only under the same
    one, otherwise a UserError (raised on every process) before anything in out_dir is touched."""

    def __init__(self, out_dir: str, resume: bool = True, fingerprint: Optional[Mapping] = None):
        self.out_dir = out_dir
        self.paths = {"predictions": os.path.join(out_dir, PREDICTIONS_FILE),
                      "failures": os.path.join(out_dir, FAILURES_FILE)}
        self.writer = jax.process_index() == 0
        previous, problem = [], None
        if self.writer:
            os.makedirs(out_dir, exist_ok=True)
            previous = read_partial_predictions(self.paths["predictions"]) if resume else []
            if fingerprint is not None:
                problem = fingerprint_lib.resume_problem(out_dir, fingerprint, len(previous))
            if problem is None:
                # Rewrite what survived (drops a torn line) and start the failures afresh (they are retried).
                _atomic_write_lines(self.paths["predictions"], previous)
                _atomic_write_lines(self.paths["failures"], [])
                if fingerprint is not None:
                    fingerprint_lib.write(out_dir, fingerprint)
        problem = broadcast_json(problem)
        if problem is not None:
            raise fingerprint_lib.refuse(out_dir, problem)
        self.previous = broadcast_json(previous)
        self._files = {k: open(p, "a", encoding="utf-8") for k, p in self.paths.items()} if self.writer else {}

    def __call__(self, records: Sequence[Mapping], failures: Sequence[Mapping]) -> None:
        if not self.writer:
            return
        for key, rows in (("predictions", records), ("failures", failures)):
            if rows:
                f = self._files[key]
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def _in_source_order(records: Sequence[Mapping]) -> list:
    return sorted(records, key=lambda r: (int(r.get("index", -1)), str(r.get("id"))))


def write_outputs(out_dir: str, records: Sequence[Mapping], summary: Mapping, frames: Mapping,
                  verb_names: Optional[Mapping[int, str]] = None, title: str = "EK100-MQA evaluation",
                  failures: Sequence[Mapping] = (), provenance: Optional[Mapping] = None,
                  noun_names: Optional[Mapping[int, str]] = None) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"predictions": os.path.join(out_dir, PREDICTIONS_FILE), "failures": os.path.join(out_dir, FAILURES_FILE),
             "summary": os.path.join(out_dir, SUMMARY_FILE)}
    # Final files in source order: identical whether the run was interrupted and resumed or not.
    _atomic_write_lines(paths["predictions"], _in_source_order(records))
    _atomic_write_lines(paths["failures"], _in_source_order(failures))
    fs.atomic_write(paths["summary"], json.dumps(summary, indent=2))
    paths.update(report.write_report(out_dir, summary, records, frames, verb_names, title, failures=failures,
                                     provenance=provenance, noun_names=noun_names))
    return paths


def evaluate_source(model, tokenizer, config, mesh, source, out_dir: Optional[str] = None,
                    methods: Optional[Sequence[str]] = None, batch_size: Optional[int] = None,
                    verb_names: Optional[Mapping[int, str]] = None, title: str = "EK100-MQA evaluation",
                    resume: bool = True, progress: bool = False, provenance: Optional[Mapping] = None,
                    noun_names: Optional[Mapping[int, str]] = None, head_top_k: int = 1,
                    max_new_tokens: Optional[int] = None,
                    summarize: Optional[Callable[[Sequence[Mapping], Sequence[str]], dict]] = None,
                    fingerprint: Optional[Mapping] = None):
    """(records, summary, paths): every host evaluates its slice; process 0 writes the files under out_dir.

    `summarize(records, methods)` makes the summary (default metrics.summarize); `head_top_k` and
    `max_new_tokens` as the Evaluator's.

    With out_dir, predictions and failures are appended as they are produced and a rerun with the same out_dir
    (resume=True) evaluates only the samples not yet in OUT/predictions.jsonl. Unreadable clips are skipped and
    listed in OUT/failures.jsonl; zero evaluated samples is an error. `fingerprint`: see PredictionWriter.
    """
    evaluator = Evaluator(model, tokenizer, config, mesh, methods=methods, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, head_top_k=head_top_k)
    total = int(np.sum(allgather_ints([source.num_local])))
    if total == 0:
        raise UserError("the eval data holds no samples", "--data", "at least one sample")
    writer = PredictionWriter(out_dir, resume=resume, fingerprint=fingerprint) if out_dir else None
    previous = writer.previous if writer else []
    try:
        new = evaluator.evaluate(source.iterate(), source.num_local, skip_ids=[r["id"] for r in previous],
                                 on_batch=writer, progress=progress)
    finally:
        if writer:
            writer.close()
    records = _in_source_order(list(previous) + new)
    failures = evaluator.failures
    if not records:
        raise UserError(f"no sample could be evaluated: all {len(failures)} failed"
                        + (f" (see {os.path.join(out_dir, FAILURES_FILE)})" if out_dir else ""),
                        "--data / --video_root", "readable clips")
    summary = (summarize or metrics.summarize)(records, evaluator.methods)
    summary["num_failures"] = len(failures)
    summary["num_resumed"] = len(previous)
    paths = {}
    if out_dir and jax.process_index() == 0:
        paths = write_outputs(out_dir, records, summary, evaluator.report_frames, verb_names, title,
                              failures=failures, provenance=provenance, noun_names=noun_names)
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
