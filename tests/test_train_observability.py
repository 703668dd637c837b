"""Observability and the checkpoint tiers of the training loop, in-process on the tiny model: the profiler
window writes an xprof trace and the HLO, per-step metrics and the goodput breakdown reach metrics.jsonl, wandb
(offline) writes its run directory beside TensorBoard, and temporary checkpoints are replaced by the next."""
import glob
import json
import os

import pytest

from llavaction_jax.cli import UserError
from llavaction_jax.train import checkpointing, goodput, loop, synthetic_batches, trackers

from tests.test_train_step import _arrays, _config, _mesh


def _train(workdir, steps, **train_overrides):
    cfg = _config(steps=steps)
    cfg.train.update(log_every=1, **train_overrides)
    mesh = _mesh(cfg)
    it = synthetic_batches.ArrayBatchIterator(_arrays(cfg), cfg.data.global_batch_size, mesh, seed=0)
    return loop.train(cfg, str(workdir), train_iter=it, mesh=mesh)


def _rows(workdir, prefix):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["prefix"] == prefix]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("profiled")
    summary = _train(workdir, steps=4, profile_start_step=2, profile_num_steps=2, dump_hlo=True)
    return str(workdir), summary


def test_profile_window_writes_a_trace_and_the_hlo(profiled):
    workdir, summary = profiled
    assert summary["final_step"] == 4
    traces = glob.glob(os.path.join(workdir, "profile", "process_0", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    with open(os.path.join(workdir, "hlo", "train_step.txt")) as f:
        hlo = f.read()
    assert hlo.startswith("HloModule") and "ENTRY" in hlo


def test_per_step_metrics_and_goodput(profiled):
    workdir, summary = profiled
    rows = _rows(workdir, "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["data_wait_s"] >= 0 and r["param_norm"] > 0 and r["grad_norm"] > 0 and r["update_norm"] > 0
    # The step timer starts at the first fetch, so steps 2.. carry a step time and throughput per chip.
    for r in rows[1:]:
        assert r["tokens_per_s_per_chip"] == pytest.approx(r["tokens_per_s"] / 8, rel=1e-12)
    [g] = _rows(workdir, "goodput")
    assert g["step"] == 4 and g == dict(summary["goodput"], step=4, prefix="goodput")
    phases = [g[f"{p}_s"] for p in goodput.PHASES]
    assert g["compile_s"] > 0 and g["startup_s"] > 0 and g["checkpoint_s"] > 0       # final save at step 4
    assert sum(phases) + g["productive_s"] == pytest.approx(g["wall_s"], rel=1e-9)
    assert g["goodput"] == pytest.approx(g["productive_s"] / g["wall_s"], rel=1e-12)


def test_goodput_timer_phases():
    timer = goodput.GoodputTimer()
    timer.add("eval", 0.0)
    with timer.phase("data_wait"):
        pass
    report = timer.report()
    assert set(report) == {f"{p}_s" for p in goodput.PHASES} | {"productive_s", "wall_s", "goodput"}
    with pytest.raises(KeyError, match="unknown goodput phase 'sleep'"):
        timer.add("sleep", 1.0)


def test_wandb_offline_run_beside_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is the optional `wandb` extra: pip install 'llavaction_jax[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(tmp_path, steps=2, trackers=("tensorboard", "wandb"))
    with open(tmp_path / trackers.WANDB_ID_FILE) as f:
        run_id = f.read().strip()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1 and os.path.isfile(os.path.join(runs[0], f"run-{run_id}.wandb"))
    assert os.path.getsize(os.path.join(runs[0], f"run-{run_id}.wandb")) > 0
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    # A resumed run appends to the same wandb run id.
    _train(tmp_path, steps=3, trackers=("tensorboard", "wandb"))
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 2 and all(os.path.isfile(os.path.join(r, f"run-{run_id}.wandb")) for r in runs)


def test_unknown_tracker_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown tracker 'mlflow'"):
        _train(tmp_path, steps=1, trackers=("mlflow",))


def test_temporary_checkpoints_are_replaced_by_the_next(tmp_path):
    # A temporary save after every step (the interval is ~0): each is deleted once the next one commits;
    # the permanent step-4 checkpoint and the final step stay.
    summary = _train(tmp_path, steps=6, checkpoint_every=4, keep_checkpoints=3, temporary_checkpoint_minutes=1e-9)
    assert summary["saved_steps"] == [1, 2, 3, 4, 5, 6]
    assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [4, 6]


def test_permanent_and_latest_policy():
    policy = checkpointing.PermanentAndLatest(keep=2, every=10, final_step=35)

    class Info:
        def __init__(self, step):
            self.step = step
    steps = [3, 10, 14, 20, 27, 30, 33]
    assert policy.should_preserve([Info(s) for s in steps], context=None) == [
        False, False, False, True, False, True, True]        # permanent 20, 30 (keep 2) and the newest, 33
    assert policy.should_preserve([Info(s) for s in (30, 35)], context=None) == [True, True]


def test_compilation_cache_on_for_pod_runs():
    resolve = loop.resolve_compilation_cache
    assert resolve("auto", "/w", 4, "cpu") == "/w/compilation_cache"          # several processes
    assert resolve("auto", "gs://b/w", 1, "tpu") == "gs://b/w/compilation_cache"
    assert resolve("auto", "/w", 1, "gpu") == "/w/compilation_cache"
    assert resolve("auto", "/w", 1, "cpu") == ""                               # a laptop run: off
    assert resolve("auto", "/w", 4, "tpu", current="/cache") == ""             # JAX_COMPILATION_CACHE_DIR wins
    assert resolve("", "/w", 4, "tpu") == "" and resolve("/c", "/w", 1, "cpu") == "/c"
