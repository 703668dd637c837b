"""Plan a run: the smallest TPU slice of a chip family that trains a config, and the mesh / micro-batch / remat for it.

llavaction-plan --config configs/llava_video_72b.py --family v5p [--max_chips 64]
    [--remat full,save_dot_except_mlp] [--max_compiles 2] [--json_out plan.json]
(or python -m llavaction_jax.plan ...)

The search runs over the family's Cloud TPU slices (llavaction_jax.slices, smallest first), every mesh the slice's
torus can hold (data 1, fsdp x tensor with tensor dividing the KV heads), every accumulation count that keeps the
global batch and whole samples per batch shard, and the remat policies given. A cheap estimate prunes first: the
state (f32 params + Adam moments + f32 gradients, sharded over fsdp x tensor) plus the activations each remat
policy keeps for one micro-batch, and the ideal step time from model FLOPs times the forward passes the policy
recomputes. Only candidates the estimate puts within HBM are AOT-compiled (llavaction_jax.aot), best estimated
step time first, at most --max_compiles per slice; the first slice with a compile that FITS with at least
--min_headroom free HBM wins, and among its compiled fits the lowest ideal step time. The table lists every
candidate: its estimate, and the compiler's verdict where it was compiled. The winner is printed as a config
TOPOLOGIES entry (accelerator type: topology, mesh, accumulation, model overrides).

Exit status: 0 a slice fits, 3 none does, 2 a usage error.
"""
import dataclasses
import json
import sys
from typing import Optional

from llavaction_jax import aot  # first: it sets the libtpu environment defaults before JAX loads
from flax import nnx

from configs import loader
from llavaction_jax import argparsing, cli

from llavaction_jax import sharding as shd, slices as slices_lib
from llavaction_jax.cli import UserError
from llavaction_jax.model import build as model_build, num_video_tokens
from llavaction_jax.model.remat import POLICIES
from llavaction_jax.train import metrics as metrics_lib

GiB = 1024 ** 3
# A device kind per family, for the HBM (aot.HBM_BYTES) and peak FLOP/s (train.metrics.PEAK_FLOPS) tables.
DEVICE_KIND = {"v4": "TPU v4", "v5p": "TPU v5p", "v5e": "TPU v5e", "v6e": "TPU v6e"}
DEFAULT_REMAT = ("save_dot_except_mlp", "full")
# The estimate's two scales, fitted (least squares, no intercept) to AOT compiles of the shipped configs on v5p
# and v5e (7B on 8 and 64 chips, 72B on 64 and 512, 0.5B on 4: each within 15% of the compiler's total):
# bytes of state per parameter per shard (f32 params, Adam mu / nu, f32 gradients, the update and the new
# params before donation reuses them) and XLA's temporaries per byte of saved activations.
STATE_BYTES_PER_PARAM = 32.0
ACTIVATION_SCALE = 1.4


@dataclasses.dataclass
class Candidate:
    slice: slices_lib.Slice
    mesh: dict
    accum: int
    remat: str
    estimate_bytes: float
    estimate_step_s: Optional[float]
    verdict: str = "not compiled"
    used_bytes: Optional[int] = None
    headroom: Optional[float] = None
    ideal_step_s: Optional[float] = None
    flops_ratio: Optional[float] = None

    def row(self, global_batch: int, hbm: int) -> str:
        micro = global_batch // self.accum
        used = f"{self.used_bytes / GiB:.1f}" if self.used_bytes is not None else "-"
        head = f"{self.headroom:.0%}" if self.headroom is not None else "-"
        ideal = self.ideal_step_s or self.estimate_step_s
        return (f"| {self.slice.accelerator_type} ({self.slice.chips} chips) | fsdp {self.mesh['fsdp']} x tensor "
                f"{self.mesh['tensor']} | {self.accum} x {micro} | {self.remat} | {self.estimate_bytes / GiB:.1f} | "
                f"{used} / {hbm / GiB:.0f} | {head} | {self.verdict} | "
                f"{'%.2f' % ideal if ideal else 'n/a'}{'' if self.ideal_step_s else ' (est.)'} |")

    def topology_entry(self) -> str:
        return (f'"{self.slice.accelerator_type}": ("{self.slice.topology}", dict(data={self.mesh["data"]}, '
                f'fsdp={self.mesh["fsdp"]}, tensor={self.mesh["tensor"]}), {self.accum}, '
                f'dict(remat_policy="{self.remat}")),')


