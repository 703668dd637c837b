"""One command for whatever accelerator JAX finds: train-step MFU per attention kernel, eval questions/s with
one prefill against two, and peak memory, printed side by side.

    python benchmarks/accelerator.py                  # GPU / TPU: 7B-layer-shaped model, 16k tokens per step
    python benchmarks/accelerator.py --preset tiny    # the CPU default: the same measurements on the tiny model

Train step: the trainer's own jitted step (train/step.py: forward + supervised LM loss + action heads +
backward + AdamW) on a model whose decoder layers have Qwen2-7B's shapes (hidden 3584, MLP 18944, 28 heads,
4 kv heads, head_dim 128; --layers of them, a small SigLIP tower and vocab), one full --tokens-long row
(16k by default) per device.
Attention: xla (materialised scores) against the platform's kernel (cudnn on GPU, splash on TPU, blockwise
elsewhere). MFU = 6 * params * tokens / step time / (devices * peak), the training log's numerator
(llavaction_jax.train.metrics.train_flops_per_step).
Eval: letters + generation per batch of prompts, from one shared prefill (model.generate's
_prefill_and_generate) against the former two (a letters forward, then generate's own prefill).
Peak memory: the device's peak_bytes_in_use where the runtime reports it, else XLA's memory analysis of the
compiled step (arguments + outputs + temporaries).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax                                    # noqa: E402
import jax.numpy as jnp                       # noqa: E402
import numpy as np                            # noqa: E402
from flax import nnx                          # noqa: E402

from configs import tiny                      # noqa: E402
from llavaction_jax import sharding as shd    # noqa: E402
from llavaction_jax.model import build as model_build   # noqa: E402
from llavaction_jax.model.generate import _generate, _prefill_and_generate   # noqa: E402
from llavaction_jax.train import metrics, state as state_lib, step as step_lib, synthetic_batches   # noqa: E402
from benchmarks.eval_flops import prompt_batch   # noqa: E402

KERNEL = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}     # the platform's kernel beside xla

PRESETS = {
    # name: text sizes (hidden, mlp, heads, kv heads, head_dim), layers, tokens per step, frames, eval batch,
    #       eval new tokens, dtype
    "7b_layer": (dict(hidden_size=3584, intermediate_size=18944, num_heads=28, num_kv_heads=4, head_dim=128),
                 4, 16384, 16, 8, 32, "bfloat16"),
    "tiny": (dict(hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16),
             2, 256, 4, 2, 4, "float32"),
}


def bench_config(preset: str, layers: int, tokens: int, frames: int, attention: str):
    text, _, _, _, _, _, dtype = PRESETS[preset]
    config = tiny.get_config()
    config.model.text.update(num_layers=layers, max_position_embeddings=max(tokens, 2048), **text)
    config.model.update(attention_impl=attention, dtype=dtype, remat_policy="full" if preset != "tiny" else "none")
    config.data.update(num_frames=frames, max_length=tokens, global_batch_size=jax.device_count())
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.optim.update(schedule="constant", warmup_ratio=0.0)
    config.train.update(grad_accum_steps=1)
    return config


def full_rows(arrays: dict, vocab: int, supervised: int = 512) -> dict:
    """Synthetic rows filled to their full length with text (no padding: every position is a real token, as
    in a packed 16k row), the last `supervised` positions supervised."""
    ids, mask, labels = arrays["input_ids"].copy(), arrays["attention_mask"], arrays["labels"].copy()
    rng = np.random.default_rng(0)
    pad = mask == 0
    ids[pad] = rng.integers(4, vocab, size=int(pad.sum()))
    labels[:, -supervised:] = ids[:, -supervised:]
    return dict(arrays, input_ids=ids, attention_mask=np.ones_like(mask), labels=labels)


def peak_bytes(device) -> int:
    stats = device.memory_stats() or {}
    return int(stats.get("peak_bytes_in_use", 0))


def _analysis_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def train_step(config, steps: int) -> dict:
    """Median-free simple mean of `steps` timed steps after one compile + warm-up step."""
    mesh = shd.make_mesh(config.mesh)
    setup = state_lib.build_setup(config, mesh)
    state = state_lib.init_state(setup, config)
    arrays = full_rows(synthetic_batches.synthetic_arrays(config, int(config.data.global_batch_size),
                                                  int(config.data.max_length)), int(config.model.text.vocab_size))
    batch = next(synthetic_batches.ArrayBatchIterator(arrays, int(config.data.global_batch_size), mesh, shuffle=False))
    fn = step_lib.jit_train_step(setup, config)
    compiled = fn.lower(state, batch).compile()
    state, m = fn(state, batch)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = fn(state, batch)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t) / steps
    num_params = metrics.count_params(setup.abstract_state["params"])
    tokens = int(batch["input_ids"].size)
    device = jax.devices()[0]
    peak = metrics.peak_flops_per_device(device.device_kind)
    # The same model FLOPs as the training log and the AOT report (every row here is full: no padding).
    flops = metrics.model_flops_per_step(config, setup.abstract_state["params"], batch["input_ids"].shape[1])
    mfu = metrics.mfu(flops, step_s, jax.device_count(), peak)
    return {"step_s": step_s, "tokens": tokens, "params": num_params, "tokens_per_s": tokens / step_s,
            "mfu": mfu, "peak_bytes": peak_bytes(device) or _analysis_bytes(compiled),
            "loss": float(m["loss"])}


def eval_throughput(config, batch: int, max_new: int, repeats: int) -> dict:
    """Questions/s for letters + generation: one shared prefill against a letters forward + generate."""
    model_cfg = config.model
    model = model_build.new_model(model_cfg, seed=0)
    graphdef, state = nnx.split(model)
    ids, pix, mask = prompt_batch(model_cfg, batch, int(config.data.num_frames), text_tokens=24)
    eos, pad = jnp.asarray([-1], jnp.int32), jnp.int32(0)

    def one():
        return _prefill_and_generate(graphdef, state, ids, pix, mask, eos, pad, max_new_tokens=max_new,
                                     action_heads=True)

    def two():
        letters = _prefill_and_generate(graphdef, state, ids, pix, mask, eos, pad, max_new_tokens=0,
                                        action_heads=True)
        return letters, _generate(graphdef, state, ids, pix, mask, eos, pad, max_new_tokens=max_new)

    out = {}
    for name, fn in (("one_prefill", one), ("two_prefills", two)):
        jax.block_until_ready(fn())
        t = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(fn())
        out[name] = batch * repeats / (time.perf_counter() - t)
    out["speedup"] = out["one_prefill"] / out["two_prefills"]
    return out


def run(preset: str, layers: int = 0, tokens: int = 0, steps: int = 3, repeats: int = 3) -> dict:
    """Every measurement of this benchmark as a dict (the test runs the tiny preset through this)."""
    text, p_layers, p_tokens, frames, eval_batch, max_new, _ = PRESETS[preset]
    layers, tokens = layers or p_layers, tokens or p_tokens
    platform = jax.devices()[0].platform
    kernels = ("xla", KERNEL.get(platform, "blockwise"))
    result = {"device": jax.devices()[0].device_kind, "platform": platform, "devices": jax.device_count(),
              "preset": preset, "layers": layers, "tokens_per_step": tokens, "train": {}}
    for kernel in kernels:
        result["train"][kernel] = train_step(bench_config(preset, layers, tokens, frames, kernel), steps)
    result["eval"] = eval_throughput(bench_config(preset, layers, tokens, frames, "auto"), eval_batch, max_new,
                                     repeats)
    result["eval"].update(batch=eval_batch, max_new_tokens=max_new)
    return result


def _fmt(v, unit=""):
    if v is None:
        return "n/a"
    return f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def print_table(r: dict) -> None:
    print(f"{r['device']} ({r['platform']}, {r['devices']} device(s)), preset {r['preset']}: "
          f"{r['layers']} decoder layers, {r['tokens_per_step']} tokens per step")
    kernels = list(r["train"])
    print(f"{'train step':<22}" + "".join(f"{k:>16}" for k in kernels))
    for key, label, scale, unit in (("step_s", "step time", 1, " s"), ("tokens_per_s", "tokens/s", 1, ""),
                                    ("mfu", "MFU", 100, " %"), ("peak_bytes", "peak memory", 2 ** -30, " GiB")):
        cells = []
        for k in kernels:
            v = r["train"][k][key]
            cells.append(_fmt(None if v is None else v * scale, unit))
        print(f"{label:<22}" + "".join(f"{c:>16}" for c in cells))
    base = r["train"][kernels[0]]["step_s"]
    print(f"{'speed-up vs xla':<22}" + "".join(f"{base / r['train'][k]['step_s']:>15.2f}x" for k in kernels))
    e = r["eval"]
    print(f"eval (batch {e['batch']}, {e['max_new_tokens']} new tokens): questions/s one prefill "
          f"{e['one_prefill']:.3g}, two prefills {e['two_prefills']:.3g} ({e['speedup']:.2f}x)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "tiny" if jax.devices()[0].platform == "cpu" else "7b_layer"
    p.add_argument("--preset", choices=sorted(PRESETS), default=default)
    p.add_argument("--layers", type=int, default=0, help="decoder layers (0: the preset's)")
    p.add_argument("--tokens", type=int, default=0, help="tokens per step (0: the preset's)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)
    result = run(args.preset, args.layers, args.tokens, args.steps, args.repeats)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
