"""Checkpoint safety in-process: data-exhaustion save, NaN stops without touching the good checkpoint,
a checkpoint of another model size fails with a clear message."""
import asyncio
import shutil

import jax
import numpy as np
import pytest
from orbax.checkpoint import checkpoint_manager

from configs import tiny
from llavaction_jax import sharding as shd
from llavaction_jax.train import checkpointing, loop, synthetic_batches

from tests.test_train_step import _arrays, _config, _mesh


class _Limited:
    """Stops after `n` batches (a finite dataset)."""

    def __init__(self, inner, n):
        self.inner, self.left = inner, n

    def __next__(self):
        if self.left == 0:
            raise StopIteration
        self.left -= 1
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    cfg = _config()
    cfg.train.checkpoint_every = 1
    mesh = _mesh(cfg)
    workdir = str(tmp_path_factory.mktemp("good"))
    it = _Limited(synthetic_batches.ArrayBatchIterator(_arrays(cfg), 8, mesh, seed=0), 2)
    summary = loop.train(cfg, workdir, train_iter=it, mesh=mesh)
    return cfg, mesh, workdir, summary


def test_data_exhaustion_stops_and_saves(good_run):
    cfg, mesh, workdir, summary = good_run
    assert summary["data_exhausted"] and summary["final_step"] == 2
    assert checkpointing.Checkpointer(workdir + "/checkpoints").all_steps() == [1, 2]


def test_nan_loss_stops_without_overwriting_good_checkpoint(good_run, tmp_path):
    cfg, mesh, workdir, _ = good_run
    shutil.copytree(workdir, tmp_path / "w")
    arrays = _arrays(cfg)
    # Already-normalised float frames pass the step's normalisation unchanged: NaN frames give a NaN loss.
    arrays["pixel_values"] = np.full(arrays["pixel_values"].shape, np.nan, np.float32)
    it = synthetic_batches.ArrayBatchIterator(arrays, 8, mesh, seed=0)
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss at step 3.*no checkpoint is written"):
        loop.train(cfg, str(tmp_path / "w"), train_iter=it, mesh=mesh)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "w" / "checkpoints"))
    assert ckpt.all_steps() == [1, 2]
    from llavaction_jax.train import state as state_lib
    setup = state_lib.build_setup(cfg, mesh)
    restored, data_state = ckpt.restore(2, setup.abstract_state)
    saved, _ = checkpointing.Checkpointer(workdir + "/checkpoints").restore(2, setup.abstract_state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))
    assert data_state == {"epoch": 1, "pos": 8, "seed": 0}     # 2 batches of 8 from 8 samples


def test_checkpoint_from_another_model_size_is_a_clear_error(good_run, tmp_path):
    cfg, mesh, workdir, _ = good_run
    shutil.copytree(workdir, tmp_path / "w")
    other = _config()
    other.model.text.hidden_size = 32
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=r"parameter '[a-z_/]+' has shape \(.*64.*\) in the checkpoint but \(.*32.*\) in this model"):
        loop.train(other, str(tmp_path / "w"), train_iter=iter([]), mesh=mesh)


def test_eval_hook_is_called_with_the_model(tmp_path):
    cfg = _config()
    cfg.train.update(checkpoint_every=1)
    mesh = _mesh(cfg)
    calls = []

    def eval_fn(model, step):
        calls.append(step)
        return {"norm_scale_sum": float(np.sum(np.asarray(model.llm.norm.scale[...])))}
    eval_fn.due = lambda step: True              # the hook's schedule (PeriodicEvals: each entry's `every`)

    it = _Limited(synthetic_batches.ArrayBatchIterator(_arrays(cfg), 8, mesh, seed=0), 2)
    summary = loop.train(cfg, str(tmp_path), train_iter=it, eval_fn=eval_fn, mesh=mesh)
    assert calls == [1, 2]
    import json
    with open(tmp_path / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r["prefix"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2]
    final = float(np.sum(jax.device_get(summary["state"]["params"]["llm"]["norm"]["scale"])))
    assert evals[-1]["norm_scale_sum"] == pytest.approx(final)


def test_init_from_a_train_checkpoint(good_run, tmp_path):
    cfg, mesh, workdir, _ = good_run
    from llavaction_jax.train import state as state_lib
    setup = state_lib.build_setup(cfg, mesh)
    params = loop._load_pretrained_params(workdir + "/checkpoints/2", setup, cfg)
    saved, _ = checkpointing.Checkpointer(workdir + "/checkpoints").restore(2, setup.abstract_state)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    cfg = _config()
    cfg.train.update(init_from=workdir + "/checkpoints/2", checkpoint_every=1)
    it = _Limited(synthetic_batches.ArrayBatchIterator(_arrays(cfg), 8, mesh, seed=0), 1)
    summary = loop.train(cfg, str(tmp_path), train_iter=it, mesh=mesh)
    assert summary["start_step"] == 0 and summary["final_step"] == 1 and np.isfinite(summary["losses"][0])


def test_close_joins_orbax_tmp_cleanup(tmp_path, monkeypatch):
    """Orbax cleans stale tmp dirs on a thread started at construction; close() must join it, or a run that stops
    before its first save (a bad input) leaves the thread to interpreter shutdown, which prints a traceback."""
    finished = []

    async def slow_cleanup(*args, **kwargs):
        await asyncio.sleep(0.5)
        finished.append(True)

    monkeypatch.setattr(checkpoint_manager.temporary_paths, "cleanup_temporary_paths", slow_cleanup)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.close()
    assert finished == [True]
