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
from flax import nnx
from jax.experimental import mesh_utils
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


# DCN (between-slice) sizes beside the ICI (in-slice) ones, MaxText's dcn_* axes: the mesh axis 'data' is
# mesh.data x mesh.dcn_data devices long, 'fsdp' mesh.fsdp x mesh.dcn_fsdp. dcn_data -1 = the slices the devices
# span (1 on a single slice or a GPU / CPU host), so a config sized for one slice runs data parallel over N.
DCN_AXES = ("dcn_data", "dcn_fsdp")
DCN_DEFAULTS = {"dcn_data": -1, "dcn_fsdp": 1}


def check_mesh_sizes(mesh_cfg: Mapping[str, int]) -> list:
    """The axis sizes of `mesh_cfg` in MESH_AXES order: each positive or -1, at most one -1 (no devices needed).
    The DCN sizes (DCN_AXES, default DCN_DEFAULTS) are checked too: positive, or -1 for dcn_data."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    fill = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"mesh config {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1, got {fill}")
    for a, s in zip(MESH_AXES, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"mesh config: axis {a!r} has size {s}; expected a positive size or -1")
    dcn = dcn_sizes(mesh_cfg)
    for a, s in dcn.items():
        if s == 0 or s < -1 or (s == -1 and a != "dcn_data"):
            raise ValueError(f"mesh config: axis {a!r} has size {s}; expected a positive size"
                             + (" or -1 (the number of slices)" if a == "dcn_data" else ""))
    return sizes


def dcn_sizes(mesh_cfg: Mapping[str, int]) -> dict:
    """{dcn_data, dcn_fsdp} of `mesh_cfg` (a plain dict may leave them out: DCN_DEFAULTS)."""
    return {a: int(mesh_cfg[a]) if a in mesh_cfg else DCN_DEFAULTS[a] for a in DCN_AXES}


def num_slices(devices: Sequence[Any]) -> int:
    """How many slices (ICI domains joined by DCN) the devices span: distinct `slice_index` (TPU), else 1."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def torus_dims(devices: Sequence[Any]) -> tuple | None:
    """The physical (x, y, z[, cores]) extent of one slice's TPU devices, None off TPU."""
    devs = [d for d in devices if getattr(d, "slice_index", 0) == getattr(devices[0], "slice_index", 0)]
    if devs[0].platform != "tpu" or not hasattr(devs[0], "coords"):
        return None
    dims = tuple(max(d.coords[i] for d in devs) - min(d.coords[i] for d in devs) + 1 for i in range(3))
    cores = len({d.core_on_chip for d in devs})
    return tuple(x for x in dims if x > 1) + ((cores,) if cores > 1 else ()) or (1,)


def holdable_sizes(dims: Sequence[int]) -> list:
    """Mesh axis sizes a torus of `dims` can hold as one axis: products of a subset of its dimensions."""
    out = {1}
    for d in dims:
        out |= {x * d for x in out}
    return sorted(out)


def resolve_mesh_sizes(mesh_cfg: Mapping[str, int], devices: Sequence[Any]) -> tuple:
    """(ICI sizes, DCN sizes), each in MESH_AXES order, with the -1s filled from `devices`; a ValueError in one
    line when the sizes do not multiply to the device count."""
    n, slices = len(devices), num_slices(devices)
    sizes = check_mesh_sizes(mesh_cfg)
    dcn = dcn_sizes(mesh_cfg)
    dcn_data = slices // dcn["dcn_fsdp"] if dcn["dcn_data"] == -1 else dcn["dcn_data"]
    dcn_list = [dcn_data, dcn["dcn_fsdp"], 1]
    shown = {**dict(zip(MESH_AXES, sizes)), **dcn}
    if math.prod(dcn_list) != slices:
        raise ValueError(f"mesh config {shown}: dcn_data x dcn_fsdp = {math.prod(dcn_list)} but the {n} devices "
                         f"span {slices} slice(s); expected dcn_data x dcn_fsdp = {slices}")
    per_slice = n // slices
    fill = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    known = math.prod(s for s in sizes if s != -1)
    if fill:
        if per_slice % known:
            raise ValueError(f"mesh config {shown}: the fixed axes ({known} devices) do not divide the "
                             + (f"{per_slice} devices of each slice" if slices > 1 else
                                f"{per_slice} available devices"))
        sizes = [per_slice // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != per_slice:
        where = f"{per_slice} per slice ({slices} slices)" if slices > 1 else f"{n} are available"
        raise ValueError(f"mesh config {shown} needs {math.prod(sizes) * slices} devices but {where}; expected "
                         f"data x fsdp x tensor = {per_slice}" + (" (one slice)" if slices > 1 else ""))
    return sizes, dcn_list


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """Mesh with axes ('data', 'fsdp', 'tensor') (all Auto); one ICI size may be -1 to take the remaining devices.

    On devices of several slices the mesh is hybrid (mesh_utils.create_hybrid_device_mesh, as MaxText builds
    it): each axis is its ICI size times its DCN size, the DCN part outermost, so 'data' (and 'fsdp' with
    dcn_fsdp > 1) crosses slices and 'tensor' never does. A mesh that the TPU torus cannot hold (an axis size
    that is not a product of torus dimensions) is a ValueError that lists the sizes it can hold.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes, dcn = resolve_mesh_sizes(mesh_cfg, devices)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        if num_slices(devices) > 1:
            grid = mesh_utils.create_hybrid_device_mesh(sizes, dcn, devices)
            return Mesh(grid, MESH_AXES, axis_types=axis_types)
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError:   # mesh_utils: "Failed to find assignment for logical_axis_index ..."
        dims = torus_dims(devices)
        raise ValueError(
            f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} does not fit the "
            f"{'x'.join(map(str, dims))} torus of {devices[0].device_kind} (one slice): each of data, fsdp, "
            f"tensor must be one of {holdable_sizes(dims)} (a product of torus dimensions) and "
            f"together use each dimension once") from None


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


def activation_spec(logical_axes: Iterable[str | None], rules, shape: Sequence[int], mesh) -> PartitionSpec:
    """Spec of one activation from its logical axes (shape-aware, as logical_to_mesh_spec). A rule table written
    before the activation names existed (e.g. saved with a converted checkpoint) leaves them replicated, as they
    were then."""
    known = {name for name, _ in normalize_rules(rules)}
    logical_axes = tuple(None if a is not None and a.startswith("act_") and a not in known else a
                         for a in logical_axes)
    return logical_to_mesh_spec(logical_axes, rules, shape, mesh)


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
