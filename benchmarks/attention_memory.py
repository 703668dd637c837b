"""Temporary memory of one causal GQA attention layer, per implementation (XLA memory analysis, no run).

A 7B-sized decoder layer's attention (B=1, L=16384, 28 query heads, 4 kv heads, head_dim 128, bf16) is
compiled forward and forward+backward (grad of a random projection of the output w.r.t. q, k, v):
  * xla vs splash for one v5p chip (AOT through libtpu's topology description, no TPU needed);
  * xla vs blockwise for the CPU host.
Prints one table with the temporaries and the xla / other ratios.

  python benchmarks/attention_memory.py [--length 16384] [--heads 28] [--kv_heads 4] [--head_dim 128]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llavaction_jax import aot  # noqa: E402  (first: it sets the libtpu env defaults before JAX loads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from llavaction_jax.model.attention import attention  # noqa: E402

GiB = 1024 ** 3


def temp_bytes(impl, devices, length, heads, kv_heads, head_dim, backward):
    mesh = jax.sharding.Mesh(np.array(devices[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"),
                             axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rep = NamedSharding(mesh, P())
    sds = lambda n: jax.ShapeDtypeStruct((1, length, n, head_dim), jnp.bfloat16, sharding=rep)
    kv_lengths = jax.ShapeDtypeStruct((1,), jnp.int32, sharding=rep)

    def forward(q, k, v, lens):
        return attention(q, k, v, impl=impl, causal=True, kv_lengths=lens)

    def train(q, k, v, lens):
        w = jnp.linspace(-1.0, 1.0, q.shape[-1], dtype=jnp.float32)
        loss = lambda q, k, v: jnp.sum(forward(q, k, v, lens).astype(jnp.float32) * w)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    with jax.set_mesh(mesh):
        compiled = jax.jit(train if backward else forward).lower(
            sds(heads), sds(kv_heads), sds(kv_heads), kv_lengths).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--heads", type=int, default=28)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--head_dim", type=int, default=128)
    args = p.parse_args()

    shape = (args.length, args.heads, args.kv_heads, args.head_dim)
    targets = [("v5p (AOT)", aot.topology_devices("v5p:2x2x2"), "splash"), ("cpu", jax.devices("cpu"), "blockwise")]
    print(f"causal GQA attention, B=1 L={args.length} heads={args.heads} kv_heads={args.kv_heads} "
          f"head_dim={args.head_dim} bf16: temporaries per device")
    print(f"{'target':10s} {'pass':9s} {'xla GiB':>10s} {'impl':>10s} {'impl GiB':>10s} {'xla/impl':>9s}")
    for name, devices, impl in targets:
        for backward in (False, True):
            ref = temp_bytes("xla", devices, *shape, backward)
            other = temp_bytes(impl, devices, *shape, backward)
            print(f"{name:10s} {'fwd+bwd' if backward else 'fwd':9s} {ref / GiB:10.3f} {impl:>10s} "
                  f"{other / GiB:10.3f} {ref / max(other, 1):9.1f}", flush=True)


if __name__ == "__main__":
    main()
