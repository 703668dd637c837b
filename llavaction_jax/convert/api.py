"""Import / export / load: checkpoint directories <-> sharded nnx models and Orbax parameter checkpoints.

Formats: "hf" (transformers LlavaOnevision), "llava_qwen" (original LLaVA-NeXT / LLaVAction) and "orbax"
(what `import_checkpoint` writes: params/ (Orbax save of the nnx Param State as a pure dict, the same tree
as the trainer's state["params"]), model_config.json,
convert_info.json, source_config.json, optional unused_tensors.safetensors and the tokenizer files).
Tensors are read one at a time (one device shard at a time) and placed straight into their NamedSharding;
export pulls one layer of one parameter at a time off the devices.
"""
import json
import logging
import os
import shutil
from typing import Dict, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from flax import nnx

from llavaction_jax import sharding as shd
from llavaction_jax.convert import hf, hf_processor, llava_qwen, model_card
from llavaction_jax.model import build as model_build, config as model_config_lib
from llavaction_jax.convert.mapping import (CheckpointMismatchError, check_tree, iter_ckpt_tensors, match,
                                            read_param_slice)
from llavaction_jax.convert.safetensors_io import CheckpointReader, has_safetensors, write_sharded

log = logging.getLogger(__name__)

FORMATS = {hf.NAME: hf, llava_qwen.NAME: llava_qwen}
PARAMS_DIR = "params"
MODEL_CONFIG = "model_config.json"
INFO = "convert_info.json"
SOURCE_CONFIG = "source_config.json"
SOURCE_GENERATION = "source_generation_config.json"
UNUSED_TENSORS = "unused_tensors.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja")


# ----------------------------------------------------------------------------------------------- detection

def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def detect_format(path: str) -> str:
    """'orbax', 'train', 'hf' or 'llava_qwen' for a checkpoint directory (clear error otherwise)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory")
    if os.path.isfile(os.path.join(path, MODEL_CONFIG)) and os.path.isdir(os.path.join(path, PARAMS_DIR)):
        return "orbax"
    if train_step_dir(path):
        return "train"
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path) or not has_safetensors(path):
        raise ValueError(f"{path}: not a recognised checkpoint: expected {MODEL_CONFIG} + {PARAMS_DIR}/ (Orbax "
                         "from `convert import`), a training checkpoint (<step>/{state,config}), or config.json + "
                         "model.safetensors[.index.json]")
    cj = _read_json(cfg_path)
    for name, mod in FORMATS.items():
        if mod.is_format(cj):
            return name
    raise ValueError(f"{cfg_path}: model_type={cj.get('model_type')!r} is neither llava_onevision (hf) nor a "
                     "llava_qwen config with mm_vision_tower")


def train_step_dir(path: str) -> Optional[str]:
    """The step dir of a training checkpoint (llavaction_jax.train: <workdir>/checkpoints/<step>/{state,config}).

    Accepts the step dir itself, the checkpoints dir or the workdir; picks the latest committed step
    (Orbax renames a step dir to its number only when the save committed).
    """
    def is_step(d):
        return os.path.isdir(os.path.join(d, "state")) and os.path.isdir(os.path.join(d, "config"))
    if is_step(path):
        return path
    for d in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(d):
            steps = [int(n) for n in os.listdir(d) if n.isdigit() and is_step(os.path.join(d, n))]
            if steps:
                return os.path.join(d, str(max(steps)))
    return None


# ----------------------------------------------------------------------------------------------- configs

def apply_overrides(cfg: ml_collections.ConfigDict, overrides) -> None:
    """Nested dicts or dotted keys ({'text.vocab_size': 8} / {'text': {'vocab_size': 8}}) into `cfg`."""
    for key, value in (overrides or {}).items():
        node, parts = cfg, key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise KeyError(f"config override {key!r}: no field {p!r}")
            node = node[p]
        last = parts[-1]
        if last not in node:
            raise KeyError(f"config override {key!r}: no field {last!r} (known: {sorted(node.keys())})")
        if isinstance(value, dict) and isinstance(node[last], ml_collections.ConfigDict):
            apply_overrides(node[last], value)
        elif isinstance(node[last], tuple) and isinstance(value, list):
            node[last] = tuple(value)
        else:
            node[last] = value


def model_config_to_json(model_cfg) -> str:
    return model_cfg.to_json(indent=2, sort_keys=True)


def model_config_from_json(text: str) -> ml_collections.ConfigDict:
    cfg = model_config_lib.model_config()
    data = json.loads(text)
    # JSON has no tuples: restore them where the defaults have tuples (e.g. action_types).
    apply_overrides(cfg, data)
    return cfg


def full_config(model_cfg) -> ml_collections.ConfigDict:
    """The base training/eval config (configs/base.py) around a checkpoint's model section."""
    from configs import base as base_config   # the top layer's defaults, for callers that want a whole config
    config = base_config.get_base_config()
    config.model = model_cfg
    return config