def _layer_matmuls(width, heads, kv_heads, head_dim, mlp):
    """Forward matmul MACs per token of one layer, by part: q/k/v, attention output, MLP in (gate/up), MLP out."""
    return dict(qkv=width * (heads + 2 * kv_heads) * head_dim, out=heads * head_dim * width,
                mlp_in=2 * width * mlp, mlp_out=mlp * width)


# Parts of a layer's forward each policy runs again in the backward pass (model/remat.py); the attention
# kernel itself is recomputed where its outputs are not kept.
_RECOMPUTED = {"full": ("qkv", "out", "mlp_in", "mlp_out", "attention"), "save_qkv_proj": ("out", "mlp_in", "mlp_out",
               "attention"), "save_dot_except_mlp": ("mlp_in",), "save_all_named": (), "none": ()}


def _saved_per_token(remat, width, heads, kv_heads, head_dim, mlp, tensor):
    """Activation bytes (bf16) one layer keeps per token for the backward pass under `remat`."""
    qkv = (heads + 2 * kv_heads) * head_dim / tensor
    kept = {"full": width, "save_qkv_proj": width + qkv, "save_dot_except_mlp": 2 * width + qkv + heads * head_dim / tensor,
            "save_all_named": 3 * width + qkv + heads * head_dim / tensor + 3 * mlp / tensor}
    return 2.0 * kept.get(remat, kept["save_all_named"] + 2 * width)


