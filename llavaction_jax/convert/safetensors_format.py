"""The machinery the safetensors formats (formats/hf.py, formats/llava_qwen.py) share: detection from config.json,
config parsing, streaming tensors into a sharded model through a format's mapping table, and writing a
safetensors directory from one.

A safetensors format module gives the format-specific pieces: `is_format(config_json)`, `canonical_key(key)`,
`parse_config(config_json, shapes, model_cfg, config_file, file_of) -> notes` (errors name
`config_file`, config.json's path, or `file_of(tensor key)`), `rules(model_cfg)`, `expected_unused(model_cfg)` and
`NOT_IN_FORMAT`, and takes the protocol's `detect`, `read_config` and `load` from `reader_functions`.
Tensors are read one device shard at a time and placed straight into their NamedSharding; writing pulls one
layer of one parameter at a time off the devices.
"""
import json
import logging
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import nnx

from llavaction_jax.cli import UserError
from llavaction_jax.convert import common, hf_processor
from llavaction_jax.convert.mapping import iter_ckpt_tensors, match, read_param_slice
from llavaction_jax.convert.safetensors_io import CheckpointReader, has_safetensors, write_sharded
from llavaction_jax.model import build as model_build, config as model_config_lib, spec as model_spec
from llavaction_jax.convert.errors import ConvertError

log = logging.getLogger(__name__)

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"


def config_json(path: str) -> Optional[dict]:
    """config.json of a safetensors checkpoint dir, or None when `path` is not one."""
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG)) and has_safetensors(path)):
        return None
    return common.read_json(os.path.join(path, CONFIG))


def detect(path: str, fmt) -> bool:
    cj = config_json(path)
    return cj is not None and bool(fmt.is_format(cj))


class AliasedReader:
    """Presents a reader under canonical key names (HF accepts legacy + v5 in-memory names)."""

    def __init__(self, reader: CheckpointReader, canonical: Callable[[str], str]):
        self.reader, self.path = reader, reader.path
        self._orig = {}
        for k in reader.keys():
            c = canonical(k)
            if c in self._orig:
                raise ConvertError(f"{reader.path}: keys {self._orig[c]!r} and {k!r} both map to {c!r}")
            self._orig[c] = k

    def keys(self):
        return sorted(self._orig)

    def shape(self, key):
        return self.reader.shape(self._orig[key])

    def dtype(self, key):
        return self.reader.dtype(self._orig[key])

    def file_of(self, key):
        return self.reader.file_of(self._orig[key])

    def read(self, key, index=None):
        return self.reader.read(self._orig[key], index)

    def release(self):
        self.reader.release()


class TensorError(UserError, ValueError):
    """A checkpoint tensor the model cannot take as it is (dtype, NaN / inf): names the file and the tensor."""


def _is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or np.dtype(dtype).name == "bfloat16"


def checkpoint_dtype(reader: CheckpointReader) -> np.dtype:
    """Most common floating dtype among the tensors (by element count); a TensorError when it is one the model
    does not compute in (float64: --dtype casts it)."""
    counts: Dict[np.dtype, int] = {}
    for k in reader.keys():
        d = reader.dtype(k)
        if _is_float(d):
            counts[d] = counts.get(d, 0) + int(np.prod(reader.shape(k)))
    if not counts:
        raise TensorError("no floating-point tensors", reader.path, "a checkpoint of float32 / bfloat16 / float16 "
                          "weights")
    chosen = max(counts, key=counts.get)
    if chosen.name not in model_spec.DTYPES:
        first = next(k for k in reader.keys() if reader.dtype(k) == chosen)
        raise TensorError(f"tensor {first!r} (and the bulk of the weights) is {chosen.name}",
                          reader.file_of(first), f"one of {model_spec.DTYPES}, or --dtype float32 to cast it")
    return chosen


def check_tensor_dtypes(reader, plan) -> None:
    """Every tensor the model loads must be floating: an int tensor where a weight belongs is a wrong file (its
    values would be cast silently)."""
    for path, rule in plan.rules.items():
        keys = [rule.key.format(i=i) for i in range(plan.num_layers[path])] if rule.stacked else [rule.key]
        for key in keys:
            d = reader.dtype(key)
            if not _is_float(d):
                raise TensorError(f"tensor {key!r} is {np.dtype(d).name} (for parameter {path})",
                                  reader.file_of(key), "a floating-point tensor (float32 / bfloat16 / float16)")


