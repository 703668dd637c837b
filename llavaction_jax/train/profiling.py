"""Profiler window and HLO dump of the training loop.

config.train.profile_start_step = S > 0 traces steps S .. S + profile_num_steps - 1 with jax.profiler (an xprof
trace: open with TensorBoard's profile plugin or xprof). Every process writes its own folder,
<workdir>/profile/process_<i>, so a pod run gives one trace per host (MaxText's profiler also traces each host).
config.train.dump_hlo writes the optimised HLO of the compiled train step to <workdir>/hlo/ (process 0); for
XLA's full per-pass dump set XLA_FLAGS=--xla_dump_to=DIR instead.
"""
import jax
from absl import logging

from llavaction_jax import fs


def profile_dir(workdir: str) -> str:
    return fs.join(workdir, "profile", f"process_{jax.process_index()}")


class ProfileWindow:
    """before(step) starts the trace when `step` (the step about to run, 1-based) is the first traced one;
    after(step, out) blocks on `out` and stops it after the last. close() stops a trace left open."""

    def __init__(self, workdir: str, start_step: int, num_steps: int):
        self.start = int(start_step)
        self.stop = self.start + max(int(num_steps), 1) - 1
        self.directory = profile_dir(workdir)
        self.active = False

    def before(self, step: int):
        if self.start > 0 and step == self.start and not self.active:
            fs.makedirs(self.directory)
            jax.profiler.start_trace(self.directory)
            self.active = True
            logging.info("profiling steps %d-%d into %s", self.start, self.stop, self.directory)

    def after(self, step: int, out):
        if self.active and step >= self.stop:
            jax.block_until_ready(out)      # the traced steps' device work belongs in the trace
            self.close()

    def close(self):
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            logging.info("profile written to %s", self.directory)


def dump_hlo(workdir: str, name: str, jitted, *args) -> str:
    """Writes the optimised HLO of `jitted` for `args` to <workdir>/hlo/<name>.txt (process 0); returns the path.

    Call before running the step: it lowers and compiles only (a second compile, or a persistent-cache hit)."""
    text = jitted.lower(*args).compile().as_text()
    path = fs.join(workdir, "hlo", f"{name}.txt")
    if jax.process_index() == 0:
        fs.makedirs(fs.join(workdir, "hlo"))
        fs.atomic_write(path, text)
        logging.info("HLO of %s written to %s (%d lines)", name, path, text.count("\n"))
    return path
