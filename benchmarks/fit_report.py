"""Does every shipped config fit its TPU slice? AOT-compiles each (config, slice) on this CPU host.

python benchmarks/fit_report.py [--only llavaction_7b] [--json_out fit.json]

Each entry runs `python -m llavaction_jax.aot` in its own process (libtpu compiles, no TPU needed) and the
table gives the per-chip memory against HBM, the verdict and headroom, executed / model FLOPs (see
llavaction_jax.aot), the ideal step time at the chip's peak and the MFU that bounds. Memory is compiled at
config.data.max_length (the longest row a step can get); FLOPs at the bucket a typical 64- or 16-frame
EK100-MQA sample pads to. Numbers are deterministic for given versions of jax/libtpu; nothing is timed.
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)       # configs/ and llavaction_jax/ of this checkout

from configs import validate  # noqa: E402
from llavaction_jax import cli  # noqa: E402

GiB = 1024 ** 3


def entries():
    """(config module, topology name) for every TOPOLOGIES entry of every config in configs/, in file order."""
    out = []
    for name in sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")):
        module = importlib.import_module(f"configs.{name}")
        out += [(name, arg) for arg in getattr(module, "TOPOLOGIES", {})]
    return out


def run(config, arg, extra):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "llavaction_jax.aot", "--config", f"configs/{config}.py:{arg}",
               "--json_out", out, *extra]
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode not in (0, 3) or not os.path.exists(out):
            raise SystemExit(f"{config}:{arg} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def row(config, arg, r):
    used = r["required_bytes"] if r["required_bytes"] is not None else r["total_bytes"]
    ratio = f"{r['flops_ratio']:.3f}" if r.get("flops_ratio") else "n/a"
    ideal = f"{r['ideal_step_s']:.2f}" if r.get("ideal_step_s") else "n/a"
    mfu = f"{1 / r['flops_ratio']:.0%}" if r.get("flops_ratio") else "n/a"
    return (f"| {config}:{arg} | {r['topology']} ({r['num_devices']} chips) | {r['global_batch']} = "
            f"{r['grad_accum_steps']} x {r['global_batch'] // r['grad_accum_steps']} | {r['seq_len']} | "
            f"{used / GiB:.1f} / {r['hbm_bytes'] / GiB:.0f} | {'FITS' if r['fits'] else 'DOES NOT FIT'} | "
            f"{r['headroom']:.0%} | {ratio} | {ideal} | {mfu} |")


def validate_entries(entries) -> None:
    """Every (config, slice) passes configs/validate.py before the first (minutes-long) compile starts."""
    for config, arg in entries:
        validate.validate(importlib.import_module(f"configs.{config}").get_config(arg))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run only entries whose config:slice contains this")
    p.add_argument("--json_out", default="")
    p.add_argument("--noflops", action="store_true", help="memory only (skips the FLOP count)")
    args = p.parse_args()
    extra = ["--noflops"] if args.noflops else []
    chosen = [(c, a) for c, a in entries() if not args.only or args.only in f"{c}:{a}"]
    validate_entries(chosen)
    results = {}
    print("| config:slice | topology | batch = accum x micro | seq_len | GiB per chip / HBM | verdict | "
          "headroom | executed / model FLOPs | ideal step s | MFU bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config, arg in chosen:
        r = run(config, arg, extra)
        results[f"{config}:{arg}"] = r
        print(row(config, arg, r), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(cli.run(main))
