"""The whole config, checked once at start against configs/base.py, the one place its defaults live.

`validate(config)` refuses, as one cli.UserError line naming ``config.<section>.<key>`` (exit 2 in every CLI):
- keys configs/base.py does not have (the message names the closest known key) and base keys that are missing;
- a value of another type than its base default: int where the default is an int, int or float where it is a
  float, bool, str, tuple (a list stands for a tuple: a config read back from JSON has lists);
- values out of range or outside their choices (base_rules(), and the model's enums in model/spec.py);
- cross-field rules, checked by the code that owns them: the model's (model.spec.ModelSpec.from_config), the
  optimizer's (train.optimizer.validate_config), the mesh's (sharding.check_mesh_sizes), the sharding rule
  table, the mixture weights (input.mixture.normalise_weights), and one clip's video tokens fitting in
  data.max_length.
Two kinds of section may be absent from the base: OPTIONAL_SECTIONS (one config's own section, e.g. configs/demo.py's
`demo`; every key has a rule here, with its type) and NAMED_SECTIONS (free-form named entries, e.g. `evals`: any
entry name is accepted, the entries' common fields are checked where present).

The CLIs that load a config call it before building anything: python -m llavaction_jax.train, .eval (the
checkpoint's config), .demo, .aot, and benchmarks/fit_report.py (every entry, before the first compile).
Only CLIs and configs/ import this module (docs/architecture.md).
"""
import dataclasses
import difflib
import math
from typing import Any, Callable, Mapping, Optional

import ml_collections

from configs import base
from data_prep.mqa import MODES, REPRESENTATIONS
from data_prep.synthetic_videos import PATHS
from llavaction_jax import sharding
from llavaction_jax.cli import UserError
from llavaction_jax.eval.benchmarks import REGISTRY
from llavaction_jax.eval.metrics import METHODS, PROTOCOLS
from llavaction_jax.input import mixture
from llavaction_jax.model.spec import ModelConfigError, ModelSpec, num_video_tokens
from llavaction_jax.train import optimizer
from llavaction_jax.train.losses import LM_LOSS_MODES
from llavaction_jax.train.trackers import TRACKERS

ROOT = "config"


@dataclasses.dataclass(frozen=True)
class Rule:
    """`ok(value)` must hold; `expected` says what would be right. `kind` is the value's type where no base
    default gives one (OPTIONAL_SECTIONS, NAMED_SECTIONS)."""
    ok: Callable[[Any], bool]
    expected: str
    kind: Optional[type] = None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def at_least(low, kind=None) -> Rule:
    return Rule(lambda x: _number(x) and x >= low, f">= {low}", kind)


def positive(kind=None) -> Rule:
    return Rule(lambda x: _number(x) and x > 0, "> 0", kind)


def fraction(kind=float) -> Rule:
    return Rule(lambda x: _number(x) and 0 <= x <= 1, "in [0, 1]", kind)


def one_of(choices, kind=str) -> Rule:
    return Rule(lambda x: x in choices, f"one of {tuple(choices)}", kind)


def subset_of(choices) -> Rule:
    """A non-empty tuple of distinct names from `choices`."""
    return Rule(lambda x: len(x) > 0 and len(set(x)) == len(x) and all(v in choices for v in x),
                f"a non-empty tuple of distinct names from {tuple(choices)}", tuple)


def each(rule: Rule, length: Optional[int] = None, min_length: int = 0) -> Rule:
    """A tuple whose every element satisfies `rule` (of `length` elements, or at least `min_length`)."""
    size = f"{length} values" if length is not None else "values" if not min_length else f">= {min_length} values"
    kind = f"{_KIND_NAMES[rule.kind]} " if rule.kind else ""

    def ok(x):
        sized = len(x) == length if length is not None else len(x) >= min_length
        return sized and all(_type_ok(v, rule.kind) and rule.ok(v) for v in x)
    return Rule(ok, f"a tuple of {size}, each {kind}{rule.expected}", tuple)


def text(kind=str) -> Rule:
    return Rule(lambda x: bool(x), "a non-empty string", kind)