def check_finite(reader, rule, index, value: np.ndarray, num_layers: int, allowed: Optional[list] = None) -> None:
    """NaN / inf in a weight would score every sample the same silent way; refuse, naming the tensor (a cast to a
    narrower --dtype that overflows is caught here too). `allowed` (--allow_nonfinite): a list the tensor's name
    is appended to instead, for one warning that names them all."""
    if _is_float(value.dtype) and not np.isfinite(value).all():
        keys = ([rule.key.format(i=i) for i, layer in zip(range(*index[0].indices(num_layers)), value)
                 if not np.isfinite(layer).all()] if rule.stacked else [rule.key])      # the layers that hold them
        if allowed is not None:
            allowed.extend(k for k in keys if k not in allowed)
            return
        name = keys[0] if len(keys) == 1 else f"{keys[0]}' (and {len(keys) - 1} more) '"
        raise TensorError(f"tensor '{name}' holds NaN or inf values (for parameter {rule.param})",
                          reader.file_of(keys[0]), "finite weights (a broken or overflowed checkpoint?), or "
                          "--allow_nonfinite to import it anyway")


def open_checkpoint(path: str, fmt, dtype=None, config_overrides=None):
    """(raw reader, aliased reader, model config, notes, config.json dict) of a `fmt` safetensors checkpoint."""
    raw = CheckpointReader(path)
    reader = AliasedReader(raw, fmt.canonical_key)
    cj = common.read_json(os.path.join(path, CONFIG))
    model_cfg = model_config_lib.model_config()
    shapes = {k: reader.shape(k) for k in reader.keys()}
    try:
        notes = fmt.parse_config(cj, shapes, model_cfg, config_file=os.path.join(path, CONFIG),
                                 file_of=reader.file_of)
    except (KeyError, TypeError) as e:
        raise ConvertError(f"{os.path.join(path, CONFIG)}: cannot parse as {fmt.NAME} config ({e!r})") from e
    # bf16 stays bf16: parameters keep the checkpoint dtype unless a dtype is asked for.
    model_cfg.param_dtype = np.dtype(dtype).name if dtype is not None else checkpoint_dtype(raw).name
    common.apply_overrides(model_cfg, config_overrides)
    return raw, reader, model_cfg, notes, cj


def read_config(path: str, fmt, config_overrides=None, dtype=None):
    """(model config, notes) from config.json and the tensor shapes (headers only, no tensor is read)."""
    raw, _, model_cfg, notes, _ = open_checkpoint(path, fmt, dtype, config_overrides)
    raw.close()
    return model_cfg, notes


def build_model(reader, fmt, model_cfg, mesh, rules=None, allow_missing: Sequence[str] = (), seed: int = 0,
                allow_nonfinite: bool = False):
    """Sharded model whose parameters are streamed from `reader`; returns (model, plan). A tensor holding NaN /
    inf is refused unless `allow_nonfinite` (then one warning names every such tensor)."""
    abstract = model_build.abstract_model(model_cfg, mesh, rules, seed)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"model has non-Param state the converter cannot fill: {list(common.flat_params(rest))}")
    flat = common.flat_params(params)
    shapes = {p: tuple(v.get_value().shape) for p, v in flat.items()}
    ckpt_shapes = {k: reader.shape(k) for k in reader.keys()}
    plan = match(fmt.rules(model_cfg), shapes, ckpt_shapes, fmt.expected_unused(model_cfg),
                 reader.path, allow_missing, fmt.NOT_IN_FORMAT)
    check_tensor_dtypes(reader, plan)
    missing = plan.initialised
    if missing:
        log.warning("%s: initialising parameters absent from the checkpoint (allow_missing): %s",
                    reader.path, missing)
    init_values = (model_build.init_param_subset(model_cfg, mesh, rules, missing,
                                                 {p: flat[p].get_value().sharding for p in missing}, seed)
                   if missing else {})
    values = {}
    nonfinite = [] if allow_nonfinite else None
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
                check_finite(reader, rule, index, cache[key], n, nonfinite)
            return cache[key]

        values[path] = jax.make_array_from_callback(sds.shape, sds.sharding, cb)
        cache.clear()
        reader.release()     # keep at most one parameter's pages of the checkpoint mapped
    for path, var in flat.items():
        var.set_value(values[path])
    if nonfinite:
        log.warning("%s: tensors holding NaN or inf values, imported as they are (--allow_nonfinite): %s",
                    reader.path, ", ".join(nonfinite))
    return nnx.merge(graphdef, params), plan


