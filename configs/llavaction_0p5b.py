"""LLaVAction-0.5B (LLaVA-OneVision-0.5B base): Qwen2-0.5B sizes, tied embeddings, 16 frames.

Sized for a TPU slice by the config arg, a Cloud TPU accelerator type (``--config
configs/llavaction_0p5b.py:v5p-16``); the default is a v5e-4 (2x2, 4 chips). The global batch of 256 comes from gradient accumulation; `python benchmarks/fit_report.py` proves
each entry fits.
"""
from configs import base

TOPOLOGIES = {
    # name: (TPU topology, mesh, grad_accum_steps)
    "v5e-4": ("v5e:2x2", dict(data=1, fsdp=4, tensor=1), 64),        # 4 chips, 64 micro-batches of 4
    "v5p-16": ("v5p:2x2x2", dict(data=1, fsdp=8, tensor=1), 16),     # 8 chips, 2 samples each per micro-batch
}


def get_config(arg=None):
    config = base.get_base_config()
    config.model = base.model_config(
        text=base.text_config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                              num_heads=14, num_kv_heads=2, head_dim=64, tie_word_embeddings=True),
        action_token=True, dtype="bfloat16", remat_policy="save_dot_except_mlp", vision_remat_policy="full",
    )
    config.data.num_frames = 16
    config.data.global_batch_size = 256
    return base.use_topology(config, TOPOLOGIES, arg)
