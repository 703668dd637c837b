"""Train-step time of the JAX trainer vs the PyTorch reference (transformers LlavaOnevision), one run.

Both sides: the same model sizes (SigLIP tower -> mlp2x_gelu projector -> bilinear pooling -> Qwen2), the
same batch, sequence length and frames, forward + backward + AdamW step, float32 weights (bf16 compute in
--dtype bfloat16 mode: JAX via config.model.dtype, PyTorch via autocast). The layouts match: one newline
token per video ('one_token', as transformers does) and no action token. Prints per-step times, their
ratio, tokens/s and the MFU the training log reports (train.metrics.model_flops_per_step; pass
--peak_flops for CPUs). Frames are uint8, normalised on device as in training.

    python benchmarks/train_step.py                          # CPU, float32, 4 frames, tiny-ish model
    python benchmarks/train_step.py --device gpu --dtype bfloat16 --frames 16 --preset small   # on a GPU box
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from llavaction_jax import sharding as shd  # noqa: E402
from llavaction_jax.input.schema import PIXEL_LUT  # noqa: E402
from llavaction_jax.model import num_video_tokens  # noqa: E402
from llavaction_jax.train import metrics as metrics_lib, state as state_lib, step as step_lib  # noqa: E402

PRESETS = {
    # name: (vision hidden, vision mlp, vision layers, vision heads, image, patch,
    #        text hidden, text mlp, text layers, heads, kv heads, vocab)
    "tiny": (128, 512, 2, 4, 64, 8, 256, 1024, 4, 4, 2, 4096),
    "small": (1152, 4304, 26, 16, 384, 14, 896, 4864, 24, 14, 2, 151936),   # LLaVA-OV-0.5B sizes
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=0, help="0: video tokens + 64 text tokens")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak_flops", type=float, default=0.0, help="peak FLOP/s of the device (0: look up / n/a)")
    p.add_argument("--skip_torch", action="store_true")
    return p.parse_args()


def make_config(args):
    vh, vi, vl, vn, img, patch, th, ti, tl, tn, tkv, vocab = PRESETS[args.preset]
    cfg = base.get_base_config()
    cfg.model = base.model_config(
        vision=base.vision_config(hidden_size=vh, intermediate_size=vi, num_layers=vl, num_heads=vn,
                                  image_size=img, patch_size=patch),
        text=base.text_config(vocab_size=vocab, hidden_size=th, intermediate_size=ti, num_layers=tl,
                              num_heads=tn, num_kv_heads=tkv, head_dim=th // tn, tie_word_embeddings=False),
        newline_position="one_token", action_token=False, video_token_id=vocab - 1, dtype=args.dtype,
        remat_policy="none")
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    cfg.data.num_frames = args.frames
    cfg.data.global_batch_size = args.batch
    cfg.optim.update(lr=1e-5, vision_lr=1e-5, warmup_ratio=0.0, schedule="constant", grad_clip_norm=1.0,
                     weight_decay=0.0)
    cfg.train.num_steps = 1000
    return cfg


def make_batch(cfg, seq_len, seed=0):
    """Contract-format numpy batch: [text][video slots][supervised answer][padding]."""
    rng = np.random.default_rng(seed)
    b, f, s = cfg.data.global_batch_size, cfg.data.num_frames, cfg.model.vision.image_size
    n_vid = num_video_tokens(cfg.model, f)
    vocab = cfg.model.text.vocab_size
    ids = rng.integers(10, vocab - 2, size=(b, seq_len)).astype(np.int32)
    ids[:, 8:8 + n_vid] = cfg.model.video_token_id
    labels = np.full((b, seq_len), -100, np.int32)
    labels[:, 8 + n_vid:] = ids[:, 8 + n_vid:]
    return dict(input_ids=ids, attention_mask=np.ones((b, seq_len), np.int32), labels=labels,
                pixel_values=rng.integers(0, 256, size=(b, f, s, s, 3), dtype=np.uint8),
                actions=np.full((b, 3), -1, np.int32))


def time_jax(cfg, batch, args):
    mesh = shd.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    setup = state_lib.build_setup(cfg, mesh)
    state = state_lib.init_state(setup, cfg)
    sh = step_lib.batch_shardings(mesh, cfg)
    dev_batch = {k: jax.device_put(v, sh[k]) for k, v in batch.items()}
    step = step_lib.jit_train_step(setup, cfg)
    t0 = time.perf_counter()
    state, m = step(state, dev_batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        state, m = step(state, dev_batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, m = step(state, dev_batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / args.steps
    return dt, compile_s, setup.abstract_state["params"], float(m["loss"]), jax.devices()[0].device_kind


def torch_model(cfg):
    from transformers import (  # why: the PyTorch reference side only (--skip_torch runs without it)
        LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig)
    v, t = cfg.model.vision, cfg.model.text
    vis = SiglipVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                             num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                             image_size=v.image_size, patch_size=v.patch_size, vision_use_head=False)
    txt = Qwen2Config(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                      num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                      num_key_value_heads=t.num_kv_heads, max_position_embeddings=32768,
                      tie_word_embeddings=False)
    side = v.image_size
    hf = LlavaOnevisionConfig(vision_config=vis, text_config=txt, image_token_index=t.vocab_size - 2,
                              video_token_index=cfg.model.video_token_id, vision_feature_select_strategy="full",
                              vision_feature_layer=-1, image_grid_pinpoints=[[side, side]],
                              vision_aspect_ratio="anyres_max_9")
    return LlavaOnevisionForConditionalGeneration(hf)


def time_torch(cfg, batch, args):
    import torch  # why: the PyTorch reference side only (--skip_torch runs without it)
    device = "cuda" if args.device == "gpu" else "cpu"
    model = torch_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    ids = torch.from_numpy(batch["input_ids"]).long().to(device)
    mask = torch.from_numpy(batch["attention_mask"]).long().to(device)
    labels = torch.from_numpy(batch["labels"]).long().to(device)
    # The same SigLIP normalisation the JAX step applies on device to the uint8 frames.
    pix = torch.from_numpy(PIXEL_LUT[batch["pixel_values"]]).permute(0, 1, 4, 2, 3).contiguous().to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values_videos=pix).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(args.warmup):
        loss = step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    return (time.perf_counter() - t0) / args.steps, sum(p.numel() for p in model.parameters()), float(loss)


def main():
    args = parse_args()
    if args.device == "cpu" and not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")     # before the first device query starts a backend
    cfg = make_config(args)
    n_vid = num_video_tokens(cfg.model, args.frames)
    seq_len = args.seq_len or n_vid + 8 + 64
    batch = make_batch(cfg, seq_len)
    tokens = args.batch * seq_len
    print(f"preset {args.preset}, {args.device}, {args.dtype}: batch {args.batch} x seq {seq_len} "
          f"({n_vid} video tokens from {args.frames} frames)", flush=True)
    jax_dt, compile_s, params, jax_loss, kind = time_jax(cfg, batch, args)
    n_params = metrics_lib.count_params(params)
    peak = metrics_lib.peak_flops_per_device(kind, args.peak_flops)
    flops = metrics_lib.model_flops_per_step(cfg, params, seq_len)     # every position is a real token here
    mfu = metrics_lib.mfu(flops, jax_dt, 1, peak)
    print(f"JAX    : {jax_dt * 1e3:9.1f} ms/step  {tokens / jax_dt:10.1f} tokens/s  (compile {compile_s:.1f} s, "
          f"{n_params / 1e6:.2f} M params, loss {jax_loss:.4f}, {kind})")
    print(f"JAX MFU: {'n/a (unknown peak; pass --peak_flops)' if mfu is None else f'{100 * mfu:.2f} %'} "
          f"(model FLOPs, as the training log counts them = {flops:.3g} FLOP/step)")
    if args.skip_torch:
        return
    torch_dt, torch_params, torch_loss = time_torch(cfg, batch, args)
    print(f"PyTorch: {torch_dt * 1e3:9.1f} ms/step  {tokens / torch_dt:10.1f} tokens/s  "
          f"({torch_params / 1e6:.2f} M params, loss {torch_loss:.4f})")
    print(f"ratio PyTorch/JAX step time: {torch_dt / jax_dt:.2f}x")


if __name__ == "__main__":
    main()
