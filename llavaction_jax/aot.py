"""Plan a run before renting chips: compile the real train step for a TPU topology on this (CPU) machine.

llavaction-aot --config configs/llavaction_7b.py[:v5p-16] [--topology v5p:2x2x2] [--num_slices 2] [--config.x=y ...]
(or python -m llavaction_jax.aot ...; TPU topologies need the `tpu` extra: pip install ".[tpu]")

Uses libtpu's topology description (no TPU needed): the mesh comes from config.mesh over the topology's
devices (with --num_slices N, a hybrid ICI x DCN mesh over N such slices: config.mesh stays the per-slice mesh,
the slices add data parallelism and the global batch is kept through the accumulation count), the state and batch are abstract (ShapeDtypeStructs with shardings), and XLA's memory analysis of the
compiled program says whether one step fits in each chip's HBM (a program the TPU compiler refuses for lack of
memory is reported as DOES NOT FIT with the bytes it asked for).

FLOPs. XLA's cost analysis counts a loop body once (scanned layers, gradient-accumulation steps, and the
loops the TPU partitioner adds itself) and cannot see into Pallas kernels (splash attention). So the executed
FLOPs come from the step's jaxpr (llavaction_jax.flop_count): every matmul where it runs, backward and
rematerialised forwards included, scan bodies times their length, plus each attention-kernel call priced by
the blocks it visits. Model FLOPs are train.metrics.model_flops_per_step (the training log's MFU numerator):
6 * params * tokens with the vision tower per frame, plus causal attention at half and the vision attention
(training = 3x forward), over the tokens a sample really has (video tokens + `text_tokens`), so padding,
remat and masked attention blocks show up as the executed / model ratio.

Exit status: 0 fits, 3 does not fit, 2 a usage error (bad topology, mesh, config).
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
import math
import re
import sys
import time
from typing import Optional

import jax
from jax.experimental import topologies

from configs import loader
from llavaction_jax import argparsing, cli, flop_count
from llavaction_jax import sharding as shd
from llavaction_jax import slices as slices_lib
from llavaction_jax.cli import UserError
from llavaction_jax.input.batching import pad_length
from llavaction_jax.input.schema import batch_schema
from llavaction_jax.model import attention as attn_lib
from llavaction_jax.model import num_video_tokens
from llavaction_jax.train import loop, metrics as metrics_lib, state as state_lib, step as step_lib

GiB = 1024 ** 3
# HBM per JAX device (a chip; v4/v5p megacore chips are one device each by default).
HBM_BYTES = (("v6", 32 * GiB), ("v5 lite", 16 * GiB), ("v5e", 16 * GiB), ("v5", 95 * GiB), ("v4", 32 * GiB),
             ("v3", 16 * GiB), ("v2", 8 * GiB))
# Typical EK100-MQA text per sample (system prompt, time instruction, question with 5 options, answer).
DEFAULT_TEXT_TOKENS = 160
# Matmuls per (query block, key block) pair in each splash kernel: fwd QK^T + PV; dq: S, dP, dQ;
# dkv: S, dP, dV, dK; a fused backward does both (dq folded into dkv).
_KERNEL_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4, "fused_bwd": 5}


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
    flops_per_device: Optional[float]   # XLA's own count of the compiled step (loop bodies once, no kernels)
    model_flops: float                  # 6 * params * tokens + attention, over the sample's real tokens
    compile_s: float
    required_bytes: Optional[int] = None    # what the compiler asked for when it refused (DOES NOT FIT)
    executed_flops: Optional[float] = None  # whole step, all devices (see the module docstring)
    kernel_flops: Optional[float] = None    # the part of executed_flops inside attention kernels
    sample_tokens: int = 0
    flops_seq_len: int = 0                  # the padded length the executed FLOPs are counted at
    peak_flops_per_device: Optional[float] = None

    @property
    def flops_ratio(self) -> Optional[float]:
        return self.executed_flops / self.model_flops if self.executed_flops and self.model_flops else None

    @property
    def ideal_step_s(self) -> Optional[float]:
        if not self.executed_flops or not self.peak_flops_per_device:
            return None
        return self.executed_flops / (self.num_devices * self.peak_flops_per_device)

    @property
    def headroom(self) -> Optional[float]:
        """Free fraction of HBM left by one step (negative when it does not fit)."""
        if not self.hbm_bytes:
            return None
        used = self.total_bytes if self.required_bytes is None else self.required_bytes
        return 1.0 - used / self.hbm_bytes

    def verdict(self) -> str:
        return "unknown HBM size" if self.fits is None else ("FITS" if self.fits else "DOES NOT FIT")

    def lines(self):
        g = lambda b: f"{b / GiB:8.2f} GiB"
        hbm = g(self.hbm_bytes) if self.hbm_bytes else "unknown"
        out = [
            f"topology {self.topology}: {self.num_devices} x {self.device_kind}, mesh {self.mesh}",
            f"batch {self.global_batch} (grad accumulation {self.grad_accum_steps}: micro-batch "
            f"{self.global_batch // max(self.grad_accum_steps, 1)}), seq_len {self.seq_len}, {self.num_frames} "
            f"frames, {self.num_params / 1e6:,.2f} M params",
        ]
        if self.required_bytes is not None:
            out += [f"per-device memory: the TPU compiler needs {g(self.required_bytes).strip()} of {hbm.strip()} "
                    f"HBM -> DOES NOT FIT"]
        else:
            out += [
                "per-device memory:",
                f"  arguments   {g(self.argument_bytes)}  (params + optimizer state + batch)",
                f"  outputs     {g(self.output_bytes)}  (aliased with donated arguments: {g(self.alias_bytes)})",
                f"  temporaries {g(self.temp_bytes)}",
                f"  code        {g(self.code_bytes)}",
                f"  total       {g(self.total_bytes)}  of {hbm} HBM -> {self.verdict()}"
                + (f" ({self.headroom:.0%} headroom)" if self.headroom is not None else ""),
            ]
        out.append(f"model FLOPs per step (6 * params * tokens + attention, {self.sample_tokens} tokens/sample): "
                   f"{self.model_flops:.4g}")
        if self.executed_flops:
            out.append(f"executed FLOPs per step at seq_len {self.flops_seq_len}: {self.executed_flops:.4g} (attention "
                       f"kernels {self.kernel_flops:.3g}); executed / model = {self.flops_ratio:.3f}")
            if self.ideal_step_s:
                out.append(f"ideal step time at peak ({self.peak_flops_per_device / 1e12:.0f} TFLOP/s per device): "
                           f"{self.ideal_step_s:.3f} s; implied MFU at best {1 / self.flops_ratio:.1%}")
        else:
            out.append("executed FLOPs per step: n/a")
        out.append(f"compile time {self.compile_s:.1f} s")
        return out


def topology_devices(topology: str, num_slices: int = 1):
    """Devices of a TPU topology like 'v5e:2x2' or 'v5p:2x2x2' (libtpu; no TPU needed)."""
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    try:
        topo = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
    except Exception as e:  # libtpu raises RuntimeError/ValueError with its own text
        raise ValueError(f"cannot describe TPU topology {topology!r} (is libtpu installed?): {e}") from e
    return list(topo.devices)


_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4, "P": 1024 ** 5}


def required_bytes_from_error(message: str) -> Optional[int]:
    """The bytes a RESOURCE_EXHAUSTED compile asked for ('... required ... (5.21T) exceeds ... (15.75G)' or
    'Used 1.76T of 95.74G hbm'): the first size in the message."""
    for m in re.finditer(r"\(([\d.]+)([KMGTP])\)|Used ([\d.]+)([KMGTP])", message):
        value, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        return int(float(value) * _UNITS[unit])
    return None


def _abstract_batch(config, mesh, batch_size, seq_len):
    shardings = step_lib.batch_shardings(mesh, config)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[k])
            for k, (shape, dtype) in batch_schema(config).shapes(batch_size, seq_len).items()}


def _compile(config, mesh, batch_size, seq_len):
    """(setup, compiled or None, error message or None, seconds)."""
    setup = state_lib.build_setup(config, mesh)
    batch = _abstract_batch(config, mesh, batch_size, seq_len)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_shardings = {k: v.sharding for k, v in batch.items()}
    fn = jax.jit(step_lib.make_train_step(setup, config), in_shardings=(setup.shardings, batch_shardings),
                 out_shardings=(setup.shardings, replicated), donate_argnums=(0,))
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = fn.lower(setup.abstract_state, batch)
        try:
            compiled = lowered.compile()
        except Exception as e:   # jax.errors.JaxRuntimeError; only out-of-memory is a verdict
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return setup, None, str(e), time.perf_counter() - t0
    return setup, compiled, None, time.perf_counter() - t0


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _attention_call_flops(kind, batch, heads, length, head_dim, causal, block):
    """FLOPs of one splash call: the key blocks it visits for each query block (tiles as model/attention.py
    splash_block chooses them, the length padded to the tile)."""
    b = attn_lib.splash_block(length, block)
    nb = -(-length // b)
    visited = nb * (nb + 1) / 2 if causal else nb * nb
    return 2.0 * _KERNEL_MATMULS[kind] * batch * heads * visited * b * b * head_dim


def kernel_flops(kernel_calls, decoder_len, block):
    """FLOPs of the attention-kernel calls flop_count found: each priced from its own (per-shard) query shape
    [(B,) N, T, D] (its first floating-point operand); the decoder's calls (T = its padded length) are causal, the vision tower's are not."""
    tile = attn_lib.splash_block(decoder_len, block)
    causal_len = -(-decoder_len // tile) * tile
    total = 0.0
    for (name, shapes), calls in kernel_calls.items():
        kind = flop_count.attention_kernel_kind(name)
        if kind is None:
            raise ValueError(f"no FLOP model for Pallas kernel {name!r}")
        q = next(s for s in shapes if len(s) >= 3)
        batch = math.prod(q[:-3]) if len(q) > 3 else 1
        heads, length, head_dim = q[-3:]
        total += calls * _attention_call_flops(kind, batch, heads, length, head_dim, length == causal_len, block)
    return total


def executed_flops(config, devices, seq_len):
    """(executed FLOPs of one whole step over all devices, the attention-kernel part).

    The real step (scanned layers, every micro-batch) is traced at `seq_len` and its jaxpr counted by
    llavaction_jax.flop_count: matmuls where they run (backward and rematerialised forwards included, a
    shard_map body once per device), plus the attention kernels priced by their calls. Nothing is compiled.
    """
    mesh = shd.make_mesh(config.mesh, devices=devices)
    setup = state_lib.build_setup(config, mesh)
    batch = _abstract_batch(config, mesh, int(config.data.global_batch_size), seq_len)
    with jax.set_mesh(mesh):
        count = flop_count.count_flops(step_lib.make_train_step(setup, config), setup.abstract_state, batch)
    kernels = kernel_flops(count.kernel_calls, seq_len, int(attn_lib.SPLASH_BLOCK))
    return count.matmul_flops + kernels, kernels


def compile_train_step(config, devices, topology: str = "", *, count_flops: bool = True,
                       text_tokens: int = DEFAULT_TEXT_TOKENS) -> AotReport:
    """AOT-compile the train step of `config` for `devices`; memory verdict, FLOPs and the ideal step time."""
    mesh = shd.make_mesh(config.mesh, devices=devices)
    loop.check_batch_layout(config, mesh)
    batch_size, seq_len = int(config.data.global_batch_size), int(config.data.max_length)
    frames = int(config.data.num_frames)
    video = num_video_tokens(config.model, frames)
    if video >= seq_len:
        raise ValueError(f"config.data.max_length={seq_len} leaves no room for the {video} video tokens of "
                         f"{frames} frames")
    setup, compiled, error, compile_s = _compile(config, mesh, batch_size, seq_len)
    kind = devices[0].device_kind
    hbm = hbm_bytes(kind)
    num_params = metrics_lib.count_params(setup.abstract_state["params"])
    sample_tokens = min(video + int(text_tokens), seq_len)
    mem_fields = dict(argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=0, code_bytes=0, total_bytes=0)
    required, flops = None, None
    if compiled is None:
        required = required_bytes_from_error(error) or 0
        fits = False
    else:
        mem = compiled.memory_analysis()
        total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                 + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
        mem_fields = dict(argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
                          alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
                          code_bytes=mem.generated_code_size_in_bytes, total_bytes=total)
        fits = None if hbm is None else total <= hbm
        flops = _xla_flops(compiled) or None
    # FLOPs at the length a typical sample is padded to (memory above at max_length, the worst case).
    flops_len = pad_length(sample_tokens, config.data.length_buckets, seq_len)
    executed, kernels = executed_flops(config, devices, flops_len) if count_flops else (None, None)
    return AotReport(
        topology=topology, device_kind=kind, num_devices=len(devices), mesh=dict(mesh.shape),
        global_batch=batch_size, grad_accum_steps=int(config.train.grad_accum_steps), seq_len=seq_len,
        num_frames=frames, num_params=num_params, hbm_bytes=hbm, fits=fits, flops_per_device=flops,
        model_flops=metrics_lib.model_flops_per_step(config, setup.abstract_state["params"], sample_tokens), compile_s=compile_s,
        required_bytes=required, executed_flops=executed, kernel_flops=kernels, sample_tokens=sample_tokens,
        flops_seq_len=flops_len if count_flops else 0,
        peak_flops_per_device=metrics_lib.peak_flops_per_device(kind), **mem_fields)


def build_parser() -> argparsing.ArgumentParser:
    p = argparsing.ArgumentParser(prog="llavaction-aot", description=__doc__, epilog=loader.keys_help())
    p.add_argument("--config", required=True, metavar="FILE[:ARG]",
                   help="config file with get_config([ARG]); --config.<key>=<value> overrides any key listed below")
    p.add_argument("--topology", default="", help="TPU topology, e.g. v5e:2x2, v5p:2x2x2, v6e:4x4 "
                   "(default: config.aot.topology)")
    p.add_argument("--num_slices", type=int, default=1, help="number of slices (multi-slice / DCN)")
    p.add_argument("--json_out", default="", help="also write the report as JSON here")
    p.add_argument("--noflops", dest="flops", action="store_false",
                   help="memory only: skip the executed-FLOP count (from the traced step; no extra compile)")
    p.add_argument("--text_tokens", type=int, default=DEFAULT_TEXT_TOKENS,
                   help="text tokens of a typical sample, for the model FLOPs")
    return p


def aot_main(argv=None) -> int:
    rest, overrides = loader.split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    config = loader.load(args.config, overrides)
    topology = args.topology or config.aot.topology
    if not topology:
        raise UserError("no topology", "--topology / config.aot.topology", "e.g. v5p:2x2x2")
    slices = args.num_slices
    if slices < 1:
        raise UserError(f"--num_slices {slices}", "--num_slices", "a positive number of slices")
    config = slices_lib.spread_over_slices(config, slices)
    name = topology if slices == 1 else f"{slices} x {topology}"
    try:
        devices = topology_devices(topology, slices)
        report = compile_train_step(config, devices, name, count_flops=args.flops,
                                    text_tokens=args.text_tokens)
    except ValueError as e:
        raise UserError(str(e), f"--topology {name}") from None
    for line in report.lines():
        print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(dataclasses.asdict(report), flops_ratio=report.flops_ratio,
                           ideal_step_s=report.ideal_step_s, headroom=report.headroom), f, indent=1)
    return 0 if report.fits is not False else 3


def main(argv=None) -> int:
    """The console script / `python -m` entry: the exit status under llavaction_jax.cli's convention."""
    return cli.run(aot_main, argv)


if __name__ == "__main__":
    sys.exit(main())
