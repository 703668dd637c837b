"""LLaVAction-7B (LLaVA-Video-7B-Qwen2 base): Qwen2-7B sizes, vocab 152064, untied embeddings, 64 frames.

Sized for a TPU slice by the config arg, a Cloud TPU accelerator type (``--config
configs/llavaction_7b.py:v5p-128``); the default is the smallest slice it fits, a v5p-16 (2x2x2, 8 chips). Every entry keeps the release run's global batch of 256 through gradient
accumulation, one sample per chip per micro-batch; `python benchmarks/fit_report.py` proves each fits.
"""
from configs import base

TOPOLOGIES = {
    # name: (TPU topology, mesh, grad_accum_steps)
    "v5p-16": ("v5p:2x2x2", dict(data=1, fsdp=8, tensor=1), 32),     # 8 chips, 32 micro-batches of 8
    # 64 chips: keeping the MLP activations too (save_all_named) brings executed / model FLOPs from 1.264 to
    # 1.131, and tensor 4 makes room for them (AOT: 47.4 of 95 GiB per chip, compiled 2026-12-07).
    "v5p-128": ("v5p:4x4x4", dict(data=1, fsdp=16, tensor=4), 16, dict(remat_policy="save_all_named")),
    "v5p-512": ("v5p:4x8x8", dict(data=1, fsdp=256, tensor=1), 1),   # 256 chips, one sample each, no accumulation
}


def get_config(arg=None):
    config = base.get_base_config()
    config.model = base.model_config(
        text=base.text_config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, tie_word_embeddings=False),
        action_token=True, dtype="bfloat16",
        # Decoder: keep q/k/v, attention and o_proj outputs, recompute only the MLP's gate/up in the backward
        # pass. Vision tower (64 x 729 patches per sample): recompute everything; saving its attention outputs
        # too leaves 9.7% of a v5p chip's HBM free on v5p-16.
        remat_policy="save_dot_except_mlp", vision_remat_policy="full",
    )
    config.data.num_frames = 64
    config.data.max_length = 16384
    # A 64-frame sample (13441 video tokens + ~160 text) pads to 14336, a 16-frame one to 4096.
    config.data.length_buckets = (4096, 8192, 14336, 16384)
    config.data.global_batch_size = 256
    return base.use_topology(config, TOPOLOGIES, arg)
