"""Device mesh and logical-axis sharding for the LLaVAction model.

Every parameter carries `logical_axes` metadata (e.g. ('layers', 'embed', 'mlp')). One rule table
(config.sharding_rules, default DEFAULT_SHARDING_RULES below) maps logical names to mesh axes
('data', 'fsdp', 'tensor'). The mapping is shape-aware: a dimension that does not divide by the mesh
axis size, or a mesh axis already used by an earlier dimension, falls back to replication, so the same
rules serve a tiny test model on 8 fake devices and a 72B model on a pod.
"""
import math
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The default table from logical axis names (on every parameter / activation) to mesh axes (MaxText style).
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

MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes that split the batch dimension of inputs and activations.
BATCH_AXES = ("data", "fsdp")


def normalize_rules(rules) -> tuple:
    """Rule table as a hashable tuple of (logical_name, mesh_axes) with mesh_axes None | str | tuple."""
    if rules is None:
        rules = DEFAULT_SHARDING_RULES
    out = []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ValueError(f"sharding_rules[{i}] = {rule!r}: expected (logical_name, mesh_axes)")
        name, target = rule
        if target is not None and not isinstance(target, str):
            target = tuple(target)
        out.append((str(name), target))
    return tuple(out)


def check_mesh_sizes(mesh_cfg: Mapping[str, int]) -> list:
    """The axis sizes of `mesh_cfg` in MESH_AXES order: each positive or -1, at most one -1 (no devices needed)."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    fill = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"mesh config {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1, got {fill}")
    for a, s in zip(MESH_AXES, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"mesh config: axis {a!r} has size {s}; expected a positive size or -1")
    return sizes


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh with axes ('data', 'fsdp', 'tensor') (all Auto); one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = check_mesh_sizes(mesh_cfg)
    fill = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if n % known:
            raise ValueError(f"mesh config {dict(zip(MESH_AXES, sizes))}: the fixed axes ({known} devices) do not "
                             f"divide the {n} available devices")
        sizes = [n // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != n:
        raise ValueError(f"mesh config {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                         f"{n} are available")
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)


def _mesh_sizes(mesh) -> dict:
    return dict(mesh.shape) if mesh is not None else {}


def logical_to_mesh_spec(logical_axes: Iterable[str | None], rules=None, shape: Sequence[int] | None = None,
                         mesh=None) -> PartitionSpec:
    """PartitionSpec for one array from its logical axis names.

    With `shape` and `mesh` given, a mesh axis is dropped for a dimension it does not divide (and a mesh
    axis is never used twice in one spec), so the result is always a valid sharding for that array.
    """
    table = dict(normalize_rules(rules))
    sizes = _mesh_sizes(mesh)
    logical_axes = tuple(logical_axes)
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {logical_axes} do not match the array rank of shape {tuple(shape)}")
    used = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no entry in sharding_rules (known: {sorted(table)})")
        target = table[name]
        targets = () if target is None else ((target,) if isinstance(target, str) else target)
        kept = []
        for axis in targets:
            if sizes and axis not in sizes:
                raise ValueError(f"sharding rule {name!r} -> {axis!r}: mesh has axes {tuple(sizes)}")
            if axis in used:
                continue
            if shape is not None and sizes:
                factor = math.prod(sizes[a] for a in kept) * sizes[axis]
                if shape[dim] % factor:
                    continue
            kept.append(axis)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def variable_spec(var: nnx.Variable, rules, mesh) -> PartitionSpec:
    """Spec of one nnx Variable from its `logical_axes` metadata (replicated when it has none)."""
    value = var.get_value()
    shape = tuple(getattr(value, "shape", ()))
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
        return PartitionSpec()
    return logical_to_mesh_spec(axes, rules, shape, mesh)


def state_shardings(tree, mesh: Mesh, rules=None):
    """NamedSharding for every Variable in an nnx State/module tree (params, optimizer state, ...)."""
    def f(x):
        if isinstance(x, nnx.Variable):
            return x.replace(NamedSharding(mesh, variable_spec(x, rules, mesh)))
        return NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(f, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for [B, ...] inputs: the batch over ('data', 'fsdp'), everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def is_fully_replicated(array) -> bool:
    """True when every device holds the whole array."""
    sharding = array.sharding
    return tuple(sharding.shard_shape(array.shape)) == tuple(array.shape)


def param_bytes(x) -> int:
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
