"""CLI: python -m llavaction_jax.train --config configs/tiny.py --workdir DIR [--config.optim.lr=2e-5 ...]

With config.train.eval_every > 0 it evaluates config.data.eval_files (MQA TFRecords) every that many steps:
scalars to metrics.jsonl/TensorBoard (prefix "eval"), predictions + report under <workdir>/eval/step_<N>.

Multi-process runs (TPU pods, SLURM GPU clusters, or --coordinator_address/--num_processes/--process_id)
are initialised from the environment before any device is touched.
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output dir: checkpoints/, tensorboard/.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from llavaction_jax import distributed
    distributed.initialize_from_env(_COORD.value, _NPROC.value, _PID.value)
    from llavaction_jax import sharding as shd
    from llavaction_jax.train.loop import train
    config = _CONFIG.value
    mesh = shd.make_mesh(config.mesh)
    eval_fn = None
    if int(config.train.eval_every) > 0:
        from llavaction_jax.eval.run import periodic_eval_fn
        eval_fn = periodic_eval_fn(config, mesh, _WORKDIR.value)
    summary = train(config, _WORKDIR.value, eval_fn=eval_fn, mesh=mesh)
    report = {k: summary[k] for k in ("start_step", "final_step", "preempted", "data_exhausted", "saved_steps")}
    report["last_loss"] = summary["losses"][-1] if summary["losses"] else None
    logging.info("training finished: %s", json.dumps(report))
    print(json.dumps(report), file=sys.stdout, flush=True)


if __name__ == "__main__":
    app.run(main)
