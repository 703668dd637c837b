"""Static, hashable description of the model built from config.model (ml_collections ConfigDict)."""
import dataclasses
import math

from llavaction_jax.model.attention import IMPLEMENTATIONS as ATTENTION_KERNELS
from llavaction_jax.model.layout import LAYOUTS, count_video_tokens
from llavaction_jax.model.remat import POLICIES as REMAT_POLICIES

POOL_MODES = ("bilinear", "average", "max")
NEWLINE_POSITIONS = tuple(LAYOUTS)
# None = the model's default kernel (xla); the names are attention.IMPLEMENTATIONS' (one list).
ATTENTION_IMPLS = (None, *ATTENTION_KERNELS)
PROJECTOR_TYPES = ("mlp2x_gelu",)
# Compute / parameter dtypes the layers accept (model.layers.as_dtype).
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float

    @property
    def grid_side(self) -> int:
        # Conv2d(stride=P) floors: SigLIP 384/14 -> 27 (the last 6 pixel rows/cols are never seen).
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_side ** 2


@dataclasses.dataclass(frozen=True)
class TextSpec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    vision: VisionSpec
    text: TextSpec
    projector_type: str
    pool_mode: str
    pool_stride: int
    newline_position: str
    action_token: bool
    action_types: tuple
    video_token_id: int
    dtype: str
    param_dtype: str
    scan_layers: bool
    remat_policy: str            # decoder layers
    vision_remat_policy: str     # vision tower layers
    attention_impl: str | None

    @classmethod
    def from_config(cls, cfg) -> "ModelSpec":
        if isinstance(cfg, ModelSpec):
            return cfg
        v, t = cfg.vision, cfg.text
        _require(v.hidden_act == "gelu_pytorch_tanh", "vision.hidden_act", v.hidden_act,
                 "'gelu_pytorch_tanh' (SigLIP), the only activation supported")
        _require(v.image_size >= v.patch_size, "vision.image_size", v.image_size,
                 f">= model.vision.patch_size ({v.patch_size})")
        _require(v.hidden_size % v.num_heads == 0, "vision.hidden_size", v.hidden_size,
                 f"divisible by model.vision.num_heads ({v.num_heads})")
        _require(t.num_heads % t.num_kv_heads == 0, "text.num_heads", t.num_heads,
                 f"a multiple of model.text.num_kv_heads ({t.num_kv_heads})")
        _require(t.head_dim % 2 == 0, "text.head_dim", t.head_dim, "even (RoPE rotates pairs)")
        spec = cls(
            vision=VisionSpec(int(v.hidden_size), int(v.intermediate_size), int(v.num_layers), int(v.num_heads),
                              int(v.image_size), int(v.patch_size), float(v.layer_norm_eps)),
            text=TextSpec(int(t.vocab_size), int(t.hidden_size), int(t.intermediate_size), int(t.num_layers),
                          int(t.num_heads), int(t.num_kv_heads), int(t.head_dim), float(t.rope_theta),
                          float(t.rms_norm_eps), bool(t.tie_word_embeddings), int(t.max_position_embeddings)),
            projector_type=str(cfg.projector_type),
            pool_mode=str(cfg.pool_mode),
            pool_stride=int(cfg.pool_stride),
            newline_position=str(cfg.newline_position),
            action_token=bool(cfg.action_token),
            action_types=tuple(int(c) for c in cfg.action_types),
            video_token_id=int(cfg.video_token_id),
            dtype=str(cfg.dtype),
            param_dtype=str(cfg.param_dtype),
            scan_layers=bool(cfg.scan_layers),
            remat_policy=str(cfg.remat_policy),
            # "" = the decoder's policy.
            vision_remat_policy=str(cfg.vision_remat_policy or cfg.remat_policy),
            attention_impl=None if cfg.attention_impl in (None, "none", "") else str(cfg.attention_impl),
        )
        checks = [("projector_type", spec.projector_type, PROJECTOR_TYPES), ("pool_mode", spec.pool_mode, POOL_MODES),
                  ("newline_position", spec.newline_position, NEWLINE_POSITIONS),
                  ("remat_policy", spec.remat_policy, tuple(REMAT_POLICIES)),
                  ("vision_remat_policy", spec.vision_remat_policy, tuple(REMAT_POLICIES)),
                  ("attention_impl", spec.attention_impl, ATTENTION_IMPLS),
                  ("dtype", spec.dtype, DTYPES), ("param_dtype", spec.param_dtype, DTYPES)]
        for name, value, allowed in checks:
            _require(value in allowed, name, value, f"expected one of {allowed}")
        _require(spec.pool_stride >= 1, "pool_stride", spec.pool_stride, "expected >= 1")
        _require(len(spec.action_types) == 3 and min(spec.action_types) >= 1, "action_types", spec.action_types,
                 "expected (verb, noun, action) class counts, each >= 1")
        return spec


class ModelConfigError(ValueError):
    """A model-section value no model can be built from; `field` is its dotted name under config.model."""

    def __init__(self, field: str, value, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"model.{field}={value!r}: {expected}")


def _require(ok: bool, field: str, value, expected: str) -> None:
    if not ok:
        raise ModelConfigError(field, value, expected)


def pooled_side(side: int, mode: str, stride: int) -> int:
    """Patch-grid side after 2D pooling: bilinear resizes to ceil(side/stride), avg/max pools floor."""
    if mode == "bilinear":
        return math.ceil(side / stride)
    if mode in ("average", "max"):
        return side // stride
    raise ValueError(f"pool_mode={mode!r}: expected one of {POOL_MODES}")


def num_video_tokens(model_cfg, num_frames: int) -> int:
    """Number of input slots one video of `num_frames` frames occupies (pure python)."""
    spec = ModelSpec.from_config(model_cfg)
    side = pooled_side(spec.vision.grid_side, spec.pool_mode, spec.pool_stride)
    return count_video_tokens(spec.newline_position, num_frames, side, side, spec.action_token)
