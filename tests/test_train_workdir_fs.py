"""The workdir through llavaction_jax.fs on ram:// (TF's in-memory filesystem, an offline stand-in for gs://):
every writer that is not Orbax works: metrics.jsonl with its resume de-duplication, data_failures.jsonl,
TensorBoard events, config.json and the periodic evals' outputs. Orbax (tensorstore) cannot write ram://, so
checkpoints and a bit-exact resume are covered on a file:// workdir in tests/test_train_input.py (gs:// is
served by Orbax's own epath layer)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from llavaction_jax import fs
from llavaction_jax.eval import benchmarks
from llavaction_jax.train import __main__ as train_cli
from llavaction_jax.train import metrics

from tests.test_train_step import _config


def _rows(path):
    return [json.loads(line) for line in fs.read_text(path).splitlines()]


def test_ram_workdir_writers(tmp_path):
    root = "ram://workdir_fs_test/run"
    w = metrics.MetricWriter(root, start_step=0)
    for step in (1, 2, 3):
        w.write(step, {"loss": 1.0 / step})
        w.failures(step, [{"example": step, "file": "/d/x.tfrecord", "offset": 12 * step, "reason": "r"}])
    w.close()
    # Resumed from step 2: the rows of step 3 are dropped from both files before new ones are appended.
    w = metrics.MetricWriter(root, start_step=2)
    w.write(3, {"loss": 0.25})
    w.close()
    assert [(r["step"], r["loss"]) for r in _rows(f"{root}/metrics.jsonl")] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert [r["offset"] for r in _rows(f"{root}/{metrics.FAILURES_FILE}")] == [12, 24]
    scalars = []
    for path in sorted(tf.io.gfile.glob(f"{root}/tensorboard/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    assert sorted(scalars) == [(1, "train/loss", 1.0), (2, "train/loss", 0.5), (3, "train/loss", 0.25),
                               (3, "train/loss", pytest.approx(1 / 3))]
    assert not tf.io.gfile.glob(f"{root}/*.tmp-*")                   # the atomic rewrite left no temp file

    cfg = _config(steps=3)
    text = train_cli._save_config(cfg, root)
    assert json.loads(fs.read_text(f"{root}/config.json")) == json.loads(text)
    assert json.loads(text)["train"]["num_steps"] == 3


class _Bench:
    """A benchmark that writes a report under its workdir as SourceBenchmark does (workdir/step_<N>)."""

    def __init__(self, workdir):
        self.workdir = workdir

    def run(self, model, step):
        out = os.path.join(self.workdir, f"step_{step}")
        os.makedirs(os.path.join(out, "samples"), exist_ok=True)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump({"accuracy": 0.5, "model": model}, f)
        with open(os.path.join(out, "samples", "0.png"), "wb") as f:
            f.write(b"\x89PNG")
        return {"accuracy": 0.5}


def test_periodic_eval_outputs_reach_a_ram_workdir(tmp_path, monkeypatch):
    root = "ram://workdir_fs_test/evalrun"
    monkeypatch.setattr(benchmarks, "build", lambda c, config, mesh, tok, workdir: _Bench(workdir))
    monkeypatch.setattr(benchmarks, "configured", lambda config: {"val": type("C", (), {"every": 2})()})
    evals = benchmarks.periodic_evals(None, None, root, tokenizer=object())
    staging = evals.benchmarks["val"][1].workdir
    assert not fs.is_url(staging) and evals.benchmarks["val"][2] == (staging, f"{root}/eval/val")
    assert evals.due(2) and not evals.due(3)
    assert evals("m", 2) == {"val/accuracy": 0.5}
    out = f"{root}/eval/val/step_2"
    assert json.loads(fs.read_text(f"{out}/summary.json")) == {"accuracy": 0.5, "model": "m"}
    with fs.open_file(f"{out}/samples/0.png", "rb") as f:
        assert f.read() == b"\x89PNG"
    assert not os.path.exists(os.path.join(staging, "step_2"))       # the staged copy is gone
    # A local workdir is written in place (no staging).
    local = benchmarks.periodic_evals(None, None, str(tmp_path), tokenizer=object())
    assert local.benchmarks["val"][1].workdir == os.path.join(str(tmp_path), "eval", "val")
    assert local.benchmarks["val"][2] is None
    assert np.isclose(local("m", 4)["val/accuracy"], 0.5)
