"""LLaVA-Video-72B-Qwen2: Qwen2-72B sizes, untied embeddings, 64 frames, FSDP x tensor parallel.

Sized for a TPU slice by the config arg, a Cloud TPU accelerator type; the default is the smallest v5p slice it
fits (`python -m llavaction_jax.aot plan` picked it): a v5p-128 (4x4x4, 64 chips), 16 FSDP groups of 4
tensor-parallel chips, the global batch of 256 in 16 micro-batches of 16 (one sample per FSDP group). The
v5p-1024 (8x8x8) entry runs 64 groups of 8 in 4 micro-batches. `python benchmarks/fit_report.py` proves both fit.
"""
from configs import base

TOPOLOGIES = {
    # name: (TPU topology, mesh, grad_accum_steps)
    "v5p-128": ("v5p:4x4x4", dict(data=1, fsdp=16, tensor=4), 16),
    "v5p-1024": ("v5p:8x8x8", dict(data=1, fsdp=64, tensor=8), 4),
}


def get_config(arg=None):
    config = base.get_base_config()
    config.model = base.model_config(
        text=base.text_config(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_layers=80,
                              num_heads=64, num_kv_heads=8, head_dim=128, tie_word_embeddings=False),
        action_token=False, dtype="bfloat16", remat_policy="full",
    )
    config.data.num_frames = 64
    config.data.max_length = 16384
    config.data.length_buckets = (4096, 8192, 14336, 16384)
    config.data.global_batch_size = 256
    return base.use_topology(config, TOPOLOGIES, arg)
