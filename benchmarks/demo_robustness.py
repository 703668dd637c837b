"""The demo recipe over several seeds and XLA:CPU settings: per protocol the min / median / max accuracy and wall time.

Each run is `python -m llavaction_demo --workdir DIR --seed S` in its own process (XLA reads XLA_FLAGS once per
process, so a variant's flags need a fresh one). A variant is NAME or NAME=XLA_FLAGS; the flags perturb the float32
rounding the way another CPU would: `--xla_cpu_max_isa=AVX` drops FMA, so every multiply-add in XLA's codegen
rounds twice (capping at AVX2 changes nothing on an AVX-512 machine: XLA already emits 256-bit code there).

    python benchmarks/demo_robustness.py --seeds 0,1,2,3,4 --variants default,no_fma=--xla_cpu_max_isa=AVX:0 \\
        --workdir runs/robustness --out runs/robustness/robustness.json

A variant's optional ":S+S" suffix limits it to those seeds (a full demo run takes ~9.5 minutes on 2 cores).
`--merge A.json B.json ...` prints the table of runs made by several invocations (e.g. halves run side by side).
The load average is recorded before and after every run: wall times from a loaded machine are not the demo's own.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROTOCOLS = ("generate", "letters", "strict")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f") if x in flags]
    except OSError:
        pass
    return []


def parse_variants(text: str, seeds: list) -> list:
    """"default,no_fma=--xla_cpu_max_isa=AVX:0" -> [(name, xla_flags, seeds), ...]."""
    out = []
    for item in [x for x in text.split(",") if x]:
        name, _, flags = item.partition("=")
        only = seeds
        if ":" in flags:
            flags, _, picked = flags.rpartition(":")
            only = [int(s) for s in picked.split("+")]
        out.append((name, flags, only))
    return out


def run_one(args, name: str, flags: str, seed: int) -> dict:
    workdir = os.path.join(args.workdir, f"{name}_seed{seed}")
    if os.path.isdir(workdir):
        raise SystemExit(f"error: {workdir} exists; use a fresh --workdir")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), flags) if x)
    cmd = [sys.executable, "-m", "llavaction_demo", "--workdir", workdir, "--seed", str(seed),
           "--config", args.config] + (["--skip_hf"] if args.skip_hf else [])
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    load_after = os.getloadavg()
    with open(os.path.join(workdir, "demo_stdout.log"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    summary_path = os.path.join(workdir, "demo_summary.json")
    if proc.returncode not in (0, 3) or not os.path.exists(summary_path):
        raise SystemExit(f"error: demo run {name} seed {seed} exited {proc.returncode}; see {workdir}/demo_stdout.log")
    with open(summary_path) as f:
        s = json.load(f)
    row = {"variant": name, "xla_flags": flags, "seed": seed, "exit_code": proc.returncode,
           "wall_time_s": s["wall_time_s"], "process_wall_s": elapsed, "stages_s": s["stages_s"],
           "load_before": load_before, "load_after": load_after, "target_met": s["target_met"],
           "process_cpu_s": s["process_cpu_s"], "binding_final_loss": s["train"]["binding_warmup"]["final_loss"] if s["train"]["binding_warmup"] else None}
    for m in PROTOCOLS:
        row[m] = s[f"accuracy_{m}"]
    print(f"{name:>10} seed {seed}: " + " ".join(f"{m} {row[m]:.1%}" for m in PROTOCOLS)
          + f"  wall {row['wall_time_s']:.0f}s  exit {proc.returncode}  load {load_before[0]:.1f}->{load_after[0]:.1f}",
          flush=True)
    return row


def spread(rows: list, key: str) -> tuple:
    values = [r[key] for r in rows]
    return min(values), statistics.median(values), max(values)


def table(rows: list) -> str:
    lines = ["| variant | runs | " + " | ".join(f"{m} min / median / max" for m in PROTOCOLS)
             + " | demo wall s min / median / max | process CPU s min / max |",
             "|---|---|" + "---|" * (len(PROTOCOLS) + 2)]
    for name in dict.fromkeys(r["variant"] for r in rows):
        sub = [r for r in rows if r["variant"] == name]
        cells = [" / ".join(f"{v:.1%}" for v in spread(sub, m)) for m in PROTOCOLS]
        walls = " / ".join(f"{v:.0f}" for v in spread(sub, "wall_time_s"))
        cpu = [r["process_cpu_s"] for r in sub if "process_cpu_s" in r]
        cpu_cell = f"{min(cpu):.0f} / {max(cpu):.0f}" if cpu else "n/a"
        seeds = ",".join(str(r["seed"]) for r in sub)
        lines.append(f"| {name} (seeds {seeds}) | {len(sub)} | " + " | ".join(cells) + f" | {walls} | {cpu_cell} |")
    return "\n".join(lines)


def summary_lines(rows: list) -> list:
    worst = {m: min(r[m] for r in rows) for m in PROTOCOLS}
    return [table(rows), "", "worst run per protocol: " + ", ".join(f"{m} {v:.1%}" for m, v in worst.items())
            + f"; all runs >= 85% on every protocol: {min(worst.values()) >= 0.85}; demo wall "
            f"{min(r['wall_time_s'] for r in rows):.0f}-{max(r['wall_time_s'] for r in rows):.0f}s; load average "
            f"(1 min) at the starts {min(r['load_before'][0] for r in rows):.1f}-"
            f"{max(r['load_before'][0] for r in rows):.1f}"]


def merge(paths: list, out: str = None):
    headers, rows = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        rows += data.pop("runs")
        headers.append(data)
    cpus = sorted({h["cpu_model"] for h in headers})
    print(f"CPU: {', '.join(cpus)}; {len(rows)} runs from {len(paths)} file(s)")
    print("\n".join(summary_lines(rows)))
    if out:
        with open(out, "w") as f:
            json.dump(headers[0] | {"merged_from": paths, "runs": rows}, f, indent=2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated demo seeds")
    p.add_argument("--variants", default="default", help="NAME[=XLA_FLAGS[:S+S]],... (see above)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.py"))
    p.add_argument("--workdir", help="one fresh demo workdir per run is made under it")
    p.add_argument("--out", default=None, help="JSON with every run (default: WORKDIR/robustness.json)")
    p.add_argument("--skip_hf", action="store_true", help="pass --skip_hf to the demo (wall times then omit it)")
    p.add_argument("--merge", nargs="+", default=None, help="JSONs written by earlier runs: print their joint table")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    if not args.workdir:
        p.error("--workdir is required (unless --merge)")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    os.makedirs(args.workdir, exist_ok=True)
    out = args.out or os.path.join(args.workdir, "robustness.json")
    header = {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d", time.gmtime()), "config": args.config, "skip_hf": args.skip_hf}
    print(f"CPU: {header['cpu_model']} ({', '.join(header['cpu_flags'])}; {header['cores']} cores)", flush=True)
    rows = []
    for name, flags, only in parse_variants(args.variants, seeds):
        for seed in only:
            rows.append(run_one(args, name, flags, seed))
            with open(out, "w") as f:
                json.dump(header | {"runs": rows}, f, indent=2)
    print("\n" + "\n".join(summary_lines(rows)) + f"\nwrote {out}")


if __name__ == "__main__":
    main()
