"""Compile the real train step for a TPU topology on this (CPU) machine and report memory and FLOPs.

python -m llavaction_jax.aot --config configs/llavaction_7b.py --topology v5p:2x2x2 [--config.x=y ...]

Uses libtpu's topology description (no TPU needed): the mesh comes from config.mesh over the topology's
devices, the state and batch are abstract (ShapeDtypeStructs with shardings), and XLA's memory analysis
of the compiled program says whether one step fits in each chip's HBM.
"""
import os

# libtpu asks the GCE metadata server / env for the host's TPU otherwise (noisy errors, slow timeouts).
# Nothing runs on a TPU here, so several compiler processes may load libtpu at once (its lockfile is for
# processes that own real chips).
for _k, _v in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
               ("TPU_ACCELERATOR_TYPE", "v5litepod-4"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
    os.environ.setdefault(_k, _v)

import dataclasses
import json
import time
from typing import Optional

GiB = 1024 ** 3
# HBM per JAX device (a chip; v4/v5p megacore chips are one device each by default).
HBM_BYTES = (("v6", 32 * GiB), ("v5 lite", 16 * GiB), ("v5e", 16 * GiB), ("v5", 95 * GiB), ("v4", 32 * GiB),
             ("v3", 16 * GiB), ("v2", 8 * GiB))


def hbm_bytes(device_kind: str) -> Optional[int]:
    kind = device_kind.lower()
    for key, size in HBM_BYTES:
        if key in kind:
            return size
    return None


@dataclasses.dataclass
class AotReport:
    topology: str
    device_kind: str
    num_devices: int
    mesh: dict
    global_batch: int
    grad_accum_steps: int
    seq_len: int
    num_frames: int
    num_params: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    total_bytes: int
    hbm_bytes: Optional[int]
    fits: Optional[bool]
    flops_per_device: Optional[float]
    model_flops: float
    compile_s: float

    def lines(self):
        g = lambda b: f"{b / GiB:8.2f} GiB"
        hbm = g(self.hbm_bytes) if self.hbm_bytes else "unknown"
        verdict = ("FITS" if self.fits else "DOES NOT FIT") if self.fits is not None else "unknown HBM size"
        return [
            f"topology {self.topology}: {self.num_devices} x {self.device_kind}, mesh {self.mesh}",
            f"batch {self.global_batch} (grad accumulation {self.grad_accum_steps}), seq_len {self.seq_len}, "
            f"{self.num_frames} frames, {self.num_params / 1e6:,.2f} M params",
            "per-device memory:",
            f"  arguments   {g(self.argument_bytes)}  (params + optimizer state + batch)",
            f"  outputs     {g(self.output_bytes)}  (aliased with donated arguments: {g(self.alias_bytes)})",
            f"  temporaries {g(self.temp_bytes)}",
            f"  code        {g(self.code_bytes)}",
            f"  total       {g(self.total_bytes)}  of {hbm} HBM -> {verdict}",
            (f"FLOPs per step (XLA cost analysis; scanned loop bodies count once): {self.flops_per_device:.4g} "
             f"per device, {self.flops_per_device * self.num_devices:.4g} total" if self.flops_per_device
             else "FLOPs per step (XLA): n/a"),
            f"FLOPs per step (6 * params * tokens): {self.model_flops:.4g}",
            f"compile time {self.compile_s:.1f} s",
        ]


def topology_devices(topology: str, num_slices: int = 1):
    """Devices of a TPU topology like 'v5e:2x2' or 'v5p:2x2x2' (libtpu; no TPU needed)."""
    from jax.experimental import topologies
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    try:
        topo = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
    except Exception as e:  # libtpu raises RuntimeError/ValueError with its own text
        raise ValueError(f"cannot describe TPU topology {topology!r} (is libtpu installed?): {e}") from e
    return list(topo.devices)


def compile_train_step(config, devices, topology: str = "") -> AotReport:
    """AOT-compile the train step of `config` for `devices`; the report has XLA's memory analysis."""
    import jax
    from llavaction_jax import sharding as shd
    from llavaction_jax.model import num_video_tokens
    from llavaction_jax.train import loop, metrics as metrics_lib
    from llavaction_jax.train import state as state_lib, step as step_lib

    mesh = shd.make_mesh(config.mesh, devices=devices)
    loop.check_batch_layout(config, mesh)
    setup = state_lib.build_setup(config, mesh)
    batch_size, seq_len = int(config.data.global_batch_size), int(config.data.max_length)
    frames, side = int(config.data.num_frames), int(config.model.vision.image_size)
    if num_video_tokens(config.model, frames) >= seq_len:
        raise ValueError(f"config.data.max_length={seq_len} leaves no room for the "
                         f"{num_video_tokens(config.model, frames)} video tokens of {frames} frames")
    bs = step_lib.batch_shardings(mesh, config)
    sds = lambda shape, dtype, key: jax.ShapeDtypeStruct(shape, dtype, sharding=bs[key])
    # Packed rows (config.data.packing): P videos / action labels per row, plus segment ids and positions.
    videos = (int(config.data.max_videos_per_row),) if "segment_ids" in bs else ()
    batch = {"input_ids": sds((batch_size, seq_len), jax.numpy.int32, "input_ids"),
             "attention_mask": sds((batch_size, seq_len), jax.numpy.int32, "attention_mask"),
             "labels": sds((batch_size, seq_len), jax.numpy.int32, "labels"),
             "pixel_values": sds((batch_size,) + videos + (frames, side, side, 3), jax.numpy.float32,
                                 "pixel_values"),
             "actions": sds((batch_size,) + videos + (3,), jax.numpy.int32, "actions")}
    if videos:
        batch.update(segment_ids=sds((batch_size, seq_len), jax.numpy.int32, "segment_ids"),
                     positions=sds((batch_size, seq_len), jax.numpy.int32, "positions"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    fn = jax.jit(step_lib.make_train_step(setup, config), in_shardings=(setup.shardings, bs),
                 out_shardings=(setup.shardings, replicated), donate_argnums=(0,))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = fn.lower(setup.abstract_state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    kind = devices[0].device_kind
    hbm = hbm_bytes(kind)
    return AotReport(
        topology=topology, device_kind=kind, num_devices=len(devices), mesh=dict(mesh.shape),
        global_batch=batch_size, grad_accum_steps=int(config.train.grad_accum_steps), seq_len=seq_len,
        num_frames=frames, num_params=metrics_lib.count_params(setup.abstract_state["params"]),
        argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
        code_bytes=mem.generated_code_size_in_bytes, total_bytes=total, hbm_bytes=hbm,
        fits=None if hbm is None else total <= hbm, flops_per_device=flops,
        model_flops=metrics_lib.train_flops_per_step(
            metrics_lib.count_params(setup.abstract_state["params"]), batch_size * seq_len),
        compile_s=compile_s)


def main(argv):
    del argv
    devices = topology_devices(_TOPOLOGY.value, _SLICES.value)
    report = compile_train_step(_CONFIG.value, devices, _TOPOLOGY.value)
    for line in report.lines():
        print(line, flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags
    _CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (path[:arg]).")
    _TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v5e:2x2, v5p:2x2x2, v6e:4x4.")
    _SLICES = flags.DEFINE_integer("num_slices", 1, "Number of slices (multi-slice / DCN).")
    _JSON = flags.DEFINE_string("json_out", "", "Also write the report as JSON here.")
    flags.mark_flags_as_required(["config"])
    app.run(main)
