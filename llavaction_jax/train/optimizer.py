"""Optax optimizer for LLaVAction training: AdamW, warmup + cosine schedule, clipping, per-module LR, freezing.

Parameters are grouped by regexes over their '/'-joined paths (e.g. 'vision/encoder/layers/mlp/fc1/kernel'):
`config.optim.freeze` patterns put a parameter in the frozen group (no update, no optimizer state, no gradient
in the clipping norm, like requires_grad=False in PyTorch); `config.optim.lr_overrides` pairs (regex, lr) give a
group its own peak learning rate (lr may be a float or the name of another optim key, e.g. 'vision_lr').
Every group gets the same warmup/decay shape, scaled to its own peak, as one HF param group would.
"""
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from llavaction_jax.cli import UserError

FROZEN = "frozen"
DEFAULT = "default"
SCHEDULES = ("cosine", "linear", "constant")   # config.optim.schedule
# config.train.action_loss_layers (the reference's vision_token_training modes that supervise the action token;
# its "first_layer" reads the embeddings, where the action token is the same learned vector for every video).
ACTION_LOSS_LAYERS = ("last_layer", "all_layers")


def path_str(path) -> str:
    """'/'-joined key path of a pytree leaf ('vision/encoder/layers/mlp/fc1/kernel')."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def leaf_paths(tree) -> Any:
    """A tree of the same structure whose leaves are the '/'-joined paths."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def warmup_steps_for(num_steps: int, warmup_ratio: float) -> int:
    # HF Trainer: ceil(warmup_ratio * num_training_steps).
    return int(math.ceil(warmup_ratio * num_steps))


def make_schedule(peak_lr: float, num_steps: int, warmup_steps: int, kind: str = "cosine") -> Callable:
    """Linear warmup from 0 then `kind` decay to 0 at num_steps (HF get_*_schedule_with_warmup formulas)."""
    if kind not in SCHEDULES:
        raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {kind!r}")
    if num_steps <= 0:
        raise ValueError(f"config.train.num_steps must be > 0, got {num_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, num_steps - warmup_steps)
        if kind == "cosine":
            decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        elif kind == "linear":
            decay = jnp.maximum(0.0, 1.0 - progress)
        else:
            decay = jnp.ones_like(progress)
        return peak_lr * jnp.where(step < warmup_steps, warm, decay)

    return schedule


def _resolve_lr(optim_cfg, value) -> float:
    if isinstance(value, str):
        if value not in optim_cfg:
            raise ValueError(f"config.optim.lr_overrides names optim key {value!r}, which does not exist")
        return float(optim_cfg[value])
    return float(value)


def group_lrs(optim_cfg) -> dict:
    """Peak LR of every non-frozen group: 'default' plus one group per lr_overrides entry (named by its regex)."""
    lrs = {DEFAULT: float(optim_cfg.lr)}
    for pattern, value in optim_cfg.lr_overrides:
        lrs[pattern] = _resolve_lr(optim_cfg, value)
    return lrs


def param_labels(params, optim_cfg) -> Any:
    """Group label of every parameter: 'frozen', the first matching lr_overrides regex, or 'default'."""
    freeze = [re.compile(p) for p in optim_cfg.freeze]
    overrides = [(re.compile(p), p) for p, _ in optim_cfg.lr_overrides]

    def label(path):
        if any(f.search(path) for f in freeze):
            return FROZEN
        for regex, name in overrides:
            if regex.search(path):
                return name
        return DEFAULT

    return jax.tree.map(label, leaf_paths(params))


def decay_mask(params, optim_cfg) -> Any:
    """True where weight decay applies: not biases, norm scales (HF excludes bias and LayerNorm weights)."""
    exclude = [re.compile(p) for p in optim_cfg.weight_decay_exclude]
    return jax.tree.map(lambda p: not any(e.search(p) for e in exclude), leaf_paths(params))


def _zero_frozen(labels) -> optax.GradientTransformation:
    """Zero frozen gradients BEFORE clipping so they do not count in the global norm."""
    frozen_mask = jax.tree.map(lambda l: l == FROZEN, labels)
    return optax.masked(optax.set_to_zero(), frozen_mask)


def make_optimizer(optim_cfg, num_steps: int, params) -> tuple:
    """(tx, schedules): the full gradient transformation for `params` and the LR schedule of each group.

    tx = zero frozen grads -> clip by global norm -> per-group AdamW (frozen: set_to_zero, so no Adam state).
    """
    labels = param_labels(params, optim_cfg)
    used = set(jax.tree.leaves(labels))
    mask = decay_mask(params, optim_cfg)
    warmup = warmup_steps_for(num_steps, float(optim_cfg.warmup_ratio))
    schedules = {}
    transforms = {FROZEN: optax.set_to_zero()}
    for name, peak in group_lrs(optim_cfg).items():
        schedules[name] = make_schedule(peak, num_steps, warmup, optim_cfg.schedule)
        transforms[name] = optax.adamw(
            learning_rate=schedules[name], b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
            eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay), mask=mask)
    # multi_transform needs a transform for every label present, and only those.
    transforms = {k: v for k, v in transforms.items() if k in used}
    if not transforms:
        raise ValueError("the model has no parameters to optimise")
    chain = [_zero_frozen(labels)]
    clip = float(optim_cfg.grad_clip_norm or 0.0)   # None = no clipping, as 0
    if clip > 0:
        chain.append(optax.clip_by_global_norm(clip))
    chain.append(optax.multi_transform(transforms, labels))
    schedules = {k: v for k, v in schedules.items() if k in used}
    return optax.chain(*chain), schedules


