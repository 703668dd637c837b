"""Tiny model that trains in seconds on a CPU: the demo and most tests use it."""
from configs import base


def get_config(arg=None):
    del arg
    config = base.get_base_config()
    config.model = base.model_config(
        vision=base.vision_config(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                  image_size=32, patch_size=8),
        text=base.text_config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False,
                              max_position_embeddings=2048),
        action_token=True,
        action_types=(97, 300, 3806),
        video_token_id=3,
    )
    config.data.num_frames = 4
    config.data.max_length = 256
    config.data.length_buckets = (128, 256)
    config.data.global_batch_size = 8
    config.optim.lr = 3e-3
    config.optim.vision_lr = 1e-3
    config.train.num_steps = 200
    config.train.checkpoint_every = 50
    return config
