"""Declarative checkpoint <-> parameter-tree mapping (one `Rule` per parameter) and its small hooks.

A format module (llava_qwen.py, hf.py) lists `Rule`s: nnx parameter path ('/'-joined, e.g.
'llm/layers/self_attn/q_proj/kernel'), checkpoint key (with '{i}' for the layer index of stacked/scanned layers) and a
layout hook. The hooks are pure index/axis permutations, so a device shard of a parameter can be read
straight from the matching slice of the checkpoint tensor (no full tensor in host memory).
"""
import dataclasses
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import numpy as np

from llavaction_jax.cli import UserError

# Hook name -> permutation from checkpoint axes to parameter axes (per layer, without the layer axis).
#   copy:   same layout (norm scales, biases, embeddings, image_newline, action token)
#   linear: PyTorch Linear weight (out, in) -> kernel (in, out)
#   conv:   PyTorch Conv2d weight (O, I, kh, kw) -> kernel (kh, kw, I, O)
_PERMS = {"copy": None, "linear": (1, 0), "conv": (2, 3, 1, 0)}


@dataclasses.dataclass(frozen=True)
class Rule:
    param: str                 # nnx path, e.g. "llm/layers/self_attn/q_proj/kernel"
    key: str                   # checkpoint key; "{i}" = layer index when `stacked`
    hook: str = "copy"         # copy | linear | conv
    stacked: bool = False      # parameter has a leading layer axis built from per-layer tensors

    def keys(self, num_layers: int) -> List[str]:
        return [self.key.format(i=i) for i in range(num_layers)] if self.stacked else [self.key]


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint does not match the model (another size or config): every problem listed at once. The one
    class for conversion, init_from and training restores; a user error (one line in every CLI)."""


def raise_mismatch(header: str, sections) -> None:
    """CheckpointMismatchError of `header` + one block per non-empty (title, items, one_per_line) section."""
    parts = [header]
    for title, items, one_per_line in sections:
        if items:
            sep = "\n    " if one_per_line else " "
            parts.append(f"  {title} ({len(items)}):{sep}" + (sep if one_per_line else ", ").join(items))
    if len(parts) > 1:
        raise CheckpointMismatchError("\n".join(parts))


def _leaf_path(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_tree(saved, target, where: str, what: str = "parameter", source: Optional[str] = None) -> None:
    """Raise CheckpointMismatchError listing every missing / unexpected / mis-shaped leaf of `saved` against
    `target` (pytrees of arrays or ShapeDtypeStructs; leaves compared by '/'-joined path and shape)."""
    def shapes(tree):
        leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
        return {_leaf_path(p): tuple(getattr(x, "shape", ())) for p, x in leaves}

    have, want = shapes(saved), shapes(target)
    problems = [f"{what} '{p}' has shape {have[p]} in the checkpoint but {want[p]} in this model"
                for p in sorted(set(have) & set(want)) if have[p] != want[p]]
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    against = f"the model built from {source}" if source else "this model (another model size or config?)"
    raise_mismatch(f"{where}: {what}s do not match {against}:",
                   [("shape mismatches", problems, True), ("missing from the checkpoint", missing, False),
                    ("unexpected, this model lacks them", unexpected, False)])


def _perm(hook: str) -> Optional[Tuple[int, ...]]:
    if hook not in _PERMS:
        raise ValueError(f"unknown mapping hook {hook!r}")
    return _PERMS[hook]


def ckpt_shape(hook: str, param_shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape the checkpoint tensor must have for a (per-layer) parameter shape."""
    p = _perm(hook)
    if p is None:
        return tuple(param_shape)
    out = [0] * len(p)
    for param_axis, ckpt_axis in enumerate(p):
        out[ckpt_axis] = param_shape[param_axis]
    return tuple(out)


def to_param(hook: str, arr: np.ndarray) -> np.ndarray:
    p = _perm(hook)
    return arr if p is None else np.transpose(arr, p)


def to_ckpt(hook: str, arr: np.ndarray) -> np.ndarray:
    p = _perm(hook)
    return arr if p is None else np.transpose(arr, np.argsort(p))


def ckpt_index(hook: str, param_index: Sequence[slice]) -> Tuple[slice, ...]:
    """Slice of the checkpoint tensor that holds `param_index` of the (per-layer) parameter."""
    p = _perm(hook)
    if p is None:
        return tuple(param_index)
    out = [slice(None)] * len(p)
    for param_axis, ckpt_axis in enumerate(p):
        out[ckpt_axis] = param_index[param_axis]
    return tuple(out)


@dataclasses.dataclass
class Plan:
    """Result of matching rules against a checkpoint's key/shape table."""
    rules: Dict[str, Rule]                 # param path -> rule
    num_layers: Dict[str, int]             # param path -> number of stacked layers (0 = not stacked)
    expected_unused: List[str]             # checkpoint keys that are known and deliberately not loaded
    notes: List[str]                       # human-readable remarks (quirks applied, dropped keys)
    initialised: List[str]                 # params absent from the checkpoint, initialised (allow_missing)