def _checkpoint_dtype(reader: CheckpointReader) -> np.dtype:
    """Most common floating dtype among the tensors (by element count)."""
    counts: Dict[np.dtype, int] = {}
    for k in reader.keys():
        d = reader.dtype(k)
        if np.issubdtype(d, np.floating) or d.name == "bfloat16":
            counts[d] = counts.get(d, 0) + int(np.prod(reader.shape(k)))
    if not counts:
        raise ValueError(f"{reader.path}: no floating-point tensors")
    return max(counts, key=counts.get)


class _AliasedReader:
    """Presents a reader under canonical key names (HF accepts legacy + v5 in-memory names)."""

    def __init__(self, reader: CheckpointReader, canonical):
        self.reader, self.path = reader, reader.path
        self._orig = {}
        for k in reader.keys():
            c = canonical(k)
            if c in self._orig:
                raise ValueError(f"{reader.path}: keys {self._orig[c]!r} and {k!r} both map to {c!r}")
            self._orig[c] = k

    def keys(self):
        return sorted(self._orig)

    def shape(self, key):
        return self.reader.shape(self._orig[key])

    def dtype(self, key):
        return self.reader.dtype(self._orig[key])

    def read(self, key, index=None):
        return self.reader.read(self._orig[key], index)

    def release(self):
        self.reader.release()


def read_source(path: str, fmt: str, dtype=None, config_overrides=None):
    """Opens a safetensors checkpoint: (aliased reader, model config, notes, config.json dict)."""
    mod = FORMATS[fmt]
    raw = CheckpointReader(path)
    reader = _AliasedReader(raw, mod.canonical_key)
    cj = _read_json(os.path.join(path, "config.json"))
    model_cfg = model_config_lib.model_config()
    shapes = {k: reader.shape(k) for k in reader.keys()}
    try:
        notes = mod.parse_config(cj, shapes, model_cfg)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{os.path.join(path, 'config.json')}: cannot parse as {fmt} config ({e!r})") from e
    # bf16 stays bf16: parameters keep the checkpoint dtype unless a dtype is asked for.
    model_cfg.param_dtype = np.dtype(dtype).name if dtype is not None else _checkpoint_dtype(raw).name
    apply_overrides(model_cfg, config_overrides)
    return raw, reader, model_cfg, notes, cj


# ----------------------------------------------------------------------------------------------- placement

def flat_params(state) -> Dict[str, object]:
    return {"/".join(str(p) for p in path): v for path, v in nnx.to_flat_state(state)}


def default_mesh():
    """All devices, data parallel (params replicated): fine for inference of small models and tests."""
    return shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