def estimate(config, num_params: int, sample_tokens: int, remat: str, mesh: dict, accum: int,
             peak: Optional[float], chips: int, model_flops: float):
    """(bytes per chip, ideal step seconds) of one candidate, without compiling."""
    t, v = config.model.text, config.model.vision
    vision_remat = str(config.model.vision_remat_policy) or remat
    shards = mesh["fsdp"] * mesh["tensor"]
    state = STATE_BYTES_PER_PARAM * num_params / shards
    samples = int(config.data.global_batch_size) // accum // (mesh["data"] * mesh["fsdp"])   # per batch shard
    seq = int(config.data.max_length)
    frames = int(config.data.num_frames)
    patches = (int(v.image_size) // int(v.patch_size)) ** 2
    decoder = int(t.num_layers) * seq * _saved_per_token(remat, t.hidden_size, t.num_heads, t.num_kv_heads,
                                                         t.head_dim, t.intermediate_size, mesh["tensor"])
    vis_head_dim = int(v.hidden_size) // int(v.num_heads)
    vision = int(v.num_layers) * frames * patches * _saved_per_token(
        vision_remat, v.hidden_size, v.num_heads, v.num_heads, vis_head_dim, v.intermediate_size, mesh["tensor"])
    # One layer's full forward rerun at a time, the per-layer weights gathered (bf16, double-buffered).
    working = seq * 2.0 * (4 * t.hidden_size + 3 * t.intermediate_size / mesh["tensor"])
    layer_weights = 2 * 2.0 * sum(_layer_matmuls(t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim,
                                                 t.intermediate_size).values()) / mesh["tensor"]
    batch = samples * accum * (frames * int(v.image_size) ** 2 * 3 + 16 * seq)       # uint8 frames + int32 text
    used = state + ACTIVATION_SCALE * (samples * (decoder + vision + working) + layer_weights) + batch
    # Executed FLOPs: model FLOPs plus the forward parts the policy reruns (a forward is 1/3 of training).
    parts = _layer_matmuls(t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.intermediate_size)
    attention = 2.0 * sample_tokens * t.num_heads * t.head_dim / 2
    per_token = sum(parts.values()) + attention
    rerun = sum(parts[p] for p in _RECOMPUTED.get(remat, ()) if p in parts) + \
        (attention if "attention" in _RECOMPUTED.get(remat, ()) else 0.0)
    executed = model_flops * (1.0 + rerun / per_token / 3.0)
    return used, (executed / (chips * peak) if peak else None)


def candidates(config, family: str, max_chips: int, remats, sample_tokens: int, peak_of):
    """Every (slice, mesh, accum, remat) of the search, with its estimate; slices smallest first."""
    params = nnx.state(nnx.eval_shape(lambda: model_build.new_model(config.model)), nnx.Param).to_pure_dict()
    num_params = metrics_lib.count_params(params)
    model_flops = metrics_lib.model_flops_per_step(config, params, sample_tokens)
    batch = int(config.data.global_batch_size)
    kv = int(config.model.text.num_kv_heads)
    out = []
    for sl in slices_lib.family_slices(family):
        if max_chips and sl.chips > max_chips:
            break
        dims = tuple(int(x) for x in sl.shape.split("x") if int(x) > 1) or (1,)
        holdable = shd.holdable_sizes(dims)
        peak = peak_of(sl.family)
        for tensor in (t for t in holdable if t <= 8 and kv % t == 0 and sl.chips % t == 0):
            fsdp = sl.chips // tensor
            if fsdp not in holdable:
                continue
            mesh = dict(data=1, fsdp=fsdp, tensor=tensor)
            for accum in (a for a in range(1, batch + 1) if batch % a == 0 and (batch // a) % fsdp == 0):
                for remat in remats:
                    used, step_s = estimate(config, num_params, sample_tokens, remat, mesh, accum, peak,
                                            sl.chips, model_flops)
                    out.append(Candidate(sl, mesh, accum, remat, used, step_s))
    return out


def _configured(config, cand: Candidate):
    c = config.copy_and_resolve_references()
    c.mesh.update(**cand.mesh)
    c.train.grad_accum_steps = cand.accum
    c.model.remat_policy = cand.remat
    c.aot.topology, c.aot.accelerator_type = cand.slice.topology, cand.slice.accelerator_type
    return c


def search(config, family: str, *, max_chips: int = 0, remats=DEFAULT_REMAT, max_compiles: int = 2,
           min_headroom: float = 0.10, prune_above: float = 1.0, count_flops: bool = True, text_tokens: int = aot.DEFAULT_TEXT_TOKENS,
           compile_fn=None, log=print):
    """(all candidates, the winner or None). Candidates whose estimate exceeds `prune_above` x HBM are not
    compiled. `compile_fn(config, topology) -> AotReport` (default: the AOT compile of the train step on
    libtpu's devices for the topology)."""
    peak_of = lambda fam: metrics_lib.peak_flops_per_device(DEVICE_KIND[fam])          # noqa: E731
    video = num_video_tokens(config.model, int(config.data.num_frames))
    sample_tokens = min(video + int(text_tokens), int(config.data.max_length))
    compile_fn = compile_fn or (lambda c, topo: aot.compile_train_step(
        c, aot.topology_devices(topo), topo, count_flops=count_flops, text_tokens=text_tokens))
    every = candidates(config, family, max_chips, remats, sample_tokens, peak_of)
    winner = None
    for sl in dict.fromkeys(c.slice for c in every):
        on_slice = [c for c in every if c.slice == sl]
        hbm = aot.hbm_bytes(DEVICE_KIND[sl.family])
        # Within HBM by the estimate; the best estimated step first, then less tensor parallelism (fewer
        # collectives), then fewer micro-batches.
        viable = sorted((c for c in on_slice if c.estimate_bytes <= prune_above * hbm),
                        key=lambda c: (c.estimate_step_s or 0.0, c.mesh["tensor"], c.accum))
        for c in on_slice:
            if c.estimate_bytes > prune_above * hbm:
                c.verdict = "pruned: estimate over HBM"
        fits = []
        for c in viable[:max_compiles]:
            log(f"compiling {sl.accelerator_type} fsdp {c.mesh['fsdp']} x tensor {c.mesh['tensor']}, accumulation "
                f"{c.accum}, remat {c.remat} (estimate {c.estimate_bytes / GiB:.1f} GiB)")
            report = compile_fn(_configured(config, c), sl.topology)
            c.used_bytes = report.total_bytes if report.required_bytes is None else report.required_bytes
            c.headroom, c.ideal_step_s, c.flops_ratio = report.headroom, report.ideal_step_s, report.flops_ratio
            if report.fits and report.headroom >= min_headroom:
                c.verdict = "FITS"
                fits.append(c)
            else:
                c.verdict = "FITS, under headroom" if report.fits else "DOES NOT FIT"
        for c in viable[max_compiles:]:
            c.verdict = "not compiled (slower estimate)"
        if fits:
            winner = min(fits, key=lambda c: (c.ideal_step_s or c.estimate_step_s or 0.0, c.mesh["tensor"]))
            break
    return every, winner


def table(config, every, winner) -> list:
    tried = [c for c in every if c.verdict != "pruned: estimate over HBM"]
    pruned = len(every) - len(tried)
    hbm = lambda c: aot.hbm_bytes(DEVICE_KIND[c.slice.family])       # noqa: E731
    lines = ["| slice | mesh | accum x micro | remat | estimate GiB | compiled GiB / HBM | headroom | verdict | "
             "ideal step s |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [c.row(int(config.data.global_batch_size), hbm(c)) + (" **winner**" if c is winner else "")
              for c in tried]
    lines.append(f"({pruned} candidates pruned by the estimate, {sum(c.verdict.startswith('not compiled') for c in tried)} "
                 f"within HBM left uncompiled)")
    if winner:
        lines += ["", f"smallest slice: {winner.slice.accelerator_type} ({winner.slice.topology}, {winner.slice.chips} "
                  f"chips); as a config TOPOLOGIES entry:", "    " + winner.topology_entry()]
    else:
        lines.append("no slice in the search fits")
    return lines


def build_parser() -> argparsing.ArgumentParser:
    p = argparsing.ArgumentParser(prog="llavaction-plan", description=__doc__, epilog=loader.keys_help())
    p.add_argument("--config", required=True, metavar="FILE[:ARG]",
                   help="config file with get_config([ARG]); --config.<key>=<value> overrides any key listed below")
    p.add_argument("--family", default="v5p", choices=sorted(DEVICE_KIND), help="TPU chip family")
    p.add_argument("--max_chips", type=int, default=0, help="largest slice to try, in chips (0: the family's largest)")
    p.add_argument("--remat", default=",".join(DEFAULT_REMAT), help="remat policies to try (comma separated)")
    p.add_argument("--max_compiles", type=int, default=2, help="AOT compiles per slice, best estimate first")
    p.add_argument("--min_headroom", type=float, default=0.10, help="free HBM fraction a fit must leave")
    p.add_argument("--prune_above", type=float, default=1.0,
                   help="compile only candidates whose estimate is at most this fraction of HBM")
    p.add_argument("--noflops", dest="flops", action="store_false",
                   help="skip the executed-FLOP count of compiled candidates (no ideal step time)")
    p.add_argument("--json_out", default="", help="also write the tried candidates as JSON here")
    return p


def plan_main(argv=None) -> int:
    rest, overrides = loader.split_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    config = loader.load(args.config, overrides)
    remats = tuple(r for r in args.remat.split(",") if r)
    bad = [r for r in remats if r not in POLICIES]
    if bad or not remats:
        raise UserError(f"--remat {args.remat!r}", "--remat", f"comma-separated policies from {sorted(POLICIES)}")
    try:
        every, winner = search(config, args.family, max_chips=args.max_chips, remats=remats,
                               max_compiles=args.max_compiles, min_headroom=args.min_headroom,
                               prune_above=args.prune_above, count_flops=args.flops)
    except ValueError as e:
        raise UserError(str(e), f"--family {args.family}") from None
    for line in table(config, every, winner):
        print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([dict(dataclasses.asdict(c), slice=c.slice.accelerator_type, winner=c is winner)
                       for c in every if c.verdict != "pruned: estimate over HBM"], f, indent=1)
    return 0 if winner else 3


def main(argv=None) -> int:
    """The console script / `python -m` entry: the exit status under llavaction_jax.cli's convention."""
    return cli.run(plan_main, argv)


if __name__ == "__main__":
    sys.exit(main())
