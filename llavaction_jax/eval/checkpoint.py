"""Load (model, tokenizer, config) for evaluation / inference from a checkpoint directory.

Accepted directories:
- a training workdir (`<dir>/checkpoints/<step>/...` from llavaction_jax.train) or its `checkpoints` dir: the
  latest step's parameters, with the config saved next to them; the tokenizer from config.data.tokenizer_path;
- anything `llavaction_jax.load_pretrained` reads (HF LlavaOnevision, original llava_qwen, or an Orbax dir from
  `python -m llavaction_jax.convert import`); the tokenizer from the directory's tokenizer.json.
`tokenizer` overrides the tokenizer directory in both cases.
"""
import os
from typing import Optional

import ml_collections

from llavaction_jax import sharding as shd
from llavaction_jax.input.tokenizer import Tokenizer


def _train_checkpoint_dir(path: str) -> Optional[str]:
    for candidate in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(candidate) and any(n.isdigit() and os.path.isdir(os.path.join(candidate, n))
                                            for n in os.listdir(candidate)):
            return candidate
    return None


def _config_from_json(d: dict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(d)
    # JSON turned tuples into lists; the model config and sharding rules expect tuples.
    config.model.action_types = tuple(config.model.action_types)
    config.sharding_rules = tuple((r[0], tuple(r[1]) if isinstance(r[1], list) else r[1])
                                  for r in config.sharding_rules)
    return config


def load_train_workdir(ckpt_dir: str, mesh=None, step: Optional[int] = None):
    """(model, config, step, mesh) from a llavaction_jax.train checkpoint directory."""
    from llavaction_jax.train import checkpointing, state as state_lib
    ckpt = checkpointing.Checkpointer(ckpt_dir, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{ckpt_dir}: no finished checkpoint step")
        config = _config_from_json(ckpt.restore_config(step))
        mesh = mesh if mesh is not None else shd.make_mesh(config.mesh)
        setup = state_lib.build_setup(config, mesh)
        state, _ = ckpt.restore(step, setup.abstract_state)
    finally:
        ckpt.close()
    return setup.merge(state["params"]), config, step, mesh


def load_for_eval(path: str, mesh=None, tokenizer: Optional[str] = None):
    """(model, tokenizer, config, mesh) from a checkpoint directory (see module docstring)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--checkpoint {path}: not a directory")
    ckpt_dir = _train_checkpoint_dir(path)
    if ckpt_dir is not None:
        model, config, _, mesh = load_train_workdir(ckpt_dir, mesh)
        tok_dir = tokenizer or config.data.tokenizer_path
    else:
        import llavaction_jax
        mesh = mesh if mesh is not None else shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        model, config = llavaction_jax.load_pretrained(path, mesh=mesh)
        tok_dir = tokenizer or path
    if not tok_dir:
        raise ValueError(f"{path}: no tokenizer directory (config.data.tokenizer_path is empty); pass --tokenizer")
    tok = Tokenizer.load(tok_dir, video_token_id=int(config.model.video_token_id))
    return model, tok, config, mesh
