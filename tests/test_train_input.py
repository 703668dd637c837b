"""The trainer on the real input pipeline (TFRecords -> tokens -> global batches): trains, checkpoints the
iterator position with the model, and a resumed run continues with exactly the same batches."""
import json

import numpy as np
import pytest

from llavaction_jax.input import synthetic_records as input_synthetic
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.train import loop

from tests.test_train_checkpoint import _Limited
from tests.test_train_step import _config, _mesh


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    cfg = _config(steps=3)
    paths, samples = input_synthetic.write_shards(str(root / "records"), 24, 2, cfg.data.num_frames,
                                                  cfg.model.vision.image_size)
    texts = [t["value"] for s in samples for t in s["conversations"]]
    train_tiny_tokenizer(texts, str(root / "tok"), vocab_size=cfg.model.text.vocab_size)
    cfg.data.update(train_files=str(root / "records" / "train-*.tfrecord"), tokenizer_path=str(root / "tok"),
                    length_buckets=(256,))
    cfg.train.checkpoint_every = 1
    return cfg


def test_resume_on_tfrecords_sees_the_same_batches(data_config, tmp_path, monkeypatch):
    """Also the file:// workdir (llavaction_jax.fs): the interrupted run and its resume write to
    file://<tmp>/part, which is the local dir <tmp>/part (ram:// writers: tests/test_train_workdir_fs.py)."""
    monkeypatch.chdir(tmp_path)                       # a stray relative 'file:' dir would land here
    cfg = data_config
    mesh = _mesh(cfg)
    full = loop.train(cfg, str(tmp_path / "full"), mesh=mesh)
    assert full["final_step"] == 3 and np.isfinite(full["losses"]).all()
    part_url = f"file://{tmp_path}/part"
    part = loop.train(cfg, part_url, train_iter=_Limited(loop.make_train_iterator(cfg, mesh), 2), mesh=mesh)
    assert part["final_step"] == 2 and part["saved_steps"] == [1, 2]
    rest = loop.train(cfg, part_url, mesh=mesh)      # restores the model AND the reader position
    assert rest["start_step"] == 2
    assert part["losses"] + rest["losses"] == full["losses"]      # exact float equality
    part_dir = tmp_path / "part"
    assert sorted(int(d.name) for d in (part_dir / "checkpoints").iterdir() if d.name.isdigit()) == [1, 2, 3]
    with open(part_dir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if r["prefix"] == "train"] == [2, 3]     # log_every=10: each run's last step
    assert [r["step"] for r in rows if r["prefix"] == "goodput"] == [2, 3]   # one breakdown per run
    assert len(list((part_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert not (tmp_path / "file:").exists()


def test_periodic_eval_on_tfrecords_logs_and_writes_reports(data_config, tmp_path):
    import json
    import os
    from llavaction_jax.eval.benchmarks import periodic_evals
    cfg = data_config.copy_and_resolve_references()
    cfg.evals.ek100_mqa = dict(type="ek100_mqa", data=cfg.data.train_files, every=2)
    cfg.eval.update(max_samples=6, batch_size=4, max_new_tokens=4)
    cfg.train.update(num_steps=3, checkpoint_every=0)
    mesh = _mesh(cfg)
    workdir = str(tmp_path / "run")
    loop.train(cfg, workdir, eval_fn=periodic_evals(cfg, mesh, workdir), mesh=mesh)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["prefix"] == "eval"]
    assert [r["step"] for r in evals] == [2]                  # every 2 steps: step 2 only in a 3-step run
    out = os.path.join(workdir, "eval", "ek100_mqa", "step_2")
    with open(os.path.join(out, "predictions.jsonl")) as f:
        preds = [json.loads(line) for line in f]
    assert len(preds) == 6
    # The logged scalars are the accuracies of exactly these predictions.
    assert evals[0]["ek100_mqa/letters_accuracy"] == pytest.approx(np.mean([p["letter_correct"] for p in preds]))
    assert evals[0]["ek100_mqa/generate_accuracy"] == pytest.approx(np.mean([p["gen_correct"] for p in preds]))
    assert os.path.getsize(os.path.join(out, "report.html")) > 0


def test_periodic_eval_needs_its_data(data_config):
    from llavaction_jax.eval.benchmarks import periodic_evals
    cfg = data_config.copy_and_resolve_references()
    cfg.evals.val = dict(type="ek100_mqa", data="", every=2)
    with pytest.raises(ValueError, match=r"no eval data \(config.evals.val.data\)"):
        periodic_evals(cfg, _mesh(cfg), "/nonexistent")
    cfg.evals.val.data = "/nonexistent/eval-*.tfrecord"
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        periodic_evals(cfg, _mesh(cfg), "/nonexistent")
    cfg.evals.val.every = 0                                    # nothing scheduled: no hook at all
    assert periodic_evals(cfg, _mesh(cfg), "/nonexistent") is None
