"""Load / import / export over the format registry (convert/formats): every call detects or names a format and
hands the work to that format's module; nothing here knows one format from another.

  load_pretrained(path)            any readable checkpoint -> (sharded model, config); the one reader of
                                   training checkpoints (a run dir or a step dir: the config the run saved)
  import_checkpoint(src, dst)      any readable checkpoint -> our Orbax params dir (formats/orbax.py)
  export_checkpoint(src, dst, f)   any readable checkpoint -> format f
  export_model(model, cfg, dst, f) an in-memory model -> format f
"""
import copy
import logging
import os
from typing import Optional, Sequence

import jax
import ml_collections

from llavaction_jax import fs
from llavaction_jax.convert import common
from llavaction_jax.convert.formats import detect_format, get as get_format, orbax as orbax_format, writer
from llavaction_jax.convert.formats import train as train_format
from llavaction_jax.convert.errors import ConvertError

__all__ = ["detect_format", "export_checkpoint", "export_model", "import_checkpoint", "load_pretrained"]

log = logging.getLogger(__name__)


def _load(path: str, fmt: str, mesh, **kwargs) -> common.Loaded:
    loaded = get_format(fmt).load(path, mesh or common.default_mesh(), **kwargs)
    for n in loaded.notes:
        log.info("%s: %s", path, n)
    return loaded


def load_pretrained(path: str, dtype=None, mesh=None, config_overrides=None, allow_missing: Sequence[str] = (),
                    rules=None, defaults: Optional[ml_collections.ConfigDict] = None):
    """Loads a checkpoint directory of any registered format (HF, llava_qwen, an Orbax dir from `convert
    import`, a training checkpoint, ...).

    Returns (model, config). A training checkpoint (its workdir, checkpoints dir or one step dir; the latest
    committed step unless a step dir is given): config is the training config the run saved (tokenizer, frame
    count, video layout, evals), paths absolute. Any other format carries no training config: a copy of
    `defaults` (a whole config, e.g. configs/base.py's `get_base_config()`, which the CLIs pass) whose `model`
    section comes from the checkpoint; without `defaults`, a config of the `model` section alone. Either way
    `config.model` is the checkpoint's model section + `config_overrides` (dotted keys).
    `dtype` sets the parameter dtype (default: the checkpoint's, so bf16 stays bf16). Params are placed in
    their shardings on `mesh` (default: all devices, data parallel). `allow_missing`: regexes of parameter
    paths that may be absent and are then initialised by the model (e.g. '^action/' for LLaVA-Video).
    """
    fmt = detect_format(path)
    loaded = _load(path, fmt, mesh, dtype=dtype, config_overrides=config_overrides,
                   allow_missing=allow_missing, rules=rules)
    if loaded.unused_keys:
        log.info("%s: expected unused checkpoint keys (not loaded): %s", path, loaded.unused_keys)
    if fmt == train_format.NAME:
        config = train_format.train_config(loaded.train_config, loaded.model_cfg)
    else:
        config = copy.deepcopy(defaults) if defaults is not None else ml_collections.ConfigDict()
        config.model = loaded.model_cfg
    if rules is not None:
        config.sharding_rules = tuple(rules)
    return loaded.model, config


def _write_staged(write, loaded, dst: str, *args) -> dict:
    """write(loaded, <staging dir>, *args), then the staging dir becomes `dst` (fs.staged_dir): a failed or
    interrupted write (a full disk included) leaves an earlier `dst` whole, and a URL is written through fs."""
    with fs.staged_dir(dst, writer=jax.process_index() == 0) as stage:
        info = write(loaded, stage, *args)
    common.wait_for_process_0(f"swap:{dst}")
    return info


