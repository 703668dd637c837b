"""The training loop: mesh, state (fresh / pretrained / resumed), jitted step, metrics, eval hook, checkpoints.

`train(config, workdir, train_iter=None, eval_fn=None) -> summary dict` is the Python entry point (the CLI in
__main__ wraps it). Any iterator with the input-pipeline interface works as `train_iter`: `next()` returns a
dict of global jax.Arrays {input_ids, attention_mask, labels, pixel_values, actions}, `get_state()` returns
a JSON-able dict and `set_state(d)` restores it (saved with every checkpoint, so resume sees the same data).
`eval_fn(model, step) -> {name: float}` is called with the nnx model at the steps where `eval_fn.due(step)` is
true (llavaction_jax.eval.benchmarks.PeriodicEvals: each config.evals entry at its own `every`); its results go to
metrics.jsonl / TensorBoard with prefix "eval".
"""
import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Mapping, Optional

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from llavaction_jax import cli, fs
from llavaction_jax import sharding as shd
from llavaction_jax.cli import UserError
from llavaction_jax.convert import api
from llavaction_jax.convert.mapping import CheckpointMismatchError
from llavaction_jax.input import recordio
from llavaction_jax.input.tokenizer import Tokenizer
from llavaction_jax.input.train_iterator import make_train_iterator as make_iter
from llavaction_jax.train import checkpointing, metrics as metrics_lib, optimizer as opt_lib
from llavaction_jax.train import goodput as goodput_lib, profiling
from llavaction_jax.train import state as state_lib
from llavaction_jax.train import step as step_lib
from llavaction_jax.train import synthetic_batches
from llavaction_jax.train import trackers as trackers_lib