def build_model(reader, fmt: str, model_cfg, mesh, rules=None, allow_missing: Sequence[str] = (),
                seed: int = 0):
    """Sharded model whose parameters are streamed from `reader`; returns (model, plan)."""
    mod = FORMATS[fmt]
    abstract = model_build.abstract_model(model_cfg, mesh, rules, seed)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"model has non-Param state the converter cannot fill: {list(flat_params(rest))}")
    flat = flat_params(params)
    shapes = {p: tuple(v.get_value().shape) for p, v in flat.items()}
    ckpt_shapes = {k: reader.shape(k) for k in reader.keys()}
    plan = match(mod.rules(model_cfg), shapes, ckpt_shapes, mod.expected_unused(model_cfg),
                 reader.path, allow_missing, mod.NOT_IN_FORMAT)
    missing = plan.initialised
    if missing:
        log.warning("%s: initialising parameters absent from the checkpoint (allow_missing): %s",
                    reader.path, missing)
    init_values = (model_build.init_param_subset(model_cfg, mesh, rules, missing,
                                                 {p: flat[p].get_value().sharding for p in missing}, seed)
                   if missing else {})
    values = {}
    for path, var in flat.items():
        if path in init_values:
            values[path] = init_values[path]
            continue
        sds = var.get_value()
        rule, n = plan.rules[path], plan.num_layers[path]
        cache: Dict[tuple, np.ndarray] = {}

        def cb(index, rule=rule, n=n, dtype=sds.dtype, cache=cache):
            # Replicated shards ask for the same slice on every device: read it once.
            key = tuple((s.start, s.stop, s.step) for s in index)
            if key not in cache:
                cache[key] = read_param_slice(reader, rule, index, dtype, n)
            return cache[key]

        values[path] = jax.make_array_from_callback(sds.shape, sds.sharding, cb)
        cache.clear()
        reader.release()     # keep at most one parameter's pages of the checkpoint mapped
    for path, var in flat.items():
        var.set_value(values[path])
    return nnx.merge(graphdef, params), plan


# ----------------------------------------------------------------------------------------------- orbax

def _orbax():
    import orbax.checkpoint as ocp
    return ocp