def load(path: str, fmt, mesh, dtype=None, config_overrides=None, allow_missing: Sequence[str] = (),
         rules=None, allow_nonfinite: bool = False) -> common.Loaded:
    path = os.path.abspath(path)
    raw, reader, model_cfg, notes, cj = open_checkpoint(path, fmt, dtype, config_overrides)
    with raw:
        model, plan = build_model(reader, fmt, model_cfg, mesh, rules, allow_missing,
                                  allow_nonfinite=allow_nonfinite)
    keys = list(plan.expected_unused)

    def unused():
        src = CheckpointReader(path)
        aliased = AliasedReader(src, fmt.canonical_key)
        with src:
            for k in keys:
                yield k, aliased.read(k)

    gen_path = os.path.join(path, GENERATION_CONFIG)
    return common.Loaded(model, model_cfg, fmt.NAME, path, notes=notes + plan.notes, unused_keys=keys,
                         unused=unused, source_config=cj,
                         source_generation=common.read_json(gen_path) if os.path.isfile(gen_path) else {},
                         files_dir=path)


def reader_functions(fmt):
    """The protocol's (detect, read_config, load) of the safetensors format module `fmt`."""
    def detect_fmt(path: str) -> bool:
        return detect(path, fmt)

    def read_config_fmt(path: str, config_overrides=None, dtype=None):
        """(model config, notes) from config.json + the tensor shapes."""
        return read_config(path, fmt, config_overrides, dtype)

    def load_fmt(path: str, mesh, dtype=None, config_overrides=None, allow_missing: Sequence[str] = (),
                 rules=None, allow_nonfinite: bool = False) -> common.Loaded:
        return load(path, fmt, mesh, dtype, config_overrides, allow_missing, rules, allow_nonfinite)
    return detect_fmt, read_config_fmt, load_fmt


# ----------------------------------------------------------------------------------------------- writing

def tensors_to_write(model, rules, name: str) -> Tuple[Iterable[Tuple[str, np.ndarray]], List[str], Dict[str, object]]:
    """(lazy (key, array) pairs in format `name`'s layout, our parameters no rule covers, flat params)."""
    flat = common.flat_params(nnx.state(model, nnx.Param))
    by_param = {r.param: r for r in rules}
    missing_rule = [r.param for r in rules if r.param not in flat]
    if missing_rule:
        raise ConvertError(f"model lacks parameters the {name} format needs: {missing_rule}")
    dropped = sorted(p for p in flat if p not in by_param)
    num_layers = {p: (flat[p].get_value().shape[0] if by_param[p].stacked else 0) for p in by_param}

    def get_layer(path, i):
        x = flat[path].get_value()
        return common.host_value(x if i is None else x[i])
    return iter_ckpt_tensors(rules, get_layer, num_layers), dropped, flat


def write_dir(dst: str, tensors, cfg_json: dict, max_shard_bytes: int,
              extras: Optional[Callable[[], None]] = None) -> Dict[str, str]:
    """Shards + index + config.json (+ `extras()`) into `dst`, files 0644; returns the weight map.

    Process 0 writes; the others take part in the per-tensor all-gathers of `tensors` but write nothing."""
    if jax.process_index() == 0:
        for stale in ("model.safetensors", "model.safetensors.index.json"):
            if os.path.exists(os.path.join(dst, stale)):
                raise FileExistsError(f"{dst} already holds a checkpoint ({stale}); export into an empty dir")
        weight_map = write_sharded(tensors, dst, max_shard_bytes)
        with open(os.path.join(dst, CONFIG), "w") as f:
            json.dump(cfg_json, f, indent=2, sort_keys=True)
        if extras is not None:
            extras()
        hf_processor.make_readable(dst)
    else:
        weight_map = {k: "" for k, _ in tensors}
    common.wait_for_process_0(f"export:{dst}")
    return weight_map