def summarize_groups(params, optim_cfg) -> Mapping[str, int]:
    """Number of parameters (elements) in each group, for the startup log."""
    counts = {}
    for label, leaf in zip(jax.tree.leaves(param_labels(params, optim_cfg)), jax.tree.leaves(params)):
        counts[label] = counts.get(label, 0) + int(math.prod(leaf.shape))
    return counts



class ConfigError(UserError, ValueError):
    """A config value the trainer refuses (a ValueError too, for callers that catch that)."""


def _check(ok: bool, field: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"bad config value {value!r}", field, expected)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def validate_config(config) -> None:
    """Refuse optimizer / schedule / loop values that would train wrongly rather than fail (a negative lr
    trains uphill): a UserError naming the config field. configs/validate.py calls it in the whole-config check
    every CLI does at start; loop.train calls it too, for library callers."""
    o, t = config.optim, config.train
    _check(_finite(o.lr) and float(o.lr) > 0, "config.optim.lr", o.lr, "a finite learning rate > 0")
    for pattern, value in o.lr_overrides:
        try:
            re.compile(pattern)
        except re.error as e:
            _check(False, "config.optim.lr_overrides", pattern, f"a valid regex ({e})")
        field = f"config.optim.{value}" if isinstance(value, str) else f"config.optim.lr_overrides[{pattern!r}]"
        _check(not isinstance(value, str) or value in o, "config.optim.lr_overrides", value,
               "a float or the name of an existing optim key (e.g. 'vision_lr')")
        lr = o[value] if isinstance(value, str) else value
        _check(_finite(lr) and float(lr) >= 0, field, lr, "a finite learning rate >= 0")
    for name in ("freeze", "weight_decay_exclude"):
        for pattern in o[name]:
            try:
                re.compile(pattern)
            except re.error as e:
                _check(False, f"config.optim.{name}", pattern, f"a valid regex ({e})")
    _check(_finite(o.b1) and 0 <= float(o.b1) < 1, "config.optim.b1", o.b1, "0 <= b1 < 1")
    _check(_finite(o.b2) and 0 <= float(o.b2) < 1, "config.optim.b2", o.b2, "0 <= b2 < 1")
    _check(_finite(o.eps) and float(o.eps) > 0, "config.optim.eps", o.eps, "eps > 0")
    _check(_finite(o.weight_decay) and float(o.weight_decay) >= 0, "config.optim.weight_decay", o.weight_decay,
           "weight_decay >= 0")
    _check(_finite(o.warmup_ratio) and 0 <= float(o.warmup_ratio) <= 1, "config.optim.warmup_ratio",
           o.warmup_ratio, "0 <= warmup_ratio <= 1")
    _check(o.schedule in SCHEDULES, "config.optim.schedule", o.schedule, f"one of {SCHEDULES}")
    clip = o.grad_clip_norm
    _check(clip is None or (_finite(clip) and float(clip) >= 0), "config.optim.grad_clip_norm", clip,
           ">= 0 (0 = no clipping)")
    for name, low in (("num_steps", 1), ("grad_accum_steps", 1), ("log_every", 1), ("keep_checkpoints", 1),
                      ("checkpoint_every", 0)):
        _check(isinstance(t[name], int) and t[name] >= low, f"config.train.{name}", t[name],
               f"an integer >= {low}")
    _check(isinstance(config.data.global_batch_size, int) and config.data.global_batch_size > 0,
           "config.data.global_batch_size", config.data.global_batch_size, "an integer > 0")
    _check(_finite(t.action_loss_weight) and float(t.action_loss_weight) >= 0, "config.train.action_loss_weight",
           t.action_loss_weight, ">= 0")
    _check(t.action_loss_layers in ACTION_LOSS_LAYERS, "config.train.action_loss_layers", t.action_loss_layers,
           f"one of {ACTION_LOSS_LAYERS}")
