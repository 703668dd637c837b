"""Defaults of the model section of a config (the architecture); configs/*.py and checkpoint conversion start
from these and override what differs. A converted checkpoint's own config.json wins over them.
"""
import ml_collections


def vision_config(**overrides):
    """SigLIP vision tower. num_layers counts the layers USED (checkpoint layers - 1, LLaVA-NeXT drops the last)."""
    c = ml_collections.ConfigDict(dict(
        hidden_size=1152, intermediate_size=4304, num_layers=26, num_heads=16,
        image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
    ))
    c.update(overrides)
    return c


def text_config(**overrides):
    """Qwen2 decoder."""
    c = ml_collections.ConfigDict(dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=32768,
    ))
    c.update(overrides)
    return c


def model_config(**overrides):
    c = ml_collections.ConfigDict(dict(
        vision=vision_config(),
        text=text_config(),
        projector_type="mlp2x_gelu",
        pool_mode="bilinear",        # bilinear (14x14) | average (13x13) | max
        pool_stride=2,
        newline_position="grid",     # grid | one_token | frame | no_token
        action_token=False,          # LLaVAction extra (1, H) token + verb/noun/action heads
        action_types=(97, 300, 3806),
        video_token_id=151647,       # placeholder id in input_ids, expanded to num_video_tokens slots
        dtype="float32",             # compute dtype
        param_dtype="float32",
        scan_layers=True,
        # Decoder / vision-tower remat policy: a name in llavaction_jax/model/remat.py POLICIES ("none",
        # "full", "save_dot_except_mlp", ...); vision "" = same as the decoder.
        remat_policy="none",
        vision_remat_policy="",
        # auto (splash on TPU, cudnn on GPU, blockwise elsewhere) | xla | blockwise | splash | cudnn
        attention_impl="auto",
    ))
    c.update(overrides)
    return c
