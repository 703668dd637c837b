"""Experiment trackers the trainer writes its scalars to: TensorBoard (always available) and Weights & Biases
(the optional `wandb` extra). config.train.trackers names any subset; every tracker gets every scalar
(train / eval / goodput), like torchtitan's metric loggers. Process 0 only (MetricWriter decides).

A wandb run keeps one id per workdir (<workdir>/wandb_run_id), so a resumed or requeued run appends to the same
wandb run instead of starting a new one; WANDB_MODE=offline writes it under <workdir>/wandb without a network.
"""
import os
import uuid
from typing import Mapping, Optional

import numpy as np

from llavaction_jax import fs
from llavaction_jax.cli import UserError

TRACKERS = ("tensorboard", "wandb")
WANDB_ID_FILE = "wandb_run_id"


class _GfileEvents:
    """tensorboardX writer factory (record_writer.register_writer_factory) for one URL scheme: event files
    are opened through the fs layer instead of tensorboardX's own S3 / GCS clients."""

    @staticmethod
    def directory_check(path):
        fs.makedirs(path)

    @staticmethod
    def open(path):
        return fs.open_file(path, "wb")


class TensorBoardTracker:
    """Scalars as TensorBoard event files under <workdir>/tensorboard (tensorboardX; local or URL workdirs)."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter, record_writer  # why: imports torch where installed; TB runs only
        logdir = fs.join(workdir, "tensorboard")
        if fs.is_url(logdir):
            record_writer.register_writer_factory(fs.scheme(logdir), _GfileEvents())
        self._writer = SummaryWriter(logdir)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str):
        for k, v in scalars.items():
            if v is not None and np.isfinite(v):
                self._writer.add_scalar(f"{prefix}/{k}", float(v), step)
        self._writer.flush()

    def close(self):
        self._writer.close()


def import_wandb():
    """The wandb module, or a UserError saying how to install it."""
    try:
        import wandb  # why: an optional extra; only runs that name the tracker need it
    except ImportError:
        raise UserError("config.train.trackers names 'wandb' but the wandb package is not installed",
                        "config.train.trackers", "pip install 'llavaction_jax[wandb]', or drop 'wandb'") from None
    return wandb


class WandbTracker:
    """One wandb run per workdir: project / entity / name from config.train.wandb_*, the config as its config."""

    def __init__(self, workdir: str, project: str, entity: str = "", name: str = "",
                 run_config: Optional[dict] = None):
        wandb = import_wandb()
        id_path = fs.join(workdir, WANDB_ID_FILE)
        run_id = fs.read_text(id_path).strip() if fs.exists(id_path) else uuid.uuid4().hex[:12]
        # wandb writes its run files locally: under the workdir when it is local, else in the current dir.
        local_dir = os.path.abspath(fs.join(workdir, "wandb") if not fs.is_url(workdir) else "wandb")
        os.makedirs(local_dir, exist_ok=True)
        self._run = wandb.init(project=project, entity=entity or None, name=name or None, id=run_id,
                               resume="allow", dir=os.path.dirname(local_dir), config=run_config or {})
        fs.atomic_write(id_path, run_id + "\n")
        self.run_dir = self._run.dir

    def write(self, step: int, scalars: Mapping[str, float], prefix: str):
        values = {f"{prefix}/{k}": float(v) for k, v in scalars.items() if v is not None and np.isfinite(v)}
        if values:
            self._run.log(values, step=int(step))

    def close(self):
        self._run.finish()


def check_trackers(names) -> None:
    """A UserError for an unknown tracker name, or for wandb when it is not installed (before training starts)."""
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"unknown tracker {name!r}", "config.train.trackers", f"a subset of {TRACKERS}")
    if "wandb" in names:
        import_wandb()


def make_trackers(workdir: str, names, train_config=None, run_config: Optional[dict] = None) -> list:
    """The trackers `names` (a subset of TRACKERS) for `workdir`; wandb reads train_config.wandb_*."""
    check_trackers(names)
    out = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardTracker(workdir))
        else:
            out.append(WandbTracker(workdir, str(train_config.wandb_project), str(train_config.wandb_entity),
                                    str(train_config.wandb_run_name), run_config))
    return out
