"""Building blocks shared by the vision tower and the decoder: parameters with logical axes, linear
layers (optionally stacked over layers), norms, attention and the scan-over-layers driver."""
import jax
import jax.numpy as jnp
from flax import nnx

from llavaction_jax import sharding as shd
from llavaction_jax.model import remat



class Build:
    """Construction context handed down the module tree (never stored on modules)."""

    def __init__(self, rngs: nnx.Rngs, param_dtype, rules):
        self.rngs = rngs
        self.param_dtype = jnp.dtype(param_dtype)
        self.rules = shd.normalize_rules(rules)

    def param(self, init, shape, logical_axes) -> nnx.Param:
        """A Param with logical-axis metadata; under an active mesh it is also placed in its sharding."""
        shape = tuple(int(s) for s in shape)
        value = init(self.rngs.params(), shape, self.param_dtype)
        metadata = {"logical_axes": tuple(logical_axes)}
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.empty:
            spec = shd.logical_to_mesh_spec(logical_axes, self.rules, shape, mesh)
            metadata["out_sharding"] = tuple(spec)
        return nnx.Param(value, **metadata)


def normal(stddev):
    return jax.nn.initializers.normal(stddev)


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


def matmul_2d(x, kernel, out_dtype):
    """x [..., I] @ kernel [I, O] as one 2D matmul over the flattened leading dims.

    Same values as einsum("...i,io->...o"), but XLA:CPU runs the 2D form (and, above all, its weight
    gradient, which otherwise contracts two dims) about 2x faster; accelerators are indifferent.
    """
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, preferred_element_type=out_dtype)
    return y.reshape(x.shape[:-1] + (kernel.shape[-1],))


class Dense(nnx.Module):
    """x @ kernel (+ bias). Kernel stored [in, out]; with `stack=L` every param gets a leading layer axis."""

    def __init__(self, b: Build, in_features, out_features, axes, *, use_bias=True, stack=None, dtype=jnp.float32,
                 stddev=0.02):
        lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
        self.dtype = dtype
        self.kernel = b.param(normal(stddev), lead + (in_features, out_features), lead_axes + tuple(axes))
        self.bias = b.param(zeros, lead + (out_features,), lead_axes + (axes[1],)) if use_bias else None

    def __call__(self, x, out_dtype=None):
        kernel = self.kernel[...].astype(self.dtype)
        y = matmul_2d(x.astype(self.dtype), kernel, out_dtype or self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias, statistics in float32."""

    def __init__(self, b: Build, features, eps, *, stack=None, dtype=jnp.float32):
        lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
        self.eps = eps
        self.dtype = dtype
        self.scale = b.param(ones, lead + (features,), lead_axes + ("norm",))
        self.bias = b.param(zeros, lead + (features,), lead_axes + ("norm",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """Qwen2 RMSNorm like HF: normalise in float32, cast back, then multiply by the weight."""

    def __init__(self, b: Build, features, eps, *, stack=None, dtype=jnp.float32):
        lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
        self.eps = eps
        self.dtype = dtype
        self.scale = b.param(ones, lead + (features,), lead_axes + ("norm",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


class Embed(nnx.Module):
    """Embedding table [num, dim]; `attend` gives logits against it (tied lm_head)."""

    def __init__(self, b: Build, num, dim, axes, *, dtype=jnp.float32, stddev=0.02):
        self.dtype = dtype
        self.embedding = b.param(normal(stddev), (num, dim), axes)

    def __call__(self, ids):
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x, out_dtype=jnp.float32):
        table = self.embedding[...].astype(self.dtype)
        return matmul_2d(x.astype(self.dtype), table.T, out_dtype)


def run_layers(layers: nnx.Module, carry, xs, body, *, scan: bool, remat_policy: str):
    """Apply `body(layer, carry, x) -> (carry, y)` over a module whose params are stacked on axis 0.

    The stacked params are split off and sliced per layer (jax.lax.scan, or a python loop when
    scan=False); `xs` holds extra per-layer inputs (e.g. a KV cache) stacked the same way.
    """
    graphdef, state = nnx.split(layers)

    def step(c, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    if remat_policy != "none":
        step = jax.checkpoint(step, policy=remat.POLICIES[remat_policy], prevent_cse=not scan)
    if scan:
        return jax.lax.scan(step, carry, (state, xs))
    num = jax.tree.leaves(state)[0].shape[0]
    ys = []
    for i in range(num):
        carry, y = step(carry, jax.tree.map(lambda a: a[i], (state, xs)))
        ys.append(y)
    ys = jax.tree.map(lambda *a: jnp.stack(a), *ys) if ys and ys[0] is not None else None
    return carry, ys


def constrain(x, logical_axes, rules):
    """Pin an activation's sharding from its logical axes (e.g. ('batch', 'seq', 'act_embed')) under a mesh.

    Shape-aware like the parameters (a mesh axis that does not divide a dimension is dropped), so the same
    call serves every mesh; without a mesh it is the identity.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, shd.activation_spec(logical_axes, rules, x.shape, mesh))


def as_dtype(name):
    return jnp.dtype(name)