def _wait_for_process_0(tag: str) -> None:
    """Multi-process: nobody returns before process 0 has written its files (a caller on another host may open
    the directory next, e.g. import then export)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"llavaction_jax.convert.{tag}")


def save_orbax(dst: str, model, model_cfg, info: dict, source_dir: Optional[str] = None,
               unused: Sequence[Tuple[str, np.ndarray]] = ()) -> None:
    """Writes the Orbax parameter checkpoint directory (see module docstring)."""
    ocp = _orbax()
    dst = os.path.abspath(dst)
    if os.path.exists(os.path.join(dst, PARAMS_DIR)):
        raise FileExistsError(f"{dst}/{PARAMS_DIR} already exists; choose an empty destination")
    os.makedirs(dst, exist_ok=True)
    # A pure dict of the nnx Param State: the same tree the trainer keeps in state["params"], so either side
    # can restore the other's checkpoints.
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # Synchronous save with at most 1 GB in flight: host staging copies then stay small next to the model
    # (measured on a 1.9 GiB checkpoint: +1.4 GiB peak with the defaults, +0.8 GiB with this).
    with ocp.Checkpointer(ocp.StandardCheckpointHandler(save_concurrent_gb=1)) as ckptr:
        ckptr.save(os.path.join(dst, PARAMS_DIR), args=ocp.args.StandardSave(params))
    if jax.process_index() == 0:
        with open(os.path.join(dst, MODEL_CONFIG), "w") as f:
            f.write(model_config_to_json(model_cfg))
        with open(os.path.join(dst, INFO), "w") as f:
            json.dump(info, f, indent=2)
        if unused:
            write_sharded(unused, os.path.join(dst, "_unused_tmp"))
            os.replace(os.path.join(dst, "_unused_tmp", "model.safetensors"), os.path.join(dst, UNUSED_TENSORS))
            shutil.rmtree(os.path.join(dst, "_unused_tmp"))
        if source_dir:
            for name, out in (("config.json", SOURCE_CONFIG), ("generation_config.json", SOURCE_GENERATION)):
                if os.path.isfile(os.path.join(source_dir, name)):
                    shutil.copyfile(os.path.join(source_dir, name), os.path.join(dst, out))
            copy_tokenizer_files(source_dir, dst)
    _wait_for_process_0(f"save_orbax:{dst}")


def copy_tokenizer_files(src: str, dst: str):
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
            copied.append(name)
    return copied


def load_orbax(path: str, dtype=None, mesh=None, config_overrides=None, rules=None):
    """(model, model_cfg) from an Orbax directory written by `save_orbax`, placed on `mesh`."""
    path = os.path.abspath(path)
    with open(os.path.join(path, MODEL_CONFIG)) as f:
        model_cfg = model_config_from_json(f.read())
    if dtype is not None:
        model_cfg.param_dtype = np.dtype(dtype).name
    apply_overrides(model_cfg, config_overrides)
    model = _restore_params(os.path.join(path, PARAMS_DIR), model_cfg, mesh or default_mesh(), rules,
                            f"{MODEL_CONFIG} (+ overrides)")
    return model, model_cfg


def _restore_params(params_dir: str, model_cfg, mesh, rules, config_source: str, subtree: Optional[str] = None):
    """Restores the pure-dict Param tree at `params_dir` (or its `subtree` entry) into a sharded model."""
    ocp = _orbax()
    abstract = model_build.abstract_model(model_cfg, mesh, rules)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    target = nnx.to_pure_dict(params)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        saved = ckptr.metadata(params_dir)
        saved = getattr(saved, "item_metadata", saved)
        saved = getattr(saved, "tree", saved)
        if subtree is not None:
            if subtree not in saved:
                raise CheckpointMismatchError(f"{params_dir}: no '{subtree}' entry (has {sorted(saved)})")
            saved = saved[subtree]
        _check_tree(saved, target, params_dir, config_source)
        item = target if subtree is None else {subtree: target}
        restored = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=subtree is not None))
    if subtree is not None:
        restored = restored[subtree]
    nnx.replace_by_pure_dict(params, restored)
    return nnx.merge(graphdef, params)


def _check_tree(saved, target, where: str, config_source: str):
    check_tree(saved, target, where, source=config_source)


def load_train_checkpoint(path: str, dtype=None, mesh=None, config_overrides=None, rules=None):
    """(model, model_cfg) from the params of a training checkpoint (optimizer state is not read)."""
    step_dir = train_step_dir(path)
    cfg_file = os.path.join(step_dir, "config", "metadata")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{step_dir}: no config item ({cfg_file})")
    saved = _read_json(cfg_file)
    if "model" not in saved:
        raise ValueError(f"{cfg_file}: no 'model' section")
    model_cfg = model_config_lib.model_config()
    apply_overrides(model_cfg, saved["model"])
    if dtype is not None:
        model_cfg.param_dtype = np.dtype(dtype).name
    apply_overrides(model_cfg, config_overrides)
    if rules is None and saved.get("sharding_rules"):
        rules = [tuple(r) for r in saved["sharding_rules"]]
    model = _restore_params(os.path.abspath(os.path.join(step_dir, "state")), model_cfg,
                            mesh or default_mesh(), rules, f"{cfg_file} (+ overrides)", subtree="params")
    return model, model_cfg


# ----------------------------------------------------------------------------------------------- public API

def load_pretrained(path: str, dtype=None, mesh=None, config_overrides=None, allow_missing: Sequence[str] = (),
                    rules=None):
    """Loads an HF dir, a llava_qwen dir, an Orbax dir from `convert import` or a training checkpoint.

    Returns (model, config): config is the full base config (configs/base.py) whose `model` section comes
    from the checkpoint (its own config.json wins over defaults) + `config_overrides` (dotted keys).
    `dtype` sets the parameter dtype (default: the checkpoint's, so bf16 stays bf16). Params are placed in
    their shardings on `mesh` (default: all devices, data parallel). `allow_missing`: regexes of parameter
    paths that may be absent and are then initialised by the model (e.g. '^action/' for LLaVA-Video).
    """
    mesh = mesh or default_mesh()
    fmt = detect_format(path)
    if fmt == "orbax":
        model, model_cfg = load_orbax(path, dtype, mesh, config_overrides, rules)
    elif fmt == "train":
        model, model_cfg = load_train_checkpoint(path, dtype, mesh, config_overrides, rules)
    else:
        raw, reader, model_cfg, notes, _ = read_source(path, fmt, dtype, config_overrides)
        with raw:
            model, plan = build_model(reader, fmt, model_cfg, mesh, rules, allow_missing)
        for n in notes + plan.notes:
            log.info("%s: %s", path, n)
        if plan.expected_unused:
            log.info("%s: expected unused checkpoint keys (not loaded): %s", path, plan.expected_unused)
    config = full_config(model_cfg)
    if rules is not None:
        config.sharding_rules = tuple(rules)
    return model, config


def import_checkpoint(src: str, dst: str, fmt: Optional[str] = None, dtype=None, mesh=None,
                      config_overrides=None, allow_missing: Sequence[str] = ()) -> dict:
    """Safetensors checkpoint (hf | llava_qwen) -> Orbax directory; returns the conversion report."""
    detected = detect_format(src)
    fmt = fmt or detected
    if detected != fmt:
        raise ValueError(f"{src}: looks like a {detected!r} checkpoint, not {fmt!r}")
    mesh = mesh or default_mesh()
    raw, reader, model_cfg, notes, _ = read_source(src, fmt, dtype, config_overrides)
    with raw:
        model, plan = build_model(reader, fmt, model_cfg, mesh, allow_missing=allow_missing)
        # Keep the known-unused tensors (e.g. the dropped SigLIP layer) so a llava_qwen export is lossless.
        unused = [(k, reader.read(k)) for k in plan.expected_unused]
        reader.release()
        info = dict(source=os.path.abspath(src), format=fmt, notes=notes + plan.notes,
                    expected_unused_keys=plan.expected_unused, param_dtype=model_cfg.param_dtype)
        save_orbax(dst, model, model_cfg, info, source_dir=src, unused=unused)
    for n in info["notes"]:
        log.info("%s: %s", src, n)
    if plan.expected_unused:
        log.info("%s: %d expected unused keys kept in %s: %s", src, len(plan.expected_unused), UNUSED_TENSORS,
                 plan.expected_unused)
    return info


def _host_value(x) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def export_model(model, model_cfg, dst: str, fmt: str, source_dir: Optional[str] = None,
                 extra_tensors: Optional[str] = None, max_shard_bytes: int = 2 << 30,
                 allow_layout_change: bool = False, tokenizer_path: Optional[str] = None,
                 eval_summary: Optional[str] = None, train_config: Optional[dict] = None) -> dict:
    """Writes `model` as a `fmt` safetensors checkpoint + config.json; files are 0644.

    hf: a complete transformers model directory (generation_config.json, README.md model card and, with a
    tokenizer.json from `tokenizer_path` or `source_dir`, the tokenizer, chat template and processor configs:
    see convert/hf_processor.py). `source_dir`: an Orbax dir from `convert import` (its source_config.json,
    unused tensors and tokenizer files are reused). `extra_tensors`: a safetensors file or checkpoint dir whose
    expected-unused keys (the dropped SigLIP layer) are copied into a llava_qwen export. `eval_summary`: a
    summary.json whose accuracies go into the model card; `train_config`: the training config dict (data, steps).
    """
    mod = FORMATS[fmt]
    flat = flat_params(nnx.state(model, nnx.Param))
    rules = mod.rules(model_cfg)
    by_param = {r.param: r for r in rules}
    dropped = sorted(p for p in flat if p not in by_param)
    missing_rule = [r.param for r in rules if r.param not in flat]
    if missing_rule:
        raise ValueError(f"model lacks parameters the {fmt} format needs: {missing_rule}")
    if fmt == hf.NAME and dropped:
        log.warning("not representable in the HF LlavaOnevision format, dropped: %s", dropped)
    elif dropped:
        raise ValueError(f"parameters with no {fmt} mapping rule: {dropped}")
    num_layers = {p: (flat[p].get_value().shape[0] if by_param[p].stacked else 0) for p in by_param}

    def get_layer(path, i):
        x = flat[path].get_value()
        return _host_value(x if i is None else x[i])

    source_config, source_generation, unused_path = {}, {}, None
    if source_dir:
        if os.path.isfile(os.path.join(source_dir, SOURCE_CONFIG)):
            source_config = _read_json(os.path.join(source_dir, SOURCE_CONFIG))
        if os.path.isfile(os.path.join(source_dir, SOURCE_GENERATION)):
            source_generation = _read_json(os.path.join(source_dir, SOURCE_GENERATION))
        if os.path.isfile(os.path.join(source_dir, UNUSED_TENSORS)):
            unused_path = os.path.join(source_dir, UNUSED_TENSORS)
    if extra_tensors:
        unused_path = extra_tensors
    dtype_name = np.dtype(model_cfg.param_dtype).name
    if fmt == hf.NAME:
        if allow_layout_change:
            model_cfg = ml_collections.ConfigDict(model_cfg.to_dict())
            model_cfg.pool_mode, model_cfg.newline_position = "bilinear", "one_token"
        cfg_json = hf.export_config(model_cfg, source_config, dtype_name)
        if tokenizer_path and hf_processor.find_tokenizer_file(tokenizer_path) is None:
            raise FileNotFoundError(f"tokenizer {tokenizer_path!r}: no tokenizer.json there (expected a dir "
                                    "holding tokenizer.json, or the file itself)")
        tokenizer_file = hf_processor.find_tokenizer_file(tokenizer_path, source_dir)
        try:
            cfg_json, tok_plan = hf.prepare_export(model_cfg, cfg_json, tokenizer_file)
        except hf_processor.UnreadableTokenizer as e:
            if tokenizer_path:
                raise
            # A tokenizer found next to the source that we cannot use: its files are copied as they are.
            log.warning("%s; exporting without tokenizer / processor files", e)
            tok_plan = None
        if tok_plan is None:
            log.warning("no tokenizer.json given (tokenizer_path / source dir): %s gets weights and config only; "
                        "image/video token ids are unchecked and AutoProcessor will not load it", dst)
    else:
        cfg_json = llava_qwen.export_config(model_cfg, source_config, dtype_name)

    tensors = iter_ckpt_tensors(rules, get_layer, num_layers)
    extra_keys, notes = [], []
    if fmt == hf.NAME:
        tensors = hf.export_tensors(tensors, tok_plan)
        notes += tok_plan.notes if tok_plan is not None else []
    if fmt == llava_qwen.NAME:
        tensors, extra_keys = _with_unused(tensors, unused_path, model_cfg)
        if not extra_keys:
            notes.append(f"no dropped SigLIP layer provided (source {UNUSED_TENSORS} / --extra_tensors): wrote "
                         f"only the {model_cfg.vision.num_layers} vision layers the model uses")
    if jax.process_index() == 0:
        for stale in ("model.safetensors", "model.safetensors.index.json"):
            if os.path.exists(os.path.join(dst, stale)):
                raise FileExistsError(f"{dst} already holds a checkpoint ({stale}); export into an empty dir")
        weight_map = write_sharded(tensors, dst, max_shard_bytes)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(cfg_json, f, indent=2, sort_keys=True)
        if source_dir and not (fmt == hf.NAME and tok_plan is not None):
            copy_tokenizer_files(source_dir, dst)
        if fmt == hf.NAME:
            data = (train_config or {}).get("data") or {}
            hf.write_extras(dst, model_cfg, cfg_json, tok_plan, source_generation,
                            system_prompt=str(data.get("system_prompt") or "You are a helpful assistant."),
                            num_frames=data.get("num_frames"), train_config=train_config,
                            eval_summary_path=eval_summary, dropped_params=dropped,
                            num_params=sum(int(np.prod(v.get_value().shape)) for p, v in flat.items()
                                           if p not in dropped))
        hf_processor.make_readable(dst)
    else:
        # Other processes take part in the per-tensor all-gathers but write nothing.
        weight_map = {k: "" for k, _ in tensors}
    _wait_for_process_0(f"export:{dst}")
    for n in notes:
        log.info("%s", n)
    out = dict(format=fmt, keys=sorted(weight_map), dropped_params=dropped if fmt == hf.NAME else [],
               extra_keys=extra_keys, notes=notes)
    if fmt == hf.NAME:
        out.update(image_token_index=cfg_json["image_token_index"], video_token_index=cfg_json["video_token_index"],
                   tokenizer=tok_plan.source if tok_plan is not None else None)
    return out


def _with_unused(tensors, unused_path, model_cfg):
    """Appends the expected-unused tensors (dropped SigLIP layer) from `unused_path` to a llava_qwen export."""
    if not unused_path:
        return tensors, []
    src = CheckpointReader(unused_path)
    pred = llava_qwen.expected_unused(model_cfg)
    keys = [k for k in src.keys() if pred(k)]

    def gen():
        yield from tensors
        with src:
            for k in keys:
                yield k, src.read(k)
    return gen(), keys


def export_checkpoint(src: str, dst: str, fmt: str, mesh=None, extra_tensors: Optional[str] = None,
                      max_shard_bytes: int = 2 << 30, allow_layout_change: bool = False,
                      config_overrides=None, tokenizer_path: Optional[str] = None,
                      eval_summary: Optional[str] = None) -> dict:
    """Orbax dir (from `import_checkpoint`) or training checkpoint -> `fmt` safetensors checkpoint directory.

    A training checkpoint's workdir may hold the Orbax dir it was initialised from as `init_from` in its
    config; its source config / tokenizer files / dropped SigLIP layer are then reused too.
    """
    kind = detect_format(src)
    mesh = mesh or default_mesh()
    train_config = None
    if kind == "orbax":
        model, model_cfg = load_orbax(src, mesh=mesh, config_overrides=config_overrides)
        source_dir = src
    elif kind == "train":
        model, model_cfg = load_train_checkpoint(src, mesh=mesh, config_overrides=config_overrides)
        train_config = _read_json(os.path.join(train_step_dir(src), "config", "metadata"))
        saved = train_config
        init_from = str((saved.get("train") or {}).get("init_from") or saved.get("init_from") or "")
        source_dir = init_from if init_from and os.path.isfile(os.path.join(init_from, MODEL_CONFIG)) else None
        # The tokenizer the run trained with; the workdir's latest periodic eval for the model card.
        trained_with = str((saved.get("data") or {}).get("tokenizer_path") or "")
        if not tokenizer_path and hf_processor.find_tokenizer_file(trained_with):
            tokenizer_path = trained_with
        workdir = os.path.dirname(os.path.dirname(train_step_dir(src)))
        eval_summary = eval_summary or model_card.latest_eval_summary(workdir)
    else:
        raise ValueError(f"{src}: export reads an Orbax directory written by `convert import` "
                         f"({MODEL_CONFIG} + {PARAMS_DIR}/) or a training checkpoint, not a {kind!r} checkpoint")
    return export_model(model, model_cfg, dst, fmt, source_dir=source_dir, extra_tensors=extra_tensors,
                        max_shard_bytes=max_shard_bytes, allow_layout_change=allow_layout_change,
                        tokenizer_path=tokenizer_path, eval_summary=eval_summary, train_config=train_config)
