"""Which XLA:CPU settings change the demo model's float32 training results, bit for bit.

The demo's accuracies differ between CPU models at the same commit and seed (float32 sums rounded in another order,
amplified by training). This runs the demo's model (configs/demo.py) for a few training steps on fixed synthetic
batches, once per setting, each in a fresh process (XLA reads XLA_FLAGS once per process, and the CPU affinity
sets the size of its thread pool), and prints every setting's loss trajectory and a SHA-256 of its final
parameters against the default's:

    python benchmarks/cpu_reproducibility.py --steps 20

A setting that gives the default's bits is one this machine is insensitive to; one that differs is a source of
cross-machine differences (another machine has another vector width or core count). Settings:
NAME=XLA_FLAGS[@CPUS], e.g. "one_core=@0" (taskset to CPU 0) or "no_fma=--xla_cpu_max_isa=AVX".
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import demo  # noqa: E402
from llavaction_jax.train.loop import train  # noqa: E402

CONSISTENT = "--xla_cpu_use_xnnpack=false --xla_cpu_enable_platform_dependent_math=false"
DEFAULT_SETTINGS = ("default=,one_core=@0,no_fma=--xla_cpu_max_isa=AVX,avx2=--xla_cpu_max_isa=AVX2,"
                    "eigen_single_thread=--xla_cpu_multi_thread_eigen=false,"
                    "eigen_single_thread_one_core=--xla_cpu_multi_thread_eigen=false@0,"
                    f"no_xnnpack=--xla_cpu_use_xnnpack=false,no_xnnpack_one_core=--xla_cpu_use_xnnpack=false@0,"
                    f"consistent={CONSISTENT},consistent_one_core={CONSISTENT}@0,"
                    f"consistent_avx2={CONSISTENT} --xla_cpu_max_isa=AVX2")


def child(steps: int, workdir: str) -> dict:
    """Train configs/demo.py's model for `steps` steps on synthetic batches; the losses and a params hash."""
    config = demo.get_config()
    config.train.num_steps = steps
    config.train.synthetic_samples = 64
    config.train.log_every = 1
    config.train.progress_bar = False
    config.data.max_length = 176
    config.data.length_buckets = (176,)
    summary = train(config, workdir)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(summary["state"]["params"]):
        digest.update(np.asarray(leaf).tobytes())
    return {"losses": [float(x) for x in summary["losses"]], "params_sha256": digest.hexdigest(),
            "devices": jax.device_count(), "cpus": len(os.sched_getaffinity(0))}


def parse_settings(text: str) -> list:
    out = []
    for item in [x for x in text.split(",") if x]:
        name, _, rest = item.partition("=")
        flags, _, cpus = rest.partition("@")
        out.append((name, flags, cpus))
    return out


def run_setting(name: str, flags: str, cpus: str, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), flags) if x)
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(steps), "--workdir", workdir]
        if cpus:
            cmd = ["taskset", "-c", cpus] + cmd
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: setting {name!r} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return dict(json.loads(line[len("RESULT "):]), name=name, xla_flags=flags, taskset=cpus, process_s=elapsed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per setting")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="NAME=XLA_FLAGS[@CPUS],... (first = reference)")
    parser.add_argument("--out", default="", help="write the runs as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.steps, args.workdir)), flush=True)
        return 0
    runs = [run_setting(n, f, c, args.steps) for n, f, c in parse_settings(args.settings)]
    ref = runs[0]
    groups = {}
    for r in runs:
        groups.setdefault(r["params_sha256"], []).append(r["name"])
    print(f"{'setting':<32} {'cpus':>4} {'final loss':>12} {'first differing step':>21} {'params':>14} "
          f"{'bit-identical group':>20} {'process s':>9}")
    for r in runs:
        diff = next((i + 1 for i, (a, b) in enumerate(zip(r["losses"], ref["losses"])) if a != b), None)
        same = r["params_sha256"] == ref["params_sha256"]
        group = list(groups).index(r["params_sha256"]) + 1
        print(f"{r['name']:<32} {r['cpus']:>4} {r['losses'][-1]:>12.8f} {str(diff or '-'):>21} "
              f"{'same bits' if same else 'DIFFERENT':>14} {group:>20} {r['process_s']:>9.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
