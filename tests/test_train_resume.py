"""The CLI trainer in subprocesses: SIGTERM mid-run saves and exits; the resumed run reproduces the
uninterrupted run bit-exactly (same data order via the saved iterator state). SIGKILL during a save leaves
the last complete checkpoint usable."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llavaction_jax.cli import EXIT_PREEMPTED

from tests.conftest import REPO_ROOT

STEPS = 30      # long enough that SIGTERM (sent at step 2) lands mid-run even on a loaded machine
OVERRIDES = ["--config.train.synthetic_samples=24", "--config.train.synthetic_seq_len=64",
             f"--config.train.num_steps={STEPS}", "--config.train.log_every=1", "--config.train.progress_bar=False",
             "--config.mesh.data=-1"]


def _env(cache_dir, devices=2):
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=REPO_ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _start(workdir, cache_dir, extra=()):
    cmd = [sys.executable, "-m", "llavaction_jax.train", "--config", "configs/tiny.py", "--workdir", str(workdir),
           *OVERRIDES, *extra]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _run(workdir, cache_dir, extra=()):
    p = _start(workdir, cache_dir, extra)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1]), out


def _run_until(workdir, cache_dir, marker, sig, extra=()):
    """Start the trainer, send `sig` as soon as `marker` appears in its log; returns (rc, log)."""
    p = _start(workdir, cache_dir, extra)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if marker in line:
            p.send_signal(sig)
            break
    lines.extend(p.stdout)
    p.wait(timeout=600)
    return p.returncode, "".join(lines)


def _losses(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec["prefix"] == "train":
                assert rec["step"] not in out, f"step {rec['step']} logged twice (rows after a resume point)"
                out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    w = tmp_path_factory.mktemp("ref")
    report, _ = _run(w, cache_dir)
    assert report["final_step"] == STEPS and not report["preempted"]
    losses = _losses(w)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_sigterm_saves_and_resume_is_bit_exact(tmp_path, cache_dir, reference):
    w = tmp_path / "w"
    rc, log = _run_until(w, cache_dir, "train step 2:", signal.SIGTERM, ["--config.train.checkpoint_every=0"])
    assert rc == EXIT_PREEMPTED, log[-3000:]        # distinct from a finished run, so a scheduler requeues it
    report = json.loads([l for l in log.splitlines() if l.startswith("{")][-1])
    k = report["final_step"]
    assert report["preempted"] and 2 <= k < STEPS and report["saved_steps"] == [k]
    resumed, _ = _run(w, cache_dir, ["--config.train.checkpoint_every=0"])
    assert resumed["start_step"] == k and resumed["final_step"] == STEPS
    assert _losses(w) == reference           # exact float equality, every step


def test_sigkill_during_save_restores_last_complete_checkpoint(tmp_path, cache_dir, reference):
    w = tmp_path / "w"
    rc, log = _run_until(w, cache_dir, "checkpoint save at step 6 started", signal.SIGKILL,
                         ["--config.train.checkpoint_every=3"])
    assert rc == -signal.SIGKILL, log[-3000:]
    ckpt_dir = w / "checkpoints"
    complete = sorted(int(d.name) for d in ckpt_dir.iterdir() if d.name.isdigit()
                      and (d / "_CHECKPOINT_METADATA").exists())
    assert complete and complete[-1] in (3, 6)
    resumed, _ = _run(w, cache_dir, ["--config.train.checkpoint_every=3"])
    assert resumed["start_step"] == complete[-1] and resumed["final_step"] == STEPS
    assert _losses(w) == reference
    assert not [d for d in ckpt_dir.iterdir() if "tmp" in d.name]