def match(rules: Sequence[Rule], param_shapes: Dict[str, Tuple[int, ...]],
          ckpt_shapes: Dict[str, Tuple[int, ...]], expected_unused: Callable[[str], bool],
          source: str, allow_missing: Sequence[str] = (), not_in_format: Dict[str, str] = None) -> Plan:
    """Checks that rules cover the parameter tree and the checkpoint exactly; raises one error listing all problems.

    `param_shapes` comes from the model's abstract state. `allow_missing` are regexes of parameter paths
    the caller explicitly wants initialised by the model (e.g. action heads when starting from LLaVA-Video).
    `not_in_format` maps parameter paths the format cannot hold to the reason (reported as missing).
    """
    by_param = {r.param: r for r in rules}
    problems_missing, problems_shape, notes = [], [], []
    not_in_format = not_in_format or {}
    allowed = lambda path: any(re.search(rx, path) for rx in allow_missing)
    absent = sorted(p for p in set(param_shapes) - set(by_param) if p in not_in_format)
    for path in absent:
        if not allowed(path):
            problems_missing.append(f"{path}  ({not_in_format[path]})")
    no_rule = sorted(set(param_shapes) - set(by_param) - set(absent))
    no_param = sorted(set(by_param) - set(param_shapes))
    used_keys = set()
    num_layers = {}
    for path in sorted(set(param_shapes) & set(by_param)):
        rule, shape = by_param[path], tuple(param_shapes[path])
        n = shape[0] if rule.stacked else 0
        per_layer = shape[1:] if rule.stacked else shape
        want = ckpt_shape(rule.hook, per_layer)
        num_layers[path] = n
        for key in rule.keys(n):
            if key not in ckpt_shapes:
                if allowed(path):
                    continue
                problems_missing.append(f"{key}  (for {path}, expected shape {want})")
                continue
            used_keys.add(key)
            if tuple(ckpt_shapes[key]) != want:
                problems_shape.append(f"{key}: checkpoint shape {tuple(ckpt_shapes[key])} != expected {want} "
                                      f"(parameter {path} {shape}, hook {rule.hook})")
    allowed_absent = list(absent)
    for path in sorted(set(param_shapes) & set(by_param)):
        rule = by_param[path]
        if any(k not in ckpt_shapes for k in rule.keys(num_layers[path])) and allowed(path):
            allowed_absent.append(path)
    if allowed_absent:
        notes.append("initialised by the model (absent from checkpoint, allowed by allow_missing): "
                     + ", ".join(allowed_absent))
    rest = sorted(set(ckpt_shapes) - used_keys)
    unused = [k for k in rest if expected_unused(k)]
    unexpected = [k for k in rest if not expected_unused(k)]
    raise_mismatch(f"checkpoint {source} does not match the model:", [
        ("shape mismatches", problems_shape, True), ("missing keys", problems_missing, True),
        ("unexpected keys", unexpected, True),
        ("model parameters with no mapping rule (converter/model out of sync)", no_rule, False),
        ("mapping rules for parameters the model does not have (check config: action_token / "
         "tie_word_embeddings)", no_param, False)])
    return Plan(rules={p: by_param[p] for p in param_shapes if p in by_param}, num_layers=num_layers,
                expected_unused=unused, notes=notes, initialised=sorted(allowed_absent))


def read_param_slice(reader, rule: Rule, index: Sequence[slice], dtype, num_layers: int) -> np.ndarray:
    """Reads `index` (tuple of slices over the parameter, incl. the layer axis) from the checkpoint."""
    if rule.stacked:
        layers = range(*index[0].indices(num_layers))
        rest = tuple(index[1:])
        out = None
        for j, i in enumerate(layers):
            part = to_param(rule.hook, reader.read(rule.key.format(i=i), ckpt_index(rule.hook, rest)))
            if out is None:   # fill a preallocated stack: no list of parts + np.stack copy
                out = np.empty((len(layers),) + part.shape, dtype)
            out[j] = part
        if out is None:
            raise ValueError(f"{rule.param}: empty layer slice {index[0]} of {num_layers} layers")
        return out
    out = to_param(rule.hook, reader.read(rule.key, ckpt_index(rule.hook, tuple(index))))
    return np.ascontiguousarray(out.astype(dtype, copy=False))


def iter_ckpt_tensors(rules: Iterable[Rule], get_layer: Callable[[str, Optional[int]], np.ndarray],
                      num_layers: Dict[str, int]):
    """Yields (checkpoint key, array) for export; get_layer(path, i) returns one layer (or the whole param)."""
    for rule in rules:
        if rule.stacked:
            for i in range(num_layers[rule.param]):
                yield rule.key.format(i=i), np.ascontiguousarray(to_ckpt(rule.hook, get_layer(rule.param, i)))
        else:
            yield rule.key, np.ascontiguousarray(to_ckpt(rule.hook, get_layer(rule.param, None)))
