"""LLaVA-Video-72B-Qwen2: Qwen2-72B sizes, untied embeddings, FSDP x tensor parallel."""
from configs import base


def get_config(arg=None):
  del arg
  config = base.get_base_config()
  config.model = base.model_config(
      text=base.text_config(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_layers=80,
                            num_heads=64, num_kv_heads=8, head_dim=128, tie_word_embeddings=False),
      action_token=False, dtype="bfloat16", remat_policy="full",
  )
  config.mesh.update(data=1, fsdp=-1, tensor=8)
  config.data.num_frames = 64
  config.data.max_length = 16384
  config.data.length_buckets = (4096, 8192, 16384)
  config.data.global_batch_size = 256
  return config
