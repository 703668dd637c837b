"""Shared defaults for every config; specific configs (tiny, llavaction_7b, ...) override sections.

Sections: model (architecture), mesh + sharding_rules (parallelism), data (input pipeline),
optim (Optax), train (loop, checkpoints), eval. A converted checkpoint's own config.json wins over
the model defaults here (see llavaction_jax.convert).
"""
import ml_collections

# One table from logical axis names (on every parameter / activation) to mesh axes (MaxText style).
# None = replicated along that logical axis.
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("patches", None),
    ("conv", None),               # SigLIP patch-conv kernel window/channel dims
    ("action_slots", None),       # leading dim of the (1, H) action token
    ("action_classes", None),
    ("seq", None),
    ("norm", None),
    # Activations (logical constraints at every layer boundary; params use the names above). The residual
    # stream stays whole on 'tensor' (Megatron style: heads / mlp / vocab activations are split, the
    # o_proj / down_proj outputs are all-reduced); map 'seq' to a mesh axis for sequence sharding.
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


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
      # Decoder / vision-tower remat policies (llavaction_jax/model/remat.py POLICIES): none | full |
      # save_qkv_proj | save_dot_except_mlp | save_all_named |
      # offload_dot_except_mlp | dots_saveable | dots_with_no_batch_dims_saveable. "" = same as the decoder.
      remat_policy="none",
      vision_remat_policy="",
      # auto (splash on TPU, cudnn on GPU, blockwise elsewhere) | xla | blockwise | splash | cudnn
      attention_impl="auto",
  ))
  c.update(overrides)
  return c


def get_base_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config()
  # Mesh axis sizes; -1 fills with the remaining devices.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = DEFAULT_SHARDING_RULES

  config.data = ml_collections.ConfigDict(dict(
      train_files="",              # glob(s) of TFRecord shards, comma separated
      eval_files="",
      mixture_weights=(),          # one weight per comma-separated train glob; empty = uniform
      tokenizer_path="",           # dir with tokenizer.json (from the converted checkpoint)
      num_frames=16,
      max_length=4096,
      length_buckets=(256, 512, 1024, 2048, 4096),
      add_time_instruction=True,
      system_prompt="You are a helpful assistant.",
      shuffle_buffer=1024,
      global_batch_size=8,
      # Training rows hold several samples (segment ids, RoPE restarting per sample), first-fit in stream
      # order up to max_length tokens and max_videos_per_row videos; batches then carry pixel_values
      # [B, max_videos_per_row, F, S, S, 3] and actions [B, max_videos_per_row, 3] (llavaction_jax.input.packing).
      packing=False,
      max_videos_per_row=2,
  ))

  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, vision_lr=2e-6, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      warmup_ratio=0.03, schedule="cosine", grad_clip_norm=1.0,
      # Regexes over '/'-joined parameter paths (e.g. 'vision/encoder/layers/...').
      lr_overrides=(("^vision/", "vision_lr"),),
      freeze=(),
      # Regexes over parameter paths excluded from weight decay (HF: biases and norm weights).
      weight_decay_exclude=(r"(^|/)bias$", r"(^|/)scale$", r"norm"),
  ))

  config.train = ml_collections.ConfigDict(dict(
      num_steps=1000, grad_accum_steps=1, log_every=10, eval_every=0,
      checkpoint_every=100, keep_checkpoints=3, async_checkpointing=True,
      action_loss_weight=0.05, action_loss_parts=(0.5, 0.5, 0.1),
      # LM loss from the hidden states: "supervised" runs the LM head only at <= lm_loss_max_supervised
      # supervised positions per row (answers are ~100 of 16k tokens: ~16x fewer LM-head FLOPs than "chunked")
      # in chunks of lm_loss_chunk_size (peak one [B, C, V] f32 chunk, like "chunked"), and falls back exactly
      # to "chunked" for a batch with a longer row; "full" materialises [B, L, V] f32 logits (reference only).
      lm_loss="supervised", lm_loss_chunk_size=512, lm_loss_max_supervised=1024,
      init_from="",                # Orbax params dir from `python -m llavaction_jax.convert import` ("" = random init)
      peak_flops_per_device=0.0,   # for MFU; 0 = look up the device kind (CPU: MFU reported as n/a)
      progress_bar=True,
      synthetic_samples=0,         # > 0: train on that many random samples instead of config.data (smoke runs)
      synthetic_seq_len=0,         # their padded length (0 = config.data.max_length)
  ))

  # The TPU topology this config is sized for (python -m llavaction_jax.aot compiles for it by default).
  config.aot = ml_collections.ConfigDict(dict(topology=""))

  config.eval = ml_collections.ConfigDict(dict(
      batch_size=8, max_new_tokens=32, methods=("letters", "generate"),
      max_samples=0,               # periodic eval during training: first N records of data.eval_files (0 = all)
  ))
  return config


def use_topology(config, topologies, arg):
  """Size `config` for one entry of `topologies` {name: (TPU topology, mesh sizes, grad_accum_steps)}.

  `arg` is the name (``--config configs/x.py:NAME``); None or "" takes the first entry. The global batch stays
  config.data.global_batch_size; grad_accum_steps micro-batches of it make one step.
  """
  name = arg or next(iter(topologies))
  if name not in topologies:
    raise ValueError(f"config arg {name!r}: expected one of {sorted(topologies)}")
  topology, mesh, accum = topologies[name]
  config.aot.topology = topology
  config.mesh.update(**mesh)
  config.train.grad_accum_steps = accum
  return config
