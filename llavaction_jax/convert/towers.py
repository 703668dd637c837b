"""Key tables of the two towers every safetensors format shares: SigLIP (vision) and Qwen2 (text), and the
SigLIP sizes of a model config.

The formats differ only in the key prefixes around these blocks (see formats/hf.py, formats/llava_qwen.py).
"""
from typing import List

from llavaction_jax.convert.mapping import Rule


def set_vision_sizes(vision_cfg, siglip: dict) -> None:
    """Our vision config section's sizes from a complete transformers SiglipVisionConfig dict (the layer count
    is the caller's: how many layers the model runs depends on the format)."""
    vision_cfg.hidden_size = int(siglip["hidden_size"])
    vision_cfg.intermediate_size = int(siglip["intermediate_size"])
    vision_cfg.num_heads = int(siglip["num_attention_heads"])
    vision_cfg.image_size = int(siglip["image_size"])
    vision_cfg.patch_size = int(siglip["patch_size"])
    vision_cfg.layer_norm_eps = float(siglip["layer_norm_eps"])
    vision_cfg.hidden_act = str(siglip["hidden_act"])


def vision_rules(prefix: str) -> List[Rule]:
    """SigLIP vision tower under `prefix` (e.g. 'vision_tower.'): embeddings, stacked encoder layers, final norm."""
    lp = prefix + "encoder.layers.{i}."
    rules = [
        Rule("vision/embeddings/patch_embedding/kernel", prefix + "embeddings.patch_embedding.weight", "conv"),
        Rule("vision/embeddings/patch_embedding/bias", prefix + "embeddings.patch_embedding.bias"),
        Rule("vision/embeddings/position_embedding/embedding", prefix + "embeddings.position_embedding.weight"),
        Rule("vision/post_layernorm/scale", prefix + "post_layernorm.weight"),
        Rule("vision/post_layernorm/bias", prefix + "post_layernorm.bias"),
    ]
    for ln in ("layer_norm1", "layer_norm2"):
        rules += [Rule(f"vision/encoder/layers/{ln}/scale", lp + f"{ln}.weight", stacked=True),
                  Rule(f"vision/encoder/layers/{ln}/bias", lp + f"{ln}.bias", stacked=True)]
    for name, sub in [("q_proj", "self_attn"), ("k_proj", "self_attn"), ("v_proj", "self_attn"),
                      ("out_proj", "self_attn"), ("fc1", "mlp"), ("fc2", "mlp")]:
        rules += [Rule(f"vision/encoder/layers/{sub}/{name}/kernel", lp + f"{sub}.{name}.weight", "linear", True),
                  Rule(f"vision/encoder/layers/{sub}/{name}/bias", lp + f"{sub}.{name}.bias", stacked=True)]
    return rules


def projector_rules(linear_1: str, linear_2: str, image_newline: str) -> List[Rule]:
    """The 2-layer MLP projector (PyTorch Linear prefixes `linear_1` / `linear_2`) and the image newline."""
    return [Rule("projector/linear_1/kernel", linear_1 + ".weight", "linear"),
            Rule("projector/linear_1/bias", linear_1 + ".bias"),
            Rule("projector/linear_2/kernel", linear_2 + ".weight", "linear"),
            Rule("projector/linear_2/bias", linear_2 + ".bias"),
            Rule("image_newline", image_newline)]


def text_rules(prefix: str, lm_head_key: str, tied: bool) -> List[Rule]:
    """Qwen2 decoder under `prefix` (e.g. 'model.'); the LM head at `lm_head_key` unless embeddings are tied."""
    lp = prefix + "layers.{i}."
    rules = [Rule("llm/embed_tokens/embedding", prefix + "embed_tokens.weight"),
             Rule("llm/norm/scale", prefix + "norm.weight"),
             Rule("llm/layers/input_layernorm/scale", lp + "input_layernorm.weight", stacked=True),
             Rule("llm/layers/post_attention_layernorm/scale", lp + "post_attention_layernorm.weight", stacked=True)]
    for p in ("q_proj", "k_proj", "v_proj"):
        rules += [Rule(f"llm/layers/self_attn/{p}/kernel", lp + f"self_attn.{p}.weight", "linear", True),
                  Rule(f"llm/layers/self_attn/{p}/bias", lp + f"self_attn.{p}.bias", stacked=True)]
    rules.append(Rule("llm/layers/self_attn/o_proj/kernel", lp + "self_attn.o_proj.weight", "linear", True))
    for p in ("gate_proj", "up_proj", "down_proj"):
        rules.append(Rule(f"llm/layers/mlp/{p}/kernel", lp + f"mlp.{p}.weight", "linear", True))
    if not tied:
        rules.append(Rule("lm_head/kernel", lm_head_key, "linear"))
    return rules
