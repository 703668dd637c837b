"""Load (model, tokenizer, config) for evaluation / inference from a checkpoint directory.

Accepted directories:
- a training workdir (`<dir>/checkpoints/<step>/...` from llavaction_jax.train) or its `checkpoints` dir: the
  latest step's parameters, with the config saved next to them; the tokenizer from config.data.tokenizer_path;
- anything `llavaction_jax.load_pretrained` reads (HF LlavaOnevision, original llava_qwen, or an Orbax dir from
  `python -m llavaction_jax.convert import`); the tokenizer from the directory's tokenizer.json.
`tokenizer` overrides the tokenizer directory in both cases.
"""
import os
from typing import Callable, Optional

import ml_collections

from llavaction_jax import sharding as shd
from llavaction_jax.cli import UserError
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


def restore_params_only(ckpt_dir: str, step: int, abstract_params):
    """The parameters of checkpoint `step`, nothing else: the optimizer moments (~2x the parameters) are never read.

    A partial Orbax restore of the `state` item: only the `params` subtree is requested."""
    import orbax.checkpoint as ocp
    from llavaction_jax.train.checkpointing import check_compatible
    state_dir = os.path.join(os.path.abspath(ckpt_dir), str(step), "state")
    where = f"checkpoint {ckpt_dir}/{step}"
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(state_dir)
        tree = getattr(meta, "item_metadata", None)
        tree = getattr(tree, "tree", tree) if tree is not None else getattr(meta, "tree", meta)
        saved = tree.get("params") if hasattr(tree, "get") else None
        if saved is None:
            raise UserError("the checkpoint has no 'params' entry", where, "a llavaction_jax.train checkpoint")
        check_compatible(saved, abstract_params, where)
        target = {"params": abstract_params}
        restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    return restored["params"]


def load_train_workdir(ckpt_dir: str, mesh=None, step: Optional[int] = None,
                       check_config: Optional[Callable] = None):
    """(model, config, step, mesh) from a llavaction_jax.train checkpoint directory (parameters only).

    check_config(config) -> config runs on the saved config before anything is built (the CLI's validation)."""
    from llavaction_jax.train import checkpointing, state as state_lib
    ckpt = checkpointing.Checkpointer(ckpt_dir, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise UserError("no finished checkpoint step", ckpt_dir, "a directory written by llavaction_jax.train")
        config = _config_from_json(ckpt.restore_config(step))
    finally:
        ckpt.close()
    if check_config is not None:
        config = check_config(config)
    mesh = mesh if mesh is not None else shd.make_mesh(config.mesh)
    setup = state_lib.build_setup(config, mesh)
    params = restore_params_only(ckpt_dir, step, setup.abstract_state["params"])
    return setup.merge(params), config, step, mesh


def load_for_eval(path: str, mesh=None, tokenizer: Optional[str] = None, with_provenance: bool = False,
                  check_config: Optional[Callable] = None):
    """(model, tokenizer, config, mesh[, provenance]) from a checkpoint directory (see module docstring).

    check_config(config) -> config: the caller's validation (and overrides) of the checkpoint's config, before
    the model is built from a training workdir's (a converted checkpoint's config is its parsed config.json).

    provenance: {"checkpoint", "step", "tokenizer", "config", "params_dir"} for the report header and the outputs'
    fingerprint (step None for converted checkpoints)."""
    if not os.path.isdir(path):
        raise UserError(f"not a directory: {path}", "--checkpoint", "a training workdir or a converted checkpoint dir")
    ckpt_dir = _train_checkpoint_dir(path)
    step = None
    if ckpt_dir is not None:
        model, config, step, mesh = load_train_workdir(ckpt_dir, mesh, check_config=check_config)
        tok_dir = tokenizer or config.data.tokenizer_path
    else:
        import llavaction_jax
        mesh = mesh if mesh is not None else shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        model, config = llavaction_jax.load_pretrained(path, mesh=mesh)
        if check_config is not None:
            config = check_config(config)
        tok_dir = tokenizer or path
    if not tok_dir:
        raise UserError("no tokenizer directory (config.data.tokenizer_path is empty)", path, "pass --tokenizer DIR")
    tok = Tokenizer.load(tok_dir, video_token_id=int(config.model.video_token_id)).check_fits(
        config.model.text.vocab_size, f"the model of {path}")
    if not with_provenance:
        return model, tok, config, mesh
    # params_dir: what the parameters were read from (the step dir of a training workdir): eval/fingerprint.py.
    params_dir = os.path.join(ckpt_dir, str(step)) if ckpt_dir is not None else path
    provenance = {"checkpoint": os.path.abspath(path), "step": step, "tokenizer": tok.source,
                  "config": config.to_json_best_effort(sort_keys=True), "params_dir": os.path.abspath(params_dir)}
    return model, tok, config, mesh, provenance
