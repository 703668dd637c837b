"""What every checkpoint format reads into and writes from, and the helpers more than one format uses.

`Loaded` is the one thing a format's `load` returns and its `write` takes: the sharded model, its model
config and where it came from (the upstream config.json, tokenizer files, the known-unused tensors), so that
any readable format can be written as any writable one.
"""
import dataclasses
import json
import os
import shutil
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from llavaction_jax import sharding as shd
from llavaction_jax.cli import UserError
from llavaction_jax.convert.mapping import CheckpointMismatchError, check_tree
from llavaction_jax.model import build as model_build, config as model_config_lib
from llavaction_jax.convert.errors import BadOverrideError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja")


def no_unused() -> Iterator[Tuple[str, np.ndarray]]:
    return iter(())


@dataclasses.dataclass
class Loaded:
    """A checkpoint read by a format: the model on its mesh plus what an export of it reuses."""
    model: nnx.Module
    model_cfg: ml_collections.ConfigDict
    fmt: str                                   # the format it was read as
    path: str                                  # absolute path it was read from
    notes: List[str] = dataclasses.field(default_factory=list)       # quirks applied, keys skipped
    unused_keys: List[str] = dataclasses.field(default_factory=list)  # known checkpoint keys not loaded
    # Yields (key, array) of the known-unused tensors (e.g. the SigLIP layer LLaVA-NeXT drops), for a lossless
    # round trip; read lazily because loading for inference never needs them.
    unused: Callable[[], Iterator[Tuple[str, np.ndarray]]] = no_unused
    source_config: dict = dataclasses.field(default_factory=dict)      # the upstream checkpoint's config.json
    source_generation: dict = dataclasses.field(default_factory=dict)  # ... and its generation_config.json
    files_dir: Optional[str] = None            # dir whose tokenizer files travel along into a written checkpoint
    tokenizer_path: Optional[str] = None       # tokenizer the model was trained with (a training run's)
    train_config: Optional[dict] = None        # the training config (model card: data, steps)
    eval_summary: Optional[str] = None         # an eval summary.json for the model card


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    """Options of `write`; each format uses the ones that apply to it."""
    max_shard_bytes: int = 2 << 30
    allow_layout_change: bool = False          # hf: write a grid-newline model anyway
    tokenizer_path: Optional[str] = None       # hf: dir with tokenizer.json (or the file)
    eval_summary: Optional[str] = None         # hf: summary.json for the model card
    extra_tensors: Optional[str] = None        # llava_qwen: safetensors file/dir with the dropped SigLIP layer
    num_frames: Optional[int] = None           # hf: frames per clip when neither training config nor source names it


# ----------------------------------------------------------------------------------------------- configs

class BadConfigFileError(UserError, ValueError):
    """A checkpoint's config file that is not valid JSON (names the file, line and column)."""


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BadConfigFileError(f"invalid JSON ({e})", path, "the JSON file the converter / trainer wrote "
                                 "(re-export the checkpoint)") from None


def apply_overrides(cfg: ml_collections.ConfigDict, overrides) -> None:
    """Nested dicts or dotted keys ({'text.vocab_size': 8} / {'text': {'vocab_size': 8}}) into `cfg`."""
    for key, value in (overrides or {}).items():
        node, parts = cfg, key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise BadOverrideError(f"config override {key!r}: no field {p!r}")
            node = node[p]
        last = parts[-1]
        if last not in node:
            raise BadOverrideError(f"config override {key!r}: no field {last!r} (known: {sorted(node.keys())})")
        if isinstance(value, dict) and isinstance(node[last], ml_collections.ConfigDict):
            apply_overrides(node[last], value)
        elif isinstance(node[last], tuple) and isinstance(value, list):
            node[last] = tuple(value)
        else:
            node[last] = value


def model_config_from_dict(data: dict, dtype=None, overrides=None) -> ml_collections.ConfigDict:
    """The model-section defaults with a saved model section, `dtype` (parameter dtype) and `overrides` on top."""
    cfg = model_config_lib.model_config()
    # JSON has no tuples: apply_overrides restores them where the defaults have tuples (e.g. action_types).
    apply_overrides(cfg, data)
    if dtype is not None:
        cfg.param_dtype = np.dtype(dtype).name
    apply_overrides(cfg, overrides)
    return cfg


def model_config_to_json(model_cfg) -> str:
    return model_cfg.to_json(indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------- placement

def flat_params(state) -> Dict[str, object]:
    return {"/".join(str(p) for p in path): v for path, v in nnx.to_flat_state(state)}


def default_mesh():
    """All devices, data parallel (params replicated): fine for inference of small models and tests."""
    return shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


def host_value(x) -> np.ndarray:
    """A (possibly multi-host) array on this host, whole."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def wait_for_process_0(tag: str) -> None:
    """Multi-process: nobody returns before process 0 has written its files (a caller on another host may open
    the directory next, e.g. import then export)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"llavaction_jax.convert.{tag}")


def copy_tokenizer_files(src: str, dst: str) -> List[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def restore_params(params_dir: str, model_cfg, mesh, rules, config_source: str, subtree: Optional[str] = None):
    """Restores the pure-dict Param tree Orbax saved at `params_dir` (or its `subtree` entry) into a sharded model,
    through Orbax's public API (metadata to check the tree, then a (partial) restore into the shardings)."""
    abstract = model_build.abstract_model(model_cfg, mesh, rules)
    graphdef, params, _ = nnx.split(abstract, nnx.Param, ...)
    target = nnx.to_pure_dict(params)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        saved = ckptr.metadata(params_dir)
        saved = getattr(saved, "item_metadata", saved)
        saved = getattr(saved, "tree", saved)
        if subtree is not None:
            if subtree not in saved:
                raise CheckpointMismatchError(f"{params_dir}: no '{subtree}' entry (has {sorted(saved)})")
            saved = saved[subtree]
        check_tree(saved, target, params_dir, source=config_source)
        item = target if subtree is None else {subtree: target}
        restored = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=subtree is not None))
    if subtree is not None:
        restored = restored[subtree]
    nnx.replace_by_pure_dict(params, restored)
    return nnx.merge(graphdef, params)
