"""Memory (XLA memory_analysis temp bytes) and FLOPs of the LM loss + its gradients, per lm_loss mode.

  python benchmarks/lm_loss_memory.py                      # 7B-like: V=152064, H=3584, L=16384, B=1, CPU compile
  python benchmarks/lm_loss_memory.py --topology v5p:2x2x2 # AOT for one TPU chip of that topology

The function is d(loss)/d(hidden, lm_head) for bf16 final-norm hidden states [B, L, H] and an f32 LM head [H, V]
cast to bf16 (the 7B config's compute). The supervised program holds both lax.cond branches (gathered and the
chunked fallback), so its temp bytes cover either.

Measured (temp bytes): CPU full 40,096,937,984 / chunked 5,225,120,064 / supervised 5,357,253,504; TPU v5p AOT
full 19,931,758,304 / chunked 1,717,365,152 / supervised 1,975,346,144. The whole 7B train step
(`python -m llavaction_jax.aot --config configs/llavaction_7b.py --topology v5p:2x2x2
--config.data.global_batch_size=8 --config.train.lm_loss=...`, 1 sample of 16384 tokens per chip):
temporaries 73.86 GiB (full) vs 68.42 GiB (supervised).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llavaction_jax import aot               # noqa: E402  (first: it sets the libtpu env defaults before JAX loads)

import jax                                   # noqa: E402
import jax.numpy as jnp                      # noqa: E402

from llavaction_jax.train import losses      # noqa: E402

GiB = 1024 ** 3


def loss_and_grads_fn(mode, chunk_size, max_supervised):
    def loss(hidden, kernel, labels):
        fn = lambda h: jnp.dot(h.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16),
                               preferred_element_type=jnp.float32)
        total, count = losses.lm_loss_sums_from_hidden(fn, hidden, labels, mode=mode, chunk_size=chunk_size,
                                                       max_supervised=max_supervised)
        return total / jnp.maximum(count, 1.0)

    return jax.value_and_grad(loss, argnums=(0, 1))


def measure(mode, *, batch, length, hidden, vocab, chunk_size, max_supervised, device=None):
    """(temp bytes, XLA flops) of the compiled loss + grads (abstract inputs: nothing is allocated)."""
    sharding = jax.sharding.SingleDeviceSharding(device) if device is not None else None
    args = (jax.ShapeDtypeStruct((batch, length, hidden), jnp.bfloat16, sharding=sharding),
            jax.ShapeDtypeStruct((hidden, vocab), jnp.float32, sharding=sharding),
            jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=sharding))
    compiled = jax.jit(loss_and_grads_fn(mode, chunk_size, max_supervised)).lower(*args).compile()
    cost = compiled.cost_analysis()
    return compiled.memory_analysis().temp_size_in_bytes, float(cost["flops"]) if cost else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=3584)
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--chunk_size", type=int, default=512)
    p.add_argument("--max_supervised", type=int, default=1024)
    p.add_argument("--topology", default="", help="AOT-compile for one chip of this TPU topology (e.g. v5p:2x2x2)")
    args = p.parse_args()
    device = None
    if args.topology:
        device = aot.topology_devices(args.topology)[0]
    print(f"B={args.batch} L={args.length} H={args.hidden} V={args.vocab} chunk={args.chunk_size} "
          f"K={args.max_supervised} on {device.device_kind if device is not None else jax.devices()[0].device_kind}")
    b, length, h, v = args.batch, args.length, args.hidden, args.vocab
    chunks = lambda n: -(-n // min(args.chunk_size, n)) * min(args.chunk_size, n)
    # LM-head matmul FLOPs executed (XLA counts a scan body once, so its number is one chunk's): forward 2BLHV,
    # backward 4BLHV, and chunked recomputes the forward once more in the backward.
    executed = {"full": 6 * b * length * h * v, "chunked": 8 * b * chunks(length) * h * v,
                "supervised": 8 * b * chunks(min(args.max_supervised, length)) * h * v}
    for mode in losses.LM_LOSS_MODES:
        temp, flops = measure(mode, batch=b, length=length, hidden=h, vocab=v, chunk_size=args.chunk_size,
                              max_supervised=args.max_supervised, device=device)
        print(f"{mode:10s} temp {temp:>14,d} B ({temp / GiB:7.3f} GiB)   LM-head FLOPs executed "
              f"{executed[mode]:.4g}" + (" (rows with <= K targets; else = chunked)" if mode == "supervised" else "")
              + f"   [XLA cost analysis {flops:.4g}]")

if __name__ == "__main__":
    main()
