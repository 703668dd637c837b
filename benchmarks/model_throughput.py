"""Model throughput: jitted forward, forward+backward, and KV-cache greedy generation.

  python benchmarks/model_throughput.py --config configs/tiny.py --batch 2 --frames 4
  python benchmarks/model_throughput.py --config configs/llavaction_0p5b.py --text_layers 2 --vision_layers 2 \
      --image_size 96 --frames 2 --dtype bfloat16

Prints compile and steady-state times and tokens/s (no assertions; numbers only).
"""
import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax                                   # noqa: E402
import jax.numpy as jnp                      # noqa: E402
import numpy as np                           # noqa: E402
from flax import nnx                         # noqa: E402

from llavaction_jax.model import build as model_build, generate, num_video_tokens   # noqa: E402


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def timed(fn, repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return compile_s, (time.perf_counter() - start) / repeats


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--text_len", type=int, default=64, help="text tokens besides the video slots")
    p.add_argument("--max_new", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--text_layers", type=int, default=0, help="override (0 = config value)")
    p.add_argument("--vision_layers", type=int, default=0)
    p.add_argument("--image_size", type=int, default=0)
    p.add_argument("--dtype", default="")
    p.add_argument("--remat", default="")
    args = p.parse_args()

    cfg = load_config(args.config).model
    if args.text_layers:
        cfg.text.num_layers = args.text_layers
    if args.vision_layers:
        cfg.vision.num_layers = args.vision_layers
    if args.image_size:
        cfg.vision.image_size = args.image_size
    if args.dtype:
        cfg.dtype = args.dtype
    if args.remat:
        cfg.remat_policy = args.remat
    cfg.attention_impl = "xla" if jax.default_backend() == "cpu" else cfg.attention_impl

    model = model_build.new_model(cfg, seed=0)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    n_video = num_video_tokens(cfg, args.frames)
    length = n_video + args.text_len
    rng = np.random.RandomState(0)
    ids = rng.randint(4, min(cfg.text.vocab_size, 10000), size=(args.batch, length)).astype(np.int32)
    ids[:, 4:4 + n_video] = cfg.video_token_id
    mask = np.ones_like(ids)
    side = cfg.vision.image_size
    pix = jnp.asarray(rng.randn(args.batch, args.frames, side, side, 3), jnp.float32)
    print(f"backend={jax.default_backend()} params={n_params / 1e6:.1f}M dtype={cfg.dtype} "
          f"batch={args.batch} frames={args.frames} video_tokens={n_video} seq={length}")

    forward = nnx.jit(lambda m, a, b, c: m(a, b, c).logits.sum())
    c, s = timed(lambda: forward(model, ids, pix, mask), args.repeats)
    print(f"forward:          compile {c:.2f}s  step {s * 1e3:.1f} ms  {args.batch * length / s:.0f} tokens/s")

    def loss(m):
        return jnp.mean(m(ids, pix, mask).logits ** 2)
    grad = nnx.jit(lambda m: nnx.grad(loss)(m))
    c, s = timed(lambda: grad(model), args.repeats)
    print(f"forward+backward: compile {c:.2f}s  step {s * 1e3:.1f} ms  {args.batch * length / s:.0f} tokens/s")

    c, s = timed(lambda: generate(model, ids, pix, mask, args.max_new, eos_id=-1), args.repeats)
    print(f"generate:         first {c:.2f}s  call {s * 1e3:.1f} ms  {args.batch * args.max_new / s:.1f} new tokens/s "
          f"(prefill {length} + {args.max_new} steps)")


if __name__ == "__main__":
    main()
