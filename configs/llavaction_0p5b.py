"""LLaVAction-0.5B (LLaVA-OneVision-0.5B base): Qwen2-0.5B sizes, tied embeddings."""
from configs import base


def get_config(arg=None):
  del arg
  config = base.get_base_config()
  config.model = base.model_config(
      text=base.text_config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                            num_heads=14, num_kv_heads=2, head_dim=64, tie_word_embeddings=True),
      action_token=True, dtype="bfloat16", remat_policy="full",
  )
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  config.data.num_frames = 16
  config.data.global_batch_size = 256
  return config
