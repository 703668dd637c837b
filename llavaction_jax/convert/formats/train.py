"""A training checkpoint (format "train"): <workdir>/checkpoints/<step>/{state, data, config} from llavaction_jax.train.

The one reader of training checkpoints (eval, predict, export and `train.init_from` all come through
`load_pretrained`). Read only: the parameters (the `params` entry of the `state` item; the optimizer state is
never read) and the config (the `config` item), both through Orbax's public API. Accepts the workdir, its
checkpoints dir or a step dir; picks the latest committed step (Orbax renames a step dir to its number only
when the save committed), or the one `step_dir(path, step)` names.
"""
import os
from typing import Optional, Sequence

import ml_collections
import orbax.checkpoint as ocp

from llavaction_jax.cli import UserError
from llavaction_jax.convert import common, hf_processor, model_card
from llavaction_jax.convert.formats import orbax as orbax_format
from llavaction_jax.convert.errors import ConvertError

NAME = "train"
DESCRIPTION = "training checkpoint of llavaction_jax.train (<workdir>/checkpoints/<step>/{state,config})"
STATE_ITEM, CONFIG_ITEM = "state", "config"      # item names of train/checkpointing.Checkpointer
# No `write`: the optimizer and data state of a training checkpoint come from training only.
NOT_WRITABLE = ("training checkpoints are written by `python -m llavaction_jax.train`; write 'orbax' for a "
                "params dir of this model")


def _is_step(d: str) -> bool:
    return os.path.isdir(os.path.join(d, STATE_ITEM)) and os.path.isdir(os.path.join(d, CONFIG_ITEM))


def _steps(path: str):
    """(checkpoints dir, its committed steps) of a workdir or checkpoints dir, or (None, [])."""
    for d in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(d):
            steps = sorted(int(n) for n in os.listdir(d) if n.isdigit() and _is_step(os.path.join(d, n)))
            if steps:
                return d, steps
    return None, []


def step_dir(path: str) -> Optional[str]:
    """The step dir of the latest committed step under `path` (workdir, checkpoints dir or step dir), or None."""
    if _is_step(path):
        return path
    d, steps = _steps(path)
    return os.path.join(d, str(steps[-1])) if steps else None


def select_step(path: str, step: int) -> str:
    """The step dir of committed step `step` of the run at `path` (workdir or checkpoints dir); a UserError
    listing the steps there otherwise."""
    d, steps = _steps(path)
    if step not in steps:
        raise UserError(f"no committed checkpoint step {step}", path,
                        f"one of the run's steps {steps}" if steps else "a training workdir (llavaction_jax.train)")
    return os.path.join(d, str(step))


def run_dir(path: str) -> str:
    """The workdir of a training checkpoint (`path`: workdir, checkpoints dir or step dir)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(step_dir(path))))


def step_of(path: str) -> int:
    return int(os.path.basename(os.path.abspath(step_dir(path))))


def detect(path: str) -> bool:
    return step_dir(path) is not None


def saved_config(path: str) -> dict:
    """The whole training config the trainer saved with the latest step (its `config` JSON item)."""
    item = os.path.join(os.path.abspath(step_dir(path)), CONFIG_ITEM)
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
        saved = ckptr.restore(item, args=ocp.args.JsonRestore())
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ConvertError(f"{item}: the saved config has no 'model' section")
    return saved


def train_config(saved: dict, model_cfg=None) -> ml_collections.ConfigDict:
    """The saved training config as the ConfigDict the run trained with; `model_cfg` replaces its model section
    (the loaded model's, with dtype / overrides)."""
    config = ml_collections.ConfigDict(saved)
    # JSON turned tuples into lists; the model config and sharding rules expect tuples.
    config.model = model_cfg if model_cfg is not None else common.model_config_from_dict(saved["model"])
    config.sharding_rules = tuple((r[0], tuple(r[1]) if isinstance(r[1], list) else r[1])
                                  for r in saved.get("sharding_rules") or ())
    return config


def read_config(path: str, config_overrides=None, dtype=None):
    """(model config, notes): the saved config's model section + `dtype` + `config_overrides`."""
    return common.model_config_from_dict(saved_config(path)["model"], dtype, config_overrides), []


def load(path: str, mesh, dtype=None, config_overrides=None, allow_missing: Sequence[str] = (),
         rules=None, allow_nonfinite: bool = False) -> common.Loaded:
    """The parameters on `mesh` (the run's sharding rules unless `rules`), with what an export reuses: the
    Orbax dir the run was initialised from (source configs, unused tensors, tokenizer files), the run's
    tokenizer and the workdir's latest periodic eval (model card). `allow_nonfinite` has nothing to allow (the
    trainer stops on a non-finite loss before it saves)."""
    step = os.path.abspath(step_dir(path))
    saved = saved_config(step)
    model_cfg = common.model_config_from_dict(saved["model"], dtype, config_overrides)
    if rules is None and saved.get("sharding_rules"):
        rules = [tuple(r) for r in saved["sharding_rules"]]
    model = common.restore_params(os.path.join(step, STATE_ITEM), model_cfg, mesh, rules,
                                  f"{os.path.join(step, CONFIG_ITEM)} (+ overrides)", subtree="params")
    init_from = str((saved.get("train") or {}).get("init_from") or saved.get("init_from") or "")
    kept = orbax_format.provenance(init_from) if init_from and orbax_format.detect(init_from) else {}
    trained_with = str((saved.get("data") or {}).get("tokenizer_path") or "")
    return common.Loaded(model, model_cfg, NAME, step, train_config=saved,
                         tokenizer_path=trained_with if hf_processor.find_tokenizer_file(trained_with) else None,
                         eval_summary=model_card.latest_eval_summary(os.path.dirname(os.path.dirname(step))),
                         **kept)

