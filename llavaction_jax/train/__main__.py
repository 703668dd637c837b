"""CLI: python -m llavaction_jax.train --config configs/tiny.py --workdir DIR [--config.optim.lr=2e-5 ...]

It runs the evals named in config.evals (llavaction_jax.eval.benchmarks), each every `every` steps, and with
config.train.eval_every > 0 also config.data.eval_files (MQA TFRecords) as the eval "ek100_mqa": scalars to
metrics.jsonl/TensorBoard as eval/<name>/<metric>, predictions + report under <workdir>/eval/<name>/step_<N>.

The whole config is checked first (configs/validate.py: unknown keys, types, ranges, cross-field rules; a bad
value is one `error:` line naming config.<section>.<key>), then printed and saved to <workdir>/config.json.
Exit status: 0 finished, 2 bad input (one `error:` line), 1 internal error, 75 (cli.EXIT_PREEMPTED) stopped by
SIGTERM after saving a checkpoint: rerun the same command to resume.

Multi-process runs (TPU pods, SLURM GPU clusters, or --coordinator_address/--num_processes/--process_id)
are initialised from the environment before any device is touched.
"""
import json
import logging as std_logging
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from llavaction_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output dir: checkpoints/, tensorboard/.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_bool("debug", False, "show the traceback of a user error too (or set LLAVACTION_DEBUG=1)")


def _orbax_info(record) -> bool:
    return record.levelno < std_logging.WARNING and f"{os.sep}orbax{os.sep}" in (record.pathname or "")


def quiet_orbax() -> None:
    """Orbax logs ~100 INFO lines per save through absl's logger: keep its warnings and errors only."""
    std_logging.getLogger("orbax").setLevel(std_logging.WARNING)
    absl_logger = logging.get_absl_logger()
    if not any(getattr(f, "__name__", "") == "_not_orbax_info" for f in absl_logger.filters):
        def _not_orbax_info(record):
            return not _orbax_info(record)
        absl_logger.addFilter(_not_orbax_info)


def _user_errors():
    # A checkpoint (init_from, or the workdir's own on resume) that does not fit the configured model.
    from llavaction_jax.convert.mapping import CheckpointMismatchError
    return (CheckpointMismatchError,)


def _save_config(config, workdir: str) -> str:
    from llavaction_jax import fs
    from llavaction_jax.train import checkpointing
    text = json.dumps(checkpointing.config_to_dict(config), indent=1, sort_keys=True, default=str) + "\n"
    fs.makedirs(workdir)
    fs.atomic_write(fs.join(workdir, "config.json"), text)
    return text


def train_main(argv) -> int:
    del argv
    from configs import validate
    config = validate.validate(_CONFIG.value)      # the whole config, before any process or device starts
    import jax
    from llavaction_jax import distributed
    distributed.initialize_from_env(_COORD.value, _NPROC.value, _PID.value)
    quiet_orbax()
    from llavaction_jax import sharding as shd
    from llavaction_jax import fs, slices
    from llavaction_jax.train.loop import resolve_workdir, train
    # The slice and mesh before anything is written: a config sized for another slice, or a mesh these
    # devices cannot form, is one line.
    try:
        slices.check_running_slice(config.aot.accelerator_type, jax.devices())
    except ValueError as e:
        raise cli.UserError(str(e), "config.aot.accelerator_type") from None
    config = slices.spread_over_slices(config, shd.num_slices(jax.devices()))
    try:
        mesh = shd.make_mesh(config.mesh)
    except ValueError as e:
        raise cli.UserError(str(e), "config.mesh") from None
    workdir = resolve_workdir(_WORKDIR.value)
    if jax.process_index() == 0:
        text = _save_config(config, workdir)
        logging.info("config (saved to %s):\n%s", fs.join(workdir, "config.json"), text)
    from llavaction_jax.eval import benchmarks
    eval_fn = benchmarks.periodic_evals(config, mesh, workdir)      # None when no eval is scheduled
    summary = train(config, workdir, eval_fn=eval_fn, mesh=mesh)
    report = {k: summary[k] for k in ("start_step", "final_step", "preempted", "data_exhausted", "saved_steps",
                                      "skipped_records")}
    report["last_loss"] = summary["losses"][-1] if summary["losses"] else None
    logging.info("training finished: %s", json.dumps(report))
    print(json.dumps(report), file=sys.stdout, flush=True)
    if summary["preempted"]:
        logging.warning("preempted: checkpoint at step %d saved; exiting %d so the scheduler requeues the run",
                        summary["final_step"], cli.EXIT_PREEMPTED)
        return cli.EXIT_PREEMPTED
    return 0


def main(argv) -> int:
    """In-process entry (flags already parsed): the exit status under llavaction_jax.cli's convention."""
    return cli.run(train_main, argv, user_errors=_user_errors())


if __name__ == "__main__":
    from llavaction_jax import argparsing
    flags.mark_flags_as_required(["config", "workdir"])
    argparsing.run_absl(train_main, __doc__, aliases=("coordinator_address", "num_processes", "process_id"),
                        user_errors=_user_errors())
