"""LLaVA-Video / LLaVAction model in Flax NNX (inputs and outputs: LlavaActionModel.hidden_states / __call__)."""
from llavaction_jax.model.generate import generate
from llavaction_jax.model.layout import arrange_video_tokens, splice_video_tokens
from llavaction_jax.model.llava import ActionHeads, LlavaActionModel, ModelOutput, Projector
from llavaction_jax.model.pooling import bilinear_resize, pool2d
from llavaction_jax.model.qwen2 import Qwen2Decoder, apply_rope, rope_tables
from llavaction_jax.model.siglip import SiglipVisionTower
from llavaction_jax.model.spec import ModelSpec, num_video_tokens, pooled_side

__all__ = [
    "ActionHeads", "LlavaActionModel", "ModelOutput", "ModelSpec", "Projector", "Qwen2Decoder",
    "SiglipVisionTower", "apply_rope", "arrange_video_tokens", "bilinear_resize", "generate", "num_video_tokens",
    "pool2d", "pooled_side", "rope_tables", "splice_video_tokens",
]