MESH_SIZE = Rule(lambda x: x == -1 or x >= 1, "a positive size or -1 (the remaining devices)")
# A vocab id, or LLaVA-NeXT's IMAGE_TOKEN_INDEX = -200 (llava/constants.py), the sentinel its
# tokenizer_image_token splices into input_ids and a llava_qwen checkpoint's model uses: never a vocab row.
IMAGE_TOKEN_INDEX = -200
VIDEO_TOKEN_ID = Rule(lambda x: _number(x) and (x >= 0 or x == IMAGE_TOKEN_INDEX),
                      f">= 0 (a vocab id) or {IMAGE_TOKEN_INDEX} (LLaVA's IMAGE_TOKEN_INDEX sentinel)")
ASCENDING = Rule(lambda x: all(a < b for a, b in zip(x, x[1:])), "strictly increasing lengths")


def base_rules() -> Mapping[str, Rule]:
    """Per-key rules over the base sections (dotted keys under `config.`), beyond the type. The optimizer's keys
    are train.optimizer.validate_config's, the model's enums model.spec's (both called by validate)."""
    rules = {
        "seed": at_least(0),
        "mesh.data": MESH_SIZE, "mesh.fsdp": MESH_SIZE, "mesh.tensor": MESH_SIZE,
        "mesh.dcn_data": Rule(lambda x: x == -1 or x >= 1, "a positive size or -1 (the number of slices)"),
        "mesh.dcn_fsdp": at_least(1),
        "data.num_frames": at_least(1), "data.max_length": at_least(1),
        "data.length_buckets": each(at_least(1, int)), "data.mixture_weights": each(at_least(0, float)),
        "data.max_videos_per_row": at_least(1),
        "train.action_loss_parts": each(at_least(0, float), length=3),
        "train.lm_loss": one_of(LM_LOSS_MODES), "train.lm_loss_chunk_size": at_least(1),
        "train.lm_loss_max_supervised": at_least(1), "train.peak_flops_per_device": at_least(0),
        "train.synthetic_samples": at_least(0), "train.synthetic_seq_len": at_least(0),
        "train.trackers": subset_of(TRACKERS), "train.profile_start_step": at_least(0),
        "train.profile_num_steps": at_least(1), "train.temporary_checkpoint_minutes": at_least(0, float),
        "eval.batch_size": at_least(1), "eval.max_new_tokens": at_least(1), "eval.methods": subset_of(METHODS),
        "eval.max_samples": at_least(0),
        "model.pool_stride": at_least(1), "model.video_token_id": VIDEO_TOKEN_ID,
        "model.vision.layer_norm_eps": positive(), "model.text.rope_theta": positive(),
        "model.text.rms_norm_eps": positive(),
    }
    for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "image_size", "patch_size"):
        rules[f"model.vision.{name}"] = at_least(1)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "max_position_embeddings"):
        rules[f"model.text.{name}"] = at_least(1)
    return rules


def _demo_rules() -> Mapping[str, Rule]:
    """configs/demo.py's `demo` section (llavaction_demo reads every key)."""
    class_ids = each(at_least(0, int), min_length=1)
    return {
        "verbs": class_ids, "nouns": class_ids,
        "eval_fraction": Rule(lambda x: _number(x) and 0 < x < 1, "in (0, 1)", float),
        "train_copies": at_least(1, int), "eval_copies": at_least(1, int), "clips_per_video": at_least(1, int),
        "max_clip_seconds": positive(float), "fps": positive(float), "render_size": at_least(1, int),
        "motion_path": one_of(PATHS),
        "representation": one_of(REPRESENTATIONS), "num_options": at_least(2, int),
        "train_modes": subset_of(MODES), "eval_modes": subset_of(MODES), "train_draws": at_least(1, int),
        "verb_angles": each(Rule(_number, "a finite angle in degrees", float)),
        "text_mcq_per_question": at_least(0, int), "text_mcq_weight": fraction(),
        "prediction_top1": fraction(), "accuracy_target": fraction(),
        "target_methods": subset_of(tuple(PROTOCOLS)), "seed": at_least(0, int),
        "binding_steps": at_least(0, int), "binding_lr": positive(float), "binding_batch_size": at_least(1, int),
        "binding_b2": Rule(lambda x: _number(x) and 0 <= x < 1, "in [0, 1)", float),
        "binding_max_length": at_least(16, int), "binding_per_question": at_least(1, int), "binding_copy_share": fraction(),
    }


