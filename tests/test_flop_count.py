"""FLOPs counted from jaxprs (llavaction_jax.flop_count) against hand counts: remat, scan, shard_map, cond."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from llavaction_jax import flop_count
from llavaction_jax.model import attention as attn_lib, remat

M, K, N = 64, 32, 48


def _mlp(x, w1, w2):
    h = jnp.tanh(remat.name(x @ w1, "mlp_up"))
    return jnp.sum(remat.name(h @ w2, "mlp_out") ** 2)


def _args():
    f32 = jnp.float32
    return (jax.ShapeDtypeStruct((M, K), f32), jax.ShapeDtypeStruct((K, N), f32),
            jax.ShapeDtypeStruct((N, K), f32))


@pytest.mark.parametrize("policy, forwards", [(None, 1), ("full", 2), ("save_all_named", 1)])
def test_value_and_grad_counts_backward_and_recomputed_forward(policy, forwards):
    """Two matmuls of 2*M*K*N each: forward(s) + 2x for the backward (dx and dw per matmul); under full remat
    the forward runs again in the backward pass; saving the named activations avoids it."""
    fn = _mlp if policy is None else jax.checkpoint(_mlp, policy=remat.POLICIES[policy])
    count = flop_count.count_flops(jax.value_and_grad(fn, argnums=(0, 1, 2)), *_args())
    dot = 2 * M * K * N
    assert count.matmul_flops == 2 * dot * (forwards + 2)
    # grad alone does not need the forward's value: a fully remat'ed function runs its forward once.
    grad_only = flop_count.count_flops(jax.grad(jax.checkpoint(_mlp, policy=remat.POLICIES["full"]),
                                                argnums=(0, 1, 2)), *_args())
    assert grad_only.matmul_flops == 2 * dot * 3


def test_scan_body_counts_once_per_iteration_and_cond_its_cheapest_branch():
    w = jax.ShapeDtypeStruct((7, K, K), jnp.float32)
    x = jax.ShapeDtypeStruct((M, K), jnp.float32)

    def layers(x, ws):
        return jax.lax.scan(lambda h, w: (h @ w, None), x, ws)[0]

    assert flop_count.count_flops(layers, x, w).matmul_flops == 7 * 2 * M * K * K

    def branchy(x, w):
        return jax.lax.cond(jnp.sum(x) > 0, lambda: (x @ w) @ w, lambda: x @ w)

    assert flop_count.count_flops(branchy, x, jax.ShapeDtypeStruct((K, K), jnp.float32)).matmul_flops == 2 * M * K * K


def test_shard_map_body_runs_on_every_device():
    mesh = jax.make_mesh((4,), ("d",), devices=jax.devices()[:4])
    x = jax.ShapeDtypeStruct((M, K), jnp.float32, sharding=NamedSharding(mesh, P("d")))
    w = jax.ShapeDtypeStruct((K, N), jnp.float32, sharding=NamedSharding(mesh, P()))
    fn = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d"))
    with jax.set_mesh(mesh):
        count = flop_count.count_flops(fn, x, w)
    assert count.matmul_flops == 2 * M * K * N          # 4 devices x their 16 rows each


def test_splash_residuals_saved_by_name_skip_the_forward_kernel_rerun():
    """The splash kernel names its output and logsumexp (remat.KERNEL_RESIDUALS): a policy that keeps the
    attention output keeps them, so the backward pass does not run the forward kernel again; full remat
    does. Traced only (the Pallas call never runs here)."""
    q = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.float32)

    def layer(q, k, v):
        out = remat.name(attn_lib.splash_attention(q, k, v, causal=True, interpret=True), "attention_out")
        return jnp.sum(jnp.sin(out))

    def kinds(policy):
        fn = jax.value_and_grad(jax.checkpoint(layer, policy=remat.POLICIES[policy]), argnums=(0, 1, 2))
        calls = flop_count.count_flops(fn, q, q, q).kernel_calls
        out = {}
        for (name, shapes), n in calls.items():
            kind = flop_count.attention_kernel_kind(name)
            out[kind] = out.get(kind, 0) + n
            assert shapes[0] == (2, 256, 128)                 # [N, T, D] query per call (vmap'ed batch of 1)
        return out

    assert kinds("save_dot_except_mlp") == {"fwd": 1, "dq": 1, "dkv": 1}
    assert kinds("full") == {"fwd": 2, "dq": 1, "dkv": 1}


def test_conv_flops():
    x = jax.ShapeDtypeStruct((2, 3, 28, 28), jnp.float32)     # NCHW
    w = jax.ShapeDtypeStruct((8, 3, 14, 14), jnp.float32)     # OIHW, stride 14: a patch embedding
    fn = lambda x, w: jax.lax.conv_general_dilated(x, w, (14, 14), "VALID")
    assert flop_count.count_flops(fn, x, w).matmul_flops == 2 * (2 * 8 * 2 * 2) * (3 * 14 * 14)
