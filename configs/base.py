"""Shared defaults for every config; specific configs (tiny, llavaction_7b, ...) override sections.

Sections: model (architecture), mesh + sharding_rules (parallelism), data (input pipeline),
optim (Optax), train (loop, checkpoints), eval. A converted checkpoint's own config.json wins over
the model defaults here (see llavaction_jax.convert). These are the only defaults: the code reads keys without
`.get(key, default)`, and configs/validate.py checks every config against this one (keys, types) at start.
"""
import ml_collections

# Model-section defaults and the logical-axis rule table live with the library code they configure.
from llavaction_jax import slices
from llavaction_jax.model.config import model_config, text_config, vision_config  # noqa: F401 (used by configs/*)
from llavaction_jax.sharding import DEFAULT_SHARDING_RULES


def get_base_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = model_config()
    # Mesh axis sizes inside one slice (ICI); -1 fills with the remaining devices. Between slices (DCN, as
    # MaxText's dcn_* axes): 'data' is data x dcn_data long, 'fsdp' fsdp x dcn_fsdp; dcn_data -1 = the number of
    # slices the devices span (1 off multi-slice TPU), so a one-slice config trains data parallel over N slices.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=-1, dcn_fsdp=1))
    config.sharding_rules = DEFAULT_SHARDING_RULES

    config.data = ml_collections.ConfigDict(dict(
        train_files="",              # glob(s) of TFRecord shards, comma separated
        mixture_weights=(),          # one weight per comma-separated train glob; empty = uniform
        tokenizer_path="",           # dir with tokenizer.json (from the converted checkpoint)
        num_frames=16,
        max_length=4096,
        length_buckets=(256, 512, 1024, 2048, 4096),
        add_time_instruction=True,
        system_prompt="You are a helpful assistant.",
        global_batch_size=8,
        # Training rows hold several samples (segment ids, RoPE restarting per sample), first-fit in stream
        # order up to max_length tokens and max_videos_per_row videos; batches then carry pixel_values
        # [B, max_videos_per_row, F, S, S, 3] and actions [B, max_videos_per_row, 3] (llavaction_jax.input.packing).
        packing=False,
        max_videos_per_row=2,
        # False: a training record failing its CRC or not parsing is an error naming file and offset. True: it
        # is skipped (deterministically, so resume stays exact), listed in <workdir>/data_failures.jsonl and
        # counted (metrics data/skipped_records); the batch is filled with the next records.
        skip_corrupt_records=False,
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
        num_steps=1000, grad_accum_steps=1, log_every=10,
        checkpoint_every=100, keep_checkpoints=3, async_checkpointing=True,
        action_loss_weight=0.05, action_loss_parts=(0.5, 0.5, 0.1),
        # Which hidden states the action heads are trained on (the reference's --vision_token_training):
        # "last_layer" the final-norm output (as released); "all_layers" the action token after the embeddings
        # and after every decoder layer, their losses averaged (the reference divides their sum by (L + 1) + 1,
        # so action_loss_weight = 0.1 * (L + 1) / (L + 2) reproduces it for L decoder layers).
        action_loss_layers="last_layer",
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
        # JAX persistent compilation cache: a restarted or requeued run reads its compiled step from here
        # instead of compiling again (minutes for a 7B step on a pod).
        # "auto": <workdir>/compilation_cache on pod runs (more than one process, or TPU / GPU devices) unless
        # JAX_COMPILATION_CACHE_DIR already names one; a path: always that; "": off.
        compilation_cache_dir="auto",
        # Observability (train/trackers.py, train/profiling.py, train/goodput.py).
        trackers=("tensorboard",),   # any of "tensorboard", "wandb" (the `wandb` extra), several at once
        wandb_project="llavaction_jax", wandb_entity="", wandb_run_name="",
        profile_start_step=0,        # > 0: xprof trace of this step and the next profile_num_steps - 1
        profile_num_steps=3,
        dump_hlo=False,              # True: <workdir>/hlo/train_step.txt, the optimised HLO of the step
        # Preemption tier: > 0 writes a temporary checkpoint every N minutes between the permanent
        # checkpoint_every ones, each deleted once a newer one is committed (train/checkpointing.py).
        temporary_checkpoint_minutes=0.0,
    ))

    # The TPU slice this config is sized for: its Cloud TPU accelerator type (e.g. v5p-16; checked against the
    # running slice at start) and topology (python -m llavaction_jax.aot compiles for it by default).
    config.aot = ml_collections.ConfigDict(dict(topology="", accelerator_type=""))

    config.eval = ml_collections.ConfigDict(dict(
        batch_size=8, max_new_tokens=32, methods=("letters", "generate"),
        max_samples=0,               # periodic evals during training: first N samples of each (0 = all)
    ))
    # Named evals (llavaction_jax.eval.benchmarks), e.g. evals.val = dict(type="ek100_mqa", data="val-*.tfrecord",
    # every=500): the trainer runs each at its own `every`, the eval CLI one by --eval NAME. Unset methods,
    # batch_size, max_new_tokens, max_samples come from `eval` above.
    config.evals = ml_collections.ConfigDict()
    return config


def use_topology(config, topologies, arg):
    """Size `config` for one entry of `topologies` {name: (TPU topology, mesh sizes, grad_accum_steps[, model
    overrides])}.

    `arg` is the name (``--config configs/x.py:NAME``), a Cloud TPU accelerator type whose chips the topology
    has (llavaction_jax.slices); None or "" takes the first entry. The global batch stays
    config.data.global_batch_size; grad_accum_steps micro-batches of it make one step.
    """
    name = arg or next(iter(topologies))
    if name not in topologies:
        raise ValueError(f"config arg {name!r}: expected one of {sorted(topologies)}")
    topology, mesh, accum, *model_overrides = topologies[name]
    if slices.slice_for_topology(topology).accelerator_type != name:
        raise ValueError(f"config topology {name!r} is {topology}, a "
                         f"{slices.slice_for_topology(topology).accelerator_type} in Cloud TPU's names")
    config.aot.topology = topology
    config.aot.accelerator_type = name
    config.mesh.update(**mesh)
    config.train.grad_accum_steps = accum
    for overrides in model_overrides:          # e.g. dict(remat_policy=...): what the planner chose for this slice
        config.model.update(**overrides)
    return config
