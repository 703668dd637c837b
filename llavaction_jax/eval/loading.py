"""Load (model, tokenizer, config) for evaluation / inference from a checkpoint directory.

Every directory goes through `llavaction_jax.load_pretrained` (convert/api.py), the one checkpoint reader:
- a training run (its workdir, its `checkpoints` dir, one step dir `.../checkpoints/<N>`, or the workdir with
  `step=N`): the parameters of that step (the latest by default) and the training config the run saved, so the
  tokenizer (config.data.tokenizer_path), frame count and video layout are the run's;
- any other registered format (HF LlavaOnevision, original llava_qwen, an Orbax dir from `convert import`): the
  tokenizer from the directory's tokenizer.json, and for an HF export of ours the frame count from its video
  processor config.
`tokenizer` overrides the tokenizer directory in both cases.
"""
import os
from typing import Callable, Optional

import ml_collections

from llavaction_jax import sharding as shd
from llavaction_jax.cli import UserError
from llavaction_jax.convert import common, hf_processor
from llavaction_jax.convert.api import load_pretrained
from llavaction_jax.convert.formats import detect_format, train as train_format
from llavaction_jax.input.tokenizer import Tokenizer


def resolve_checkpoint(path: str, step: Optional[int] = None) -> str:
    """`path` itself, or with `step` the step dir of that committed step of the training run at `path`."""
    if not os.path.isdir(path):
        raise UserError(f"not a directory: {path}", "--checkpoint",
                        "a training workdir, one of its step dirs, or a converted checkpoint dir")
    if step is None:
        return path
    if not train_format.detect(path) or train_format.step_dir(path) == path:
        raise UserError(f"--step {step} needs a training run directory", path,
                        "the workdir (or its checkpoints dir) of llavaction_jax.train")
    return train_format.select_step(path, step)


def _run_path(value: str, run: str) -> str:
    """A path from a run's saved config: as saved (absolute since the trainer stores it so), else one relative
    to the run's working directory at the time, found next to the run dir."""
    if not value or os.path.isabs(value) or os.path.exists(value):
        return value
    for base in (os.path.dirname(run), run):
        if os.path.exists(os.path.join(base, value)):
            return os.path.join(base, value)
    return value


def _take_export_sampling(path: str, config) -> None:
    """An HF export of ours names the frame count it was trained with (video_preprocessor_config.json, see
    convert/hf_processor.py): it becomes config.data.num_frames, which --num_frames (check_config) still overrides."""
    try:
        sampling = hf_processor.read_sampling(path)
    except ValueError as e:
        raise UserError(str(e), "--checkpoint", "an export written by llavaction_jax.convert") from None
    if sampling:
        config.data.num_frames = int(sampling["num_frames"])


def load_for_eval(path: str, mesh=None, tokenizer: Optional[str] = None, with_provenance: bool = False,
                  check_config: Optional[Callable] = None, step: Optional[int] = None,
                  defaults: Optional[ml_collections.ConfigDict] = None):
    """(model, tokenizer, config, mesh[, provenance]) from a checkpoint directory (see module docstring).

    defaults: the whole config (the CLIs pass configs/base.py's) around the model section of a checkpoint that
    carries no training config (every format but a training run's); such a checkpoint needs it.

    check_config(config) -> config: the caller's validation (and overrides) of the checkpoint's config; for a
    training run it also runs on the saved config before the model is loaded, so a bad flag costs no load.

    provenance: {"checkpoint", "step", "tokenizer", "config", "params_dir"} for the report header and the outputs'
    fingerprint (step None for converted checkpoints)."""
    path = resolve_checkpoint(path, step)
    train_run = detect_format(path) == train_format.NAME
    if train_run:
        saved = train_format.train_config(train_format.saved_config(path))
        if check_config is not None:
            check_config(saved)
        mesh = mesh if mesh is not None else shd.make_mesh(saved.mesh)
    elif defaults is None:
        raise ValueError(f"{path}: a {detect_format(path)!r} checkpoint carries no training config; "
                         "load_for_eval needs defaults= (e.g. configs.base.get_base_config())")
    mesh = mesh if mesh is not None else common.default_mesh()
    model, config = load_pretrained(path, mesh=mesh, defaults=defaults)
    if not train_run:
        _take_export_sampling(path, config)
    if check_config is not None:
        config = check_config(config)
    if train_run:
        run = train_format.run_dir(path)
        tok_dir = tokenizer or _run_path(str(config.data.tokenizer_path), run)
        where = f"{run}/config.json data.tokenizer_path"
    else:
        tok_dir, where = tokenizer or path, path
    if not tok_dir:
        raise UserError("no tokenizer directory (config.data.tokenizer_path is empty)", where, "pass --tokenizer DIR")
    tok = Tokenizer.load(tok_dir, video_token_id=int(config.model.video_token_id)).check_fits(
        config.model.text.vocab_size, f"the model of {path}")
    if not with_provenance:
        return model, tok, config, mesh
    # params_dir: what the parameters were read from (the step dir of a training run): eval/fingerprint.py.
    params_dir = train_format.step_dir(path) if train_run else path
    provenance = {"checkpoint": os.path.abspath(path), "step": train_format.step_of(path) if train_run else None,
                  "tokenizer": tok.source, "config": config.to_json_best_effort(sort_keys=True),
                  "params_dir": os.path.abspath(params_dir)}
    return model, tok, config, mesh, provenance
