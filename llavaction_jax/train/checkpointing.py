"""Orbax checkpoints of the train state + the data iterator position + the config, with clear mismatch errors.

Layout: <workdir>/checkpoints/<step>/{state, data, config}. Saves are async (the loop keeps training while
the arrays are written) and atomic (Orbax writes to a tmp dir and renames on commit, so a save killed
half-way is invisible to latest_step()). The directory may be local, file:// or any scheme Orbax's epath layer
serves (gs://); others (e.g. TF's ram://, which tensorstore cannot write) are a UserError before any thread starts.

Two tiers (config.train.temporary_checkpoint_minutes > 0): permanent checkpoints (steps that are multiples of
checkpoint_every, and the run's last step), of which the latest `keep` stay, and temporary ones written every N
minutes between them, each deleted once a newer checkpoint of either tier is committed (Orbax's preservation
policy), so a preempted run loses at most N minutes without filling the disk.
"""
import dataclasses
import json
import os
import threading
from typing import Any, Optional, Tuple

import orbax.checkpoint as ocp
from orbax.checkpoint._src.futures import future as ocp_future
from absl import logging
from etils import epath

from llavaction_jax import fs
from llavaction_jax.cli import UserError
from llavaction_jax.convert.mapping import CheckpointMismatchError, check_tree  # noqa: F401 (re-exported)


def check_compatible(saved_tree, target_tree, where: str, what: str = "parameter"):
    """CheckpointMismatchError (every missing / extra / mis-shaped leaf, with both shapes) unless they match."""
    check_tree(saved_tree, target_tree, where, what)


def checkpoint_dir(directory: str) -> str:
    """The directory as Orbax takes it (local: absolute; file:// stripped), or a UserError for a URL scheme
    Orbax's epath layer does not serve."""
    directory = fs.normalize(directory)
    if not fs.is_url(directory):
        return os.path.abspath(directory)
    try:
        epath.Path(directory)
    except KeyError:        # epath's registry has no class for this scheme
        raise UserError(f"Orbax cannot write checkpoints to {fs.scheme(directory)}:// URLs", directory,
                        "a local path, file://... or gs://... workdir") from None
    return directory


@dataclasses.dataclass
class PermanentAndLatest(ocp.checkpoint_managers.PreservationPolicy):
    """Keeps the latest `keep` permanent checkpoints (step % every == 0, or step == final_step) and the newest
    checkpoint of all (the current temporary one); every older temporary checkpoint is deleted."""

    keep: int
    every: int
    final_step: int

    def is_permanent(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step == self.final_step

    def should_preserve(self, checkpoints, *, context):
        permanent = [i for i, c in enumerate(checkpoints) if self.is_permanent(int(c.step))]
        kept = set(permanent[-self.keep:] if self.keep > 0 else permanent)
        if checkpoints:
            kept.add(len(checkpoints) - 1)
        return [i in kept for i in range(len(checkpoints))]


# How long close() waits for each of Orbax's write threads still running after a failed save.
JOIN_TIMEOUT_S = 120.0


class Checkpointer:
    """CheckpointManager wrapper: save(step, state, data_state, config_dict) / restore(step, abstract).

    `temporary=True` keeps the two tiers of PermanentAndLatest(keep, permanent_every, final_step); otherwise
    the latest `keep` checkpoints stay."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True, temporary: bool = False,
                 permanent_every: int = 0, final_step: int = -1):
        self.directory = checkpoint_dir(directory)
        tiers = dict(preservation_policy=PermanentAndLatest(int(keep), int(permanent_every), int(final_step))
                     ) if temporary else dict(max_to_keep=keep)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            item_handlers=dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                               config=ocp.JsonCheckpointHandler()),
            options=ocp.CheckpointManagerOptions(
                create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True, **tiers))

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def all_steps(self):
        return list(self._mngr.all_steps())

    def save(self, step: int, state, data_state: dict, config_dict: dict) -> bool:
        saved = self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config_dict)), force=True)
        logging.info("checkpoint save at step %d started (%s)", step, self.directory)
        return saved

    def restore(self, step: int, abstract_state) -> Tuple[Any, dict]:
        """State (placed in abstract_state's shardings) and the data iterator state of checkpoint `step`."""
        where = f"checkpoint {self.directory}/{step}"
        meta = self._mngr.item_metadata(step)
        saved_state = meta["state"]
        if saved_state is not None:
            params_meta = saved_state.get("params") if hasattr(saved_state, "get") else None
            if params_meta is not None:
                check_compatible(params_meta, abstract_state["params"], where)
            check_compatible(saved_state, abstract_state, where, what="state entry")
        r = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return r["state"], r["data"]

    def restore_config(self, step: int) -> dict:
        return self._mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def close(self):
        try:
            self._mngr.wait_until_finished()
        finally:
            # Close even when the save failed (a full disk), and join Orbax's own threads before we return:
            # otherwise one of them runs into interpreter shutdown and prints a traceback after the one error
            # line ("cannot schedule new futures after shutdown").
            self._mngr.close()
            # Orbax starts its tmp-directory cleanup on a thread at construction and joins it only in save()
            # (0.12.8); a run that stops before its first save (a bad input) must join it here.
            self._mngr._maybe_await_cleanup_tmp_directory()
            # After one item's write fails, wait_until_finished raises at once; the other items' write threads
            # (orbax futures' _SignalingThread) may still run.
            for thread in threading.enumerate():
                if isinstance(thread, ocp_future._SignalingThread) and thread is not threading.current_thread():
                    thread.join(JOIN_TIMEOUT_S)


# Config fields that hold local paths or URLs (data fields: comma-separated globs). Saved absolute, so a run's
# config.json and checkpoints read the same from any working directory (eval / predict / export on the run).
PATH_FIELDS = (("data", "train_files"), ("data", "tokenizer_path"), ("train", "init_from"),
               ("train", "compilation_cache_dir"))
EVAL_PATH_FIELDS = ("data", "video_root", "fps_csv")     # of each entry of config.evals


def absolute_path(value: str) -> str:
    """Each comma-separated local path made absolute; URLs (gs://, file://) and "" unchanged."""
    parts = [p.strip() for p in str(value).split(",")]
    return ",".join(p if not p or fs.is_url(p) else os.path.abspath(os.path.expanduser(p)) for p in parts)


def config_to_dict(config) -> dict:
    """JSON-safe dict of an ml_collections config (tuples become lists), its paths absolute (PATH_FIELDS)."""
    d = json.loads(config.to_json_best_effort())
    for section, key in PATH_FIELDS:
        if isinstance(d.get(section, {}).get(key), str):
            d[section][key] = absolute_path(d[section][key])
    for entry in (d.get("evals") or {}).values():
        for key in EVAL_PATH_FIELDS:
            if isinstance(entry, dict) and isinstance(entry.get(key), str):
                entry[key] = absolute_path(entry[key])
    return d
