"""Train (or fine-tune) a model on TFRecord shards, from a config file with command-line overrides.

It runs the evals named in config.evals (llavaction_jax.eval.benchmarks), each every `every` steps: scalars to
metrics.jsonl/TensorBoard as eval/<name>/<metric>, predictions + report under <workdir>/eval/<name>/step_<N>.

The whole config is checked first (configs/validate.py: unknown keys, types, ranges, cross-field rules; a bad
value is one `error:` line naming config.<section>.<key>), then printed and saved to <workdir>/config.json with
its paths absolute (so eval / predict / export work on the run from any directory).
Exit status: 0 finished, 2 bad input (one `error:` line), 1 internal error, 75 (cli.EXIT_PREEMPTED) stopped by
SIGTERM after saving a checkpoint: rerun the same command to resume.

Multi-process runs (TPU pods, SLURM GPU clusters, or --coordinator_address/--num_processes/--process_id)
are initialised from the environment before any device is touched.

examples:
  llavaction-train --config configs/tiny.py --workdir /tmp/tiny --config.train.synthetic_samples=64
  llavaction-train --config configs/llavaction_0p5b.py --workdir gs://bucket/run \\
      --config.data.train_files='gs://bucket/ek100/train-*.tfrecord' --config.optim.lr=2e-5
  python -m llavaction_jax.train ...          (the same command)
"""
import json
import sys

import jax
from absl import logging

from configs import loader
from llavaction_jax import argparsing, cli, distributed, fs, slices
from llavaction_jax import sharding as shd
from llavaction_jax.convert.mapping import CheckpointMismatchError
from llavaction_jax.eval import benchmarks
from llavaction_jax.train import checkpointing
from llavaction_jax.train.loop import resolve_workdir, train

# A checkpoint (init_from, or the workdir's own on resume) that does not fit the configured model.
USER_ERRORS = (CheckpointMismatchError,)


def build_parser() -> argparsing.ArgumentParser:
    p = argparsing.ArgumentParser(prog="llavaction-train", description=__doc__, epilog=loader.keys_help())
    p.add_argument("--config", required=True, metavar="FILE[:ARG]",
                   help="config file with get_config([ARG]), e.g. configs/tiny.py; --config.<key>=<value> "
                   "overrides any key listed below")
    p.add_argument("--workdir", required=True, help="output dir: checkpoints/, tensorboard/, metrics.jsonl, "
                   "config.json (local, file:// or gs://)")
    p.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process; default: "
                   "from the environment)")
    p.add_argument("--num_processes", type=int, default=None, help="number of processes (multi-process)")
    p.add_argument("--process_id", type=int, default=None, help="this process's index (multi-process)")
    return p


def _save_config(config, workdir: str) -> str:
    text = json.dumps(checkpointing.config_to_dict(config), indent=1, sort_keys=True, default=str) + "\n"
    fs.makedirs(workdir)
    fs.atomic_write(fs.join(workdir, "config.json"), text)
    return text


def train_main(argv=None) -> int:
    """Parse `argv` (default sys.argv[1:]) and train; raises cli.UserError on bad input."""
    rest, overrides = loader.split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    logging.set_verbosity(logging.INFO)                # the trainer's progress lines (absl.app's default)
    config = loader.load(args.config, overrides)       # the whole config, before any process or device starts
    distributed.initialize_from_env(args.coordinator_address, args.num_processes, args.process_id)
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
    workdir = resolve_workdir(args.workdir)
    if jax.process_index() == 0:
        text = _save_config(config, workdir)
        logging.info("config (saved to %s):\n%s", fs.join(workdir, "config.json"), text)
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


def main(argv=None) -> int:
    """The console script / `python -m` entry: the exit status under llavaction_jax.cli's convention."""
    return cli.run(train_main, argv, user_errors=USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
