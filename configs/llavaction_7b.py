"""LLaVAction-7B (LLaVA-Video-7B-Qwen2 base): Qwen2-7B sizes, vocab 152064, untied embeddings."""
from configs import base


def get_config(arg=None):
  del arg
  config = base.get_base_config()
  config.model = base.model_config(
      text=base.text_config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                            num_heads=28, num_kv_heads=4, head_dim=128, tie_word_embeddings=False),
      action_token=True, dtype="bfloat16", remat_policy="full",
  )
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  config.data.num_frames = 64
  config.data.max_length = 16384
  config.data.length_buckets = (4096, 8192, 16384)
  config.data.global_batch_size = 256
  return config