# Metrics that must stay finite for a state to be worth keeping.
_FINITE_KEYS = ("loss", "grad_norm", "update_norm")


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/inf loss or gradient; training stops without saving."""


class Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and returns (no half-written state)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
        return bool(np.any(flags))


def check_batch_layout(config, mesh):
    """One UserError line for a global batch the mesh / accumulation cannot split evenly."""
    batch = int(config.data.global_batch_size)
    accum = int(config.train.grad_accum_steps)
    shards = int(mesh.shape["data"] * mesh.shape["fsdp"])
    where = "config.data.global_batch_size"
    if batch <= 0 or accum <= 0:
        raise UserError(f"global_batch_size={batch}, grad_accum_steps={accum}",
                        f"{where} / config.train.grad_accum_steps", "both positive")
    if batch % accum:
        raise UserError(f"config.data.global_batch_size={batch} is not divisible by "
                        f"config.train.grad_accum_steps={accum}", where, "a multiple of grad_accum_steps")
    if (batch // accum) % shards:
        raise UserError(f"micro-batch size {batch // accum} (global_batch_size={batch} / grad_accum_steps={accum}) "
                        f"is not divisible by the mesh batch shards data*fsdp = {mesh.shape['data']}*"
                        f"{mesh.shape['fsdp']} = {shards} (mesh {dict(mesh.shape)})", where,
                        f"a multiple of grad_accum_steps x data x fsdp = {accum * shards}")


def make_train_iterator(config, mesh) -> Iterator:
    """The TFRecord input pipeline from config.data (train_files, tokenizer_path)."""
    patterns = [p for p in str(config.data.train_files).split(",") if p.strip()]
    if not patterns:
        raise UserError("no training data", "config.data.train_files", "TFRecord globs (comma separated)")
    for pattern in patterns:
        # The reader's own file layer (tf.io.gfile): local paths, file:// and gs:// alike.
        try:
            recordio.expand_pattern(pattern)
        except UserError as e:
            raise UserError(f"{e.what} {pattern.strip()!r} (empty dataset)", "config.data.train_files",
                            e.expected) from None
    if not config.data.tokenizer_path:
        raise UserError("no tokenizer", "config.data.tokenizer_path", "a dir with tokenizer.json")
    tok = Tokenizer.load(config.data.tokenizer_path, video_token_id=config.model.video_token_id).check_fits(
        config.model.text.vocab_size, "config.model.text.vocab_size")
    return make_iter(config, mesh, tok, files=config.data.train_files, seed=int(config.seed))


@contextlib.contextmanager
def disk_full_as_user_error(checkpoint_dir: str):
    """A full disk while a checkpoint is written (Orbax raises it from its save threads at the next save or at
    close) as one UserError naming the checkpoint directory. Orbax commits a step by renaming its tmp dir, so
    the earlier steps are whole and the next run resumes from the last of them."""
    try:
        yield
    except OSError as e:
        if e.errno not in cli.DISK_FULL:
            raise
        raise UserError(f"no space left on the device while saving a checkpoint ({os.strerror(e.errno)}: "
                        f"{e.filename})", checkpoint_dir, "free space there and run again: the run resumes from "
                        "its last committed checkpoint (the unfinished one is not used)") from None


def resolve_workdir(workdir: str) -> str:
    """The workdir as the fs layer takes it: a local path, `file://...` (-> its plain path) or a URL whose scheme
    tf.io.gfile serves and Orbax can checkpoint to (gs://, ...); any other scheme is a UserError, raised before
    anything is written (never a local 'gs:' directory)."""
    path = fs.check_supported(str(workdir), f"--workdir {workdir}")
    checkpointing.checkpoint_dir(fs.join(path, "checkpoints"))
    return path


def _init_from(config) -> str:
    return str(config.train.init_from)


def _init_from_error(path, err) -> UserError:
    return UserError(f"cannot load init_from {path!r}: {err}", "config.train.init_from",
                     "an Orbax dir from `python -m llavaction_jax.convert import`, an HF / llava_qwen "
                     "safetensors dir or a training workdir")


def check_init_from(path) -> None:
    """A UserError now, before any checkpoint manager (and its background threads) exists, when `path` is not
    a checkpoint load_pretrained can read."""
    try:
        api.detect_format(path)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise _init_from_error(path, e) from None


def _load_pretrained_params(path, setup, config):
    """Params (pure dict, in the train shardings and param dtype) from `llavaction_jax.load_pretrained`:
    an Orbax dir of `python -m llavaction_jax.convert import`, an HF/llava_qwen dir or a train checkpoint."""
    try:
        model, _ = api.load_pretrained(path, dtype=config.model.param_dtype, mesh=setup.mesh,
                                       rules=config.sharding_rules)
    except CheckpointMismatchError:
        raise
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        # config parsing: the path is not a loadable checkpoint.
        raise _init_from_error(path, e) from None
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointing.check_compatible(params, setup.abstract_state["params"], f"init_from {path}")
    return jax.device_put(params, setup.shardings["params"])


def resolve_compilation_cache(setting: str, workdir: str, process_count: int, backend: str,
                              current: str = "") -> str:
    """The persistent compilation cache dir to set ("" = leave JAX's setting alone) for
    config.train.compilation_cache_dir = `setting`: "auto" is <workdir>/compilation_cache on a pod run (several
    processes, or TPU / GPU devices) unless a cache is `current`ly set (JAX_COMPILATION_CACHE_DIR); "" is off;
    anything else is that path."""
    if setting != "auto":
        return setting
    if current or not (process_count > 1 or backend in ("tpu", "gpu", "cuda", "rocm")):
        return ""
    return fs.join(workdir, "compilation_cache")


class _TemporaryCheckpoints:
    """Time-based tier: due() is True once `minutes` have passed since the last save, the same on every
    process (process 0's clock decides, broadcast to the others)."""

    def __init__(self, minutes: float):
        self.seconds = float(minutes) * 60.0
        self.last = time.monotonic()

    def saved(self):
        self.last = time.monotonic()

    def due(self) -> bool:
        if self.seconds <= 0:
            return False
        due = time.monotonic() - self.last >= self.seconds
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(np.array(due, np.int32)))
        return due


class _TqdmStream:
    """A stream that prints through tqdm.write: log lines go above the progress bar, not glued to it."""

    def write(self, text):
        text = text.rstrip("\n")
        if text:
            tqdm.write(text, file=sys.stderr)

    def flush(self):
        sys.stderr.flush()


def _log_above_bar():
    """Point absl's console handler at tqdm.write while a bar is shown; returns the undo."""
    handler = getattr(logging.get_absl_handler(), "python_handler", None)
    if handler is None or getattr(handler, "stream", None) is not sys.stderr:
        return lambda: None
    handler.stream = _TqdmStream()

    def restore():
        handler.stream = sys.stderr
    return restore


class _StepLog:
    """Host-side record of fetched per-step metrics, the step timer and the window for averaged logging."""

    def __init__(self):
        self.losses = {}
        self.window = []
        self.times = []
        self._last_fetch = None
        self.last = {}

    def add(self, step, m, fetch_time, first_of_run):
        for k in _FINITE_KEYS:
            if not np.isfinite(m[k]):
                raise NonFiniteLossError(
                    f"non-finite {k} at step {step}: " + metrics_lib.format_scalars(
                        {k2: float(v) for k2, v in m.items()}) + " — stopping; no checkpoint is written for "
                    f"this or later steps")
        self.losses[step] = float(m["loss"])
        if self._last_fetch is not None and not first_of_run:
            self.times.append(fetch_time - self._last_fetch)
        self._last_fetch = fetch_time
        self.window.append({k: float(v) for k, v in m.items()})


def train(config, workdir: str, train_iter: Optional[Iterator] = None,
          eval_fn: Optional[Callable[[object, int], Mapping[str, float]]] = None, mesh=None) -> dict:
    """Train until config.train.num_steps (resuming from workdir's latest checkpoint); returns a summary."""
    timer = goodput_lib.GoodputTimer()
    opt_lib.validate_config(config)
    trackers_lib.check_trackers(tuple(config.train.trackers))
    if _init_from(config):
        check_init_from(_init_from(config))
    workdir = resolve_workdir(workdir)
    fs.makedirs(workdir)
    tc = config.train
    num_steps = int(tc.num_steps)
    mesh = mesh if mesh is not None else shd.make_mesh(config.mesh)
    check_batch_layout(config, mesh)
    cache_dir = resolve_compilation_cache(str(tc.compilation_cache_dir), workdir, jax.process_count(),
                                          jax.default_backend(),
                                          os.environ.get("JAX_COMPILATION_CACHE_DIR") or
                                          (jax.config.jax_compilation_cache_dir or ""))
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        logging.info("persistent compilation cache: %s", cache_dir)
    setup = state_lib.build_setup(config, mesh)
    num_params = metrics_lib.count_params(setup.abstract_state["params"])
    groups = opt_lib.summarize_groups(setup.abstract_state["params"], config.optim)
    logging.info("mesh %s, %d params, groups %s", dict(mesh.shape), num_params, groups)

    temporary = _TemporaryCheckpoints(float(tc.temporary_checkpoint_minutes))
    ckpt = checkpointing.Checkpointer(fs.join(workdir, "checkpoints"), keep=int(tc.keep_checkpoints),
                                      async_save=bool(tc.async_checkpointing), temporary=temporary.seconds > 0,
                                      permanent_every=int(tc.checkpoint_every), final_step=num_steps)
    own_iter = train_iter is None

    def close_iter():
        if own_iter and hasattr(train_iter, "close"):
            train_iter.close()      # its reader thread and tf.data pipeline
    try:
        if train_iter is None and int(tc.synthetic_samples) > 0:
            seq_len = int(tc.synthetic_seq_len) or int(config.data.max_length)
            arrays = synthetic_batches.synthetic_arrays(config, int(tc.synthetic_samples), seq_len, seed=int(config.seed))
            train_iter = synthetic_batches.ArrayBatchIterator(arrays, int(config.data.global_batch_size), mesh,
                                                      seed=int(config.seed))
        elif train_iter is None:
            train_iter = make_train_iterator(config, mesh)
        latest = ckpt.latest_step()
        if latest is not None:
            state, data_state = ckpt.restore(latest, setup.abstract_state)
            train_iter.set_state(data_state)
            logging.info("resumed from %s/%d", ckpt.directory, latest)
        elif _init_from(config):
            params = _load_pretrained_params(_init_from(config), setup, config)
            state = state_lib.init_state_from_params(setup, config, params)
        else:
            state = state_lib.init_state(setup, config)
    except BaseException:
        # Stop Orbax's background threads before the error propagates: leaving them to interpreter
        # shutdown aborted the process ("Fatal Python error: Aborted", rc 134) after the message.
        ckpt.close()
        close_iter()
        raise
    start = int(jax.device_get(state["step"]))
    config_dict = checkpointing.config_to_dict(config)

    step_fn = step_lib.jit_train_step(setup, config)
    peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind,
                                             float(tc.peak_flops_per_device))
    writer = metrics_lib.MetricWriter(workdir, start_step=start, trackers=tuple(tc.trackers), train_config=tc,
                                      run_config=config_dict)
    profiler = profiling.ProfileWindow(workdir, int(tc.profile_start_step), int(tc.profile_num_steps))
    cache_size = getattr(step_fn, "_cache_size", None)      # jax.jit's count of compiled programs
    data_waits = {}              # step -> seconds spent in next(train_iter)
    bar = None
    restore_log_stream = lambda: None   # noqa: E731
    if tc.progress_bar and jax.process_index() == 0:
        bar = tqdm(total=num_steps, initial=start, desc="train", dynamic_ncols=True)
        restore_log_stream = _log_above_bar()

    log = _StepLog()
    pending = []                 # (step, device metrics) not yet fetched
    saved_steps = []
    preempted = exhausted = False
    # config.data.skip_corrupt_records: the iterator reports what it left out of each batch's stream span.
    count_skips = bool(config.data.skip_corrupt_records) and hasattr(train_iter, "num_skipped")

    def drain(keep_last: bool):
        items = pending[:-1] if keep_last else pending[:]
        if not items:
            return
        host = jax.device_get([m for _, m in items])
        now = time.perf_counter()
        for (s, _), m in zip(items, host):
            log.add(s, {**m, "data_wait_s": data_waits.pop(s, 0.0)}, now, first_of_run=(s == start + 1))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(m['loss']):.4f}")
        del pending[:len(items)]

    def write_logs(step):
        if not log.window:
            return
        scalars = {k: float(np.mean([w[k] for w in log.window])) for k in log.window[0]}
        step_time = float(np.mean(log.times[-len(log.window):])) if log.times else None
        scalars["step_time_s"] = step_time
        if step_time:
            scalars["tokens_per_s"] = scalars["tokens"] / step_time
            scalars["tokens_per_s_per_chip"] = scalars["tokens_per_s"] / jax.device_count()
            # Real (unpadded) tokens per row, as the AOT report counts a sample (train.metrics).
            flops = metrics_lib.model_flops_per_step(config, setup.abstract_state["params"],
                                                     scalars["tokens"] / int(config.data.global_batch_size))
            scalars["mfu"] = metrics_lib.mfu(flops, step_time, jax.device_count(), peak)
        writer.write(step, scalars)
        if count_skips:
            writer.write(step, {"skipped_records": int(train_iter.num_skipped)}, prefix="data")
        log.last = scalars
        log.window = []

    def save(step):
        if step in saved_steps or step == latest:
            return
        with timer.phase("checkpoint"), disk_full_as_user_error(ckpt.directory):
            ckpt.save(step, state, train_iter.get_state(), config_dict)
        saved_steps.append(step)
        temporary.saved()

    eval_due = None if eval_fn is None else eval_fn.due

    step = start
    timer.add("startup", timer.elapsed())     # mesh, state init / restore, writers: everything before step 1
    try:
        with Preemption() as preemption:
            while step < num_steps:
                try:
                    t_data = time.perf_counter()
                    batch = next(train_iter)
                    data_waits[step + 1] = time.perf_counter() - t_data
                    timer.add("data_wait", data_waits[step + 1])
                except StopIteration:
                    if step == start:
                        raise ValueError("empty dataset: the train iterator produced no batch "
                                         f"(config.data.train_files={config.data.train_files!r})") from None
                    logging.warning("train data exhausted at step %d; stopping early", step)
                    exhausted = True
                    break
                if count_skips:
                    writer.failures(step + 1, train_iter.last_skipped)
                if tc.dump_hlo and step == start:
                    with timer.phase("compile"):
                        profiling.dump_hlo(workdir, "train_step", step_fn, state, batch)
                profiler.before(step + 1)
                compiled_before = cache_size() if cache_size else None
                t_dispatch = time.perf_counter()
                state, m = step_fn(state, batch)
                if cache_size and cache_size() != compiled_before:
                    # This call traced and compiled (the first step, or a new batch shape): dispatch time is compile.
                    timer.add("compile", time.perf_counter() - t_dispatch)
                step += 1
                profiler.after(step, m)
                pending.append((step, m))
                drain(keep_last=True)
                stop = preemption.any_process()
                boundary_log = step % int(tc.log_every) == 0 or step == num_steps
                boundary_ckpt = (int(tc.checkpoint_every) > 0 and step % int(tc.checkpoint_every) == 0)
                boundary_eval = eval_due is not None and eval_due(step)
                # Checked at log steps only: on a pod due() is a collective, kept off the other steps.
                boundary_temp = boundary_log and not boundary_ckpt and temporary.due()
                if boundary_log or boundary_ckpt or boundary_eval or boundary_temp or stop:
                    drain(keep_last=False)       # every step up to here is finite before anything is saved
                if boundary_log:
                    write_logs(step)
                if boundary_ckpt or boundary_temp or stop:
                    save(step)
                if boundary_eval:
                    with timer.phase("eval"):
                        results = eval_fn(setup.merge(state["params"]), step)
                    writer.write(step, {k: float(v) for k, v in dict(results).items()}, prefix="eval")
                if stop:
                    preempted = True
                    break
            drain(keep_last=False)
            write_logs(step)
            if step > start:
                save(step)
    finally:
        profiler.close()
        try:
            # Let in-flight saves of good states finish; nothing is saved after a failure.
            with timer.phase("checkpoint"), disk_full_as_user_error(ckpt.directory):
                ckpt.close()
        finally:                    # a failed save (a full disk) still closes the input and the logs
            close_iter()
            goodput = timer.report()
            writer.write(step, goodput, prefix="goodput")
            writer.close()
            if bar is not None:
                restore_log_stream()
                bar.close()

    if count_skips:
        # The one summary line; each skip was logged as it happened and is a row of data_failures.jsonl.
        logging.warning("%d corrupt training record(s) skipped (config.data.skip_corrupt_records)%s",
                        train_iter.num_skipped, f"; listed in {fs.join(workdir, metrics_lib.FAILURES_FILE)}"
                        if train_iter.num_skipped else "")
    return {
        "start_step": start, "final_step": step, "losses": [log.losses[s] for s in sorted(log.losses)],
        "loss_steps": sorted(log.losses), "preempted": preempted, "data_exhausted": exhausted,
        "saved_steps": saved_steps, "num_params": num_params, "param_groups": groups,
        "skipped_records": int(train_iter.num_skipped) if count_skips else 0,
        "last_metrics": log.last, "mean_step_time_s": float(np.mean(log.times)) if log.times else None,
        "goodput": goodput,
        "state": state, "setup": setup,
    }
