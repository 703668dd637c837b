"""Matmul FLOPs of a traced program, counted from its jaxpr (no compile).

Why not XLA's cost analysis: it counts a while-loop body once (scanned layers, accumulation steps, and the
loops the TPU partitioner itself introduces, e.g. collective matmuls), and sees nothing inside Pallas kernels.
The jaxpr is the program as written, after autodiff: the backward pass and every rematerialised forward are
explicit equations, a scan's body runs `length` times, and a shard_map body runs once per device.

Counted: dot_general (2 * output elements * contracted size) and conv_general_dilated. Elementwise work is
left out, as in model FLOPs. A `cond` counts its cheapest branch (the step's only conds are exact fallbacks
for rare inputs, e.g. a row with more supervised tokens than the LM loss gathers), a `while` with no static
trip count counts its body once (reported in `unbounded_loops`). Pallas calls are not looked into: they are
returned by name with their multiplicity, for the caller to price (a kernel's grid skips blocks at run time).
"""
import collections
import dataclasses
import math
import jax
import jax.numpy as jnp
from jax._src.interpreters import partial_eval as pe   # dce_jaxpr has no public alias (jax 0.10)
from jax.extend import core as jex_core


@dataclasses.dataclass
class FlopCount:
    matmul_flops: float = 0.0
    # (kernel name, shapes of its floating-point operands) -> calls. Shapes are per shard inside a shard_map, whose devices multiply
    # the count (each device runs the call on its shard).
    kernel_calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unbounded_loops: int = 0

    def add(self, other: "FlopCount", times: float = 1.0):
        self.matmul_flops += times * other.matmul_flops
        for k, v in other.kernel_calls.items():
            self.kernel_calls[k] += times * v
        self.unbounded_loops += other.unbounded_loops


def _dot_flops(eqn) -> float:
    lhs = eqn.invars[0].aval
    (contract_lhs, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs.shape[d] for d in contract_lhs)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval          # kernel: spatial dims + in/out features (any layout)
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    out_features = rhs.shape[dn.rhs_spec[0]]
    per_output = math.prod(rhs.shape) / out_features   # in_features/groups * window
    return 2.0 * math.prod(out.shape) * per_output


def _sub_jaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _shard_map_devices(eqn) -> int:
    mesh = eqn.params.get("mesh")
    axes = eqn.params.get("manual_axes") or eqn.params.get("axis_names") or (mesh.axis_names if mesh else ())
    return math.prod(mesh.shape[a] for a in axes) if mesh is not None else 1


def count_jaxpr(jaxpr) -> FlopCount:
    total = FlopCount()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total.matmul_flops += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total.matmul_flops += _conv_flops(eqn)
        elif name == "pallas_call":
            info = eqn.params.get("name_and_src_info")
            kernel = str(getattr(info, "name", None) or eqn.params.get("name") or "pallas_call")
            floats = tuple(tuple(v.aval.shape) for v in eqn.invars if jnp.issubdtype(v.aval.dtype, jnp.floating))
            total.kernel_calls[(kernel, floats)] += 1
        elif name == "cond":
            counts = [count_jaxpr(b.jaxpr) for b in eqn.params["branches"]]
            total.add(min(counts, key=lambda c: c.matmul_flops))
        elif name == "scan":
            total.add(count_jaxpr(eqn.params["jaxpr"].jaxpr), float(eqn.params["length"]))
        elif name == "while":
            total.add(count_jaxpr(eqn.params["cond_jaxpr"].jaxpr))
            total.add(count_jaxpr(eqn.params["body_jaxpr"].jaxpr))
            total.unbounded_loops += 1
        elif name == "shard_map":
            total.add(count_jaxpr(eqn.params["jaxpr"]), float(_shard_map_devices(eqn)))
        else:   # pjit, remat / checkpoint, custom_jvp / custom_vjp calls, ...: their inner programs, once
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    total.add(count_jaxpr(sub))
    return total


def count_flops(fn, *args, **kwargs) -> FlopCount:
    """FLOPs of fn(*args) (arrays or ShapeDtypeStructs), traced abstractly (under the caller's mesh, if any).

    Dead code is removed first, as XLA would: e.g. the forward kernel that a remat'ed layer would rerun is
    dead when its residuals are saved by name.
    """
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    live, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return count_jaxpr(live)


def attention_kernel_kind(name: str):
    """fwd / dq / dkv / fused_bwd for an attention kernel's name (splash, flash), else None."""
    if "splash" not in name and "flash" not in name:
        return None
    return "fwd" if "fwd" in name else "dkv" if "dkv" in name else "dq" if "dq" in name else \
        "fused_bwd" if "bwd" in name else None