def _eval_entry_rules() -> Mapping[str, Rule]:
    """Fields every named entry of `evals` may have: dict(type=..., data=..., every=...)."""
    return {"type": one_of(tuple(sorted(REGISTRY))), "data": Rule(lambda x: True, "a string", str),
            "every": at_least(0, int)}


# Sections a config may add to the base: {name: rules factory}.
OPTIONAL_SECTIONS = {"demo": _demo_rules}
NAMED_SECTIONS = {"evals": _eval_entry_rules}
# Keys whose value may be None besides their base type: no clipping; the platform's default kernel.
NULLABLE = ("optim.grad_clip_norm", "model.attention_impl")


def known_keys() -> list:
    """Every dotted key ("config.train.num_steps") of configs/base.py and of the optional sections."""
    return _dotted_keys(base.get_base_config()) + [f"{ROOT}.{s}.{k}" for s, f in OPTIONAL_SECTIONS.items()
                                                   for k in f()]


def lookup(config, key: str):
    """The value at dotted `key` ("train.num_steps") of `config`."""
    return _lookup(config, key)


def validate(config) -> Any:
    """Check `config` (see the module docstring); returns it unchanged. Raises cli.UserError."""
    base_config = base.get_base_config()
    known = known_keys()
    _check_section(config, base_config, ROOT, known)
    for key, rule in base_rules().items():
        _apply(rule, _lookup(config, key), f"{ROOT}.{key}")
    _cross_field(config)
    return config


def with_overrides(overrides: Mapping[str, Any]) -> Callable:
    """A check_config for eval.loading.load_for_eval: set a CLI's overrides {dotted key: value, None = keep}
    on the checkpoint's config, then validate it (before the model is built)."""
    def check(config):
        for key, value in overrides.items():
            if value is not None:
                section, name = key.rsplit(".", 1)
                _lookup(config, section)[name] = value
        return validate(config)
    return check


# ------------------------------------------------------------------------------------------------- structure
def _dotted_keys(section, path=ROOT) -> list:
    out = []
    for key, value in section.items():
        out.append(f"{path}.{key}")
        if isinstance(value, ml_collections.ConfigDict) and f"{path}.{key}" not in _named_paths():
            out += _dotted_keys(value, f"{path}.{key}")
    return out


def _named_paths() -> tuple:
    return tuple(f"{ROOT}.{name}" for name in NAMED_SECTIONS)


def _is_section(value) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, dict))


def _check_section(config, base_section, path: str, known: list) -> None:
    if not _is_section(config):
        raise UserError(f"bad config value {config!r}", path, "a section (ConfigDict) as in configs/base.py")
    for key in config.keys():
        where = f"{path}.{key}"
        if key in base_section:
            continue
        if path == ROOT and key in NAMED_SECTIONS:
            _check_named(config[key], where, NAMED_SECTIONS[key]())
        elif path == ROOT and key in OPTIONAL_SECTIONS:
            _check_optional(config[key], where, OPTIONAL_SECTIONS[key](), known)
        else:
            raise unknown_key(where, known)
    for key, default in base_section.items():
        where = f"{path}.{key}"
        if key not in config:
            raise UserError("missing config key", where, "every key of configs/base.py (defaults live there)")
        value = config[key]
        if where in _named_paths():
            _check_named(value, where, NAMED_SECTIONS[key]())
        elif isinstance(default, ml_collections.ConfigDict):
            _check_section(value, default, where, known)
        else:
            _check_type(value, type(default), where)


def _check_optional(section, path: str, rules: Mapping[str, Rule], known: list) -> None:
    if not _is_section(section):
        raise UserError(f"bad config value {section!r}", path, f"a section with keys {sorted(rules)}")
    for key in section.keys():
        if key not in rules:
            raise unknown_key(f"{path}.{key}", known)
    for key, rule in rules.items():
        if key not in section:
            raise UserError("missing config key", f"{path}.{key}", f"every key of the section: {sorted(rules)}")
        _check_type(section[key], rule.kind, f"{path}.{key}")
        _apply(rule, section[key], f"{path}.{key}")