def import_checkpoint(src: str, dst: str, fmt: Optional[str] = None, dtype=None, mesh=None,
                      config_overrides=None, allow_missing: Sequence[str] = (), overwrite: bool = False,
                      allow_nonfinite: bool = False) -> dict:
    """Checkpoint `src` (of format `fmt`, checked; default: detected) -> Orbax params dir; the import report.
    `dst` must be new or empty unless `overwrite` (then it is replaced once the new one is complete). A tensor
    holding NaN / inf is refused unless `allow_nonfinite` (then a warning names each such tensor)."""
    dst = fs.check_new_dir(dst, f"--dst {dst}", overwrite)
    detected = detect_format(src)
    fmt = fmt or detected
    if detected != fmt:
        raise ConvertError(f"{src}: looks like a {detected!r} checkpoint, not {fmt!r}")
    loaded = _load(src, fmt, mesh, dtype=dtype, config_overrides=config_overrides, allow_missing=allow_missing,
                   allow_nonfinite=allow_nonfinite)
    info = _write_staged(orbax_format.write, loaded, dst)
    if loaded.unused_keys:
        log.info("%s: %d expected unused keys kept in %s: %s", src, len(loaded.unused_keys),
                 orbax_format.UNUSED_TENSORS, loaded.unused_keys)
    return info


def _options(max_shard_bytes, allow_layout_change, tokenizer_path, eval_summary, extra_tensors, num_frames):
    return common.WriteOptions(max_shard_bytes=max_shard_bytes, allow_layout_change=allow_layout_change,
                               tokenizer_path=tokenizer_path, eval_summary=eval_summary, extra_tensors=extra_tensors,
                               num_frames=num_frames)


def export_model(model, model_cfg, dst: str, fmt: str, source_dir: Optional[str] = None,
                 extra_tensors: Optional[str] = None, max_shard_bytes: int = 2 << 30,
                 allow_layout_change: bool = False, tokenizer_path: Optional[str] = None,
                 eval_summary: Optional[str] = None, train_config: Optional[dict] = None,
                 overwrite: bool = False, num_frames: Optional[int] = None) -> dict:
    """Writes an in-memory `model` as format `fmt` into the new (or empty; or `overwrite`: replaced) dir `dst`;
    returns the format's report.

    hf: a complete transformers model directory (see formats/hf.py). `source_dir`: an Orbax dir from `convert
    import` (its source config, unused tensors and tokenizer files are reused). `extra_tensors`: a safetensors
    file or checkpoint dir whose expected-unused keys (the dropped SigLIP layer) go into a llava_qwen export.
    `eval_summary`: a summary.json whose accuracies go into the model card; `train_config`: the training config
    dict (data, steps); `num_frames`: hf: frames per clip of a model whose training config and source name none.
    """
    write = writer(fmt)
    dst = fs.check_new_dir(dst, f"--dst {dst}", overwrite)
    kept = orbax_format.provenance(source_dir) if source_dir else {}
    loaded = common.Loaded(model, model_cfg, fmt="", path=os.path.abspath(source_dir) if source_dir else "",
                           train_config=train_config, **kept)
    return _write_staged(write, loaded, dst, _options(max_shard_bytes, allow_layout_change, tokenizer_path,
                                                      eval_summary, extra_tensors, num_frames))


def export_checkpoint(src: str, dst: str, fmt: str, mesh=None, extra_tensors: Optional[str] = None,
                      max_shard_bytes: int = 2 << 30, allow_layout_change: bool = False,
                      config_overrides=None, tokenizer_path: Optional[str] = None,
                      eval_summary: Optional[str] = None, overwrite: bool = False,
                      num_frames: Optional[int] = None) -> dict:
    """Checkpoint `src` of any readable format (usually an Orbax dir from `import_checkpoint` or a training
    checkpoint) -> format `fmt`. What the source kept travels along: a training run's init_from dir (source
    config, tokenizer files, dropped SigLIP layer), its tokenizer and latest periodic eval (model card).
    `dst` must be new or empty unless `overwrite` (then it is replaced once the new one is complete).
    `num_frames`: hf: frames per clip of a model whose training config and source name none."""
    write = writer(fmt)        # an unwritable format or destination is refused before anything is loaded
    dst = fs.check_new_dir(dst, f"--dst {dst}", overwrite)
    loaded = _load(src, detect_format(src), mesh, config_overrides=config_overrides)
    return _write_staged(write, loaded, dst, _options(max_shard_bytes, allow_layout_change, tokenizer_path,
                                                      eval_summary, extra_tensors, num_frames))