def _check_named(section, path: str, rules: Mapping[str, Rule]) -> None:
    if not _is_section(section):
        raise UserError(f"bad config value {section!r}", path, "a section of named entries")
    for name, entry in section.items():
        if not _is_section(entry):
            raise UserError(f"bad config value {entry!r}", f"{path}.{name}",
                            f"an entry with fields such as {sorted(rules)}")
        for key, rule in rules.items():
            if key in entry:
                _check_type(entry[key], rule.kind, f"{path}.{name}.{key}")
                _apply(rule, entry[key], f"{path}.{name}.{key}")


_KIND_NAMES = {bool: "a bool", int: "an int", float: "a float (or an int)", str: "a string", tuple: "a tuple"}


def _type_ok(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is tuple:
        return isinstance(value, (tuple, list))
    return kind is None or isinstance(value, kind)


def _check_type(value, kind, where: str) -> None:
    if value is None and where[len(ROOT) + 1:] in NULLABLE:
        return
    if not _type_ok(value, kind):
        raise UserError(f"bad config value {value!r} of type {type(value).__name__}", where,
                        f"{_KIND_NAMES.get(kind, kind.__name__)}, as its default in configs/base.py")


def unknown_key(where: str, known) -> UserError:
    """The error for a key no config has, naming the closest known dotted key (same section first)."""
    parent, key = where.rsplit(".", 1)
    siblings = {k.rsplit(".", 1)[1]: k for k in known if k.rsplit(".", 1)[0] == parent}
    close = [siblings[n] for n in difflib.get_close_matches(key, list(siblings), n=1, cutoff=0.7)]
    if not close:     # the right name in the wrong section (config.train.lr -> config.optim.lr)
        by_name = {}
        for k in known:
            by_name.setdefault(k.rsplit(".", 1)[1], k)
        close = [by_name[n] for n in difflib.get_close_matches(key, list(by_name), n=1, cutoff=0.8)]
    hint = f"did you mean {close[0]}?" if close else f"a key of configs/base.py under {parent}"
    return UserError(f"unknown config key {key!r}", where, hint)


def _lookup(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _apply(rule: Rule, value, where: str) -> None:
    if value is None and where[len(ROOT) + 1:] in NULLABLE:
        return
    if not rule.ok(value):
        raise UserError(f"bad config value {value!r}", where, rule.expected)


# ------------------------------------------------------------------------------------------------- cross-field
def _as_user_error(fn, where: str):
    """fn() with its ValueError reported as a UserError naming `where` (the owner's message says what is wrong
    and what was expected)."""
    try:
        return fn()
    except ValueError as e:
        raise UserError(str(e), where) from None


def _cross_field(config) -> None:
    optimizer.validate_config(config)          # its errors are UserErrors naming config.optim / config.train keys
    try:
        ModelSpec.from_config(config.model)
    except ModelConfigError as e:
        raise UserError(f"bad config value {e.value!r}", f"{ROOT}.model.{e.field}", e.expected) from None
    _as_user_error(lambda: sharding.check_mesh_sizes(config.mesh), f"{ROOT}.mesh")
    rules = _as_user_error(lambda: sharding.normalize_rules(config.sharding_rules), f"{ROOT}.sharding_rules")
    for name, target in rules:
        axes = (target,) if isinstance(target, str) else target or ()
        bad = [a for a in axes if a not in sharding.MESH_AXES]
        if bad:
            raise UserError(f"sharding rule {name!r} maps to mesh axis {bad[0]!r}", f"{ROOT}.sharding_rules",
                            f"mesh axes from {sharding.MESH_AXES} (or None)")

    d = config.data
    if max(d.length_buckets, default=0) > d.max_length:
        raise UserError(f"bad config value {tuple(d.length_buckets)!r}", f"{ROOT}.data.length_buckets",
                        f"lengths <= config.data.max_length ({d.max_length}), strictly increasing")
    _apply(ASCENDING, tuple(d.length_buckets), f"{ROOT}.data.length_buckets")
    globs = [p for p in str(d.train_files).split(",") if p.strip()]
    if globs and len(d.mixture_weights):
        _as_user_error(lambda: mixture.normalise_weights(tuple(d.mixture_weights), len(globs)),
                       f"{ROOT}.data.mixture_weights")
    video = num_video_tokens(config.model, int(d.num_frames))
    if video >= d.max_length:
        raise UserError(f"bad config value {d.max_length!r}", f"{ROOT}.data.max_length",
                        f"more than the {video} video tokens of one {d.num_frames}-frame clip (+ the text)")
