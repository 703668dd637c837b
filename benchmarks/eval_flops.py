"""Evaluation FLOPs per question vs the floor (XLA cost analysis of the compiled eval functions).

  python benchmarks/eval_flops.py --frames 32 --batch 2 --max_new 32      # tiny config, layers unrolled

floor = ONE prefill of the prompt (the model forward, LM head only at the last real position) + the decode steps
that produce the generated tokens (the first token comes from the prefill's logits, then max_new - 1 steps).
executed = what the evaluator runs per batch, before (letters: one forward; generate: a second prefill + decode)
and after (model.generate.prefill_and_generate: one prefill shared by both methods).

XLA's cost analysis counts a loop body ONCE (so layers are unrolled with scan_layers=False, and the greedy
while-loop is counted as one decode step): executed = flops(compiled fn) + (max_new - 2) x flops(one decode step)
for a function containing the decode loop (every row generates all max_new tokens: eos is never produced).
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax                                   # noqa: E402
import jax.numpy as jnp                      # noqa: E402
import numpy as np                           # noqa: E402
from flax import nnx                         # noqa: E402

from llavaction_jax.model import build as model_build, num_video_tokens    # noqa: E402
from llavaction_jax.model.generate import _generate, _prefill_and_generate   # noqa: E402
from benchmarks.model_throughput import load_config                        # noqa: E402


def _flops(jitted, *args, **kwargs) -> float:
    return float(jitted.lower(*args, **kwargs).compile().cost_analysis()["flops"])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _floor_prefill(graphdef, state, input_ids, pixel_values, attention_mask):
    """The floor's prefill: the model forward with the LM head only at each row's last real position."""
    model = nnx.merge(graphdef, state)
    hidden, _ = model.hidden_states(input_ids, pixel_values, attention_mask)
    last = attention_mask.astype(jnp.int32).sum(-1) - 1
    return model.lm_logits(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decode_step(graphdef, state, tok, cache, pos):
    """One greedy decode step, as in the generation loop body (cache of the full prompt + max_new slots)."""
    model = nnx.merge(graphdef, state)
    h, cache = model.llm.decode(model.llm.embed_tokens(tok[:, None]), cache, pos)
    return jnp.argmax(model.lm_logits(h[:, 0]), axis=-1).astype(jnp.int32), cache


def prompt_batch(model_cfg, batch: int, frames: int, text_tokens: int):
    """Right-padded prompts with a video (rows differ in text length by up to 3 tokens) and pixel values."""
    n_video = num_video_tokens(model_cfg, frames)
    rng = np.random.RandomState(0)
    length = 2 + n_video + text_tokens
    ids = np.zeros((batch, length), np.int32)
    mask = np.zeros_like(ids)
    for b in range(batch):
        row = [1, 9] + [model_cfg.video_token_id] * n_video + list(rng.randint(4, 100, text_tokens - (b % 4)))
        ids[b, :len(row)] = row
        mask[b, :len(row)] = 1
    side = model_cfg.vision.image_size
    pix = rng.randn(batch, frames, side, side, 3).astype(np.float32)
    return jnp.asarray(ids), jnp.asarray(pix), jnp.asarray(mask)


def measure(model_cfg, *, batch: int, frames: int, text_tokens: int, max_new: int, seed: int = 0) -> dict:
    """Per-question FLOPs: floor, and executed before/after for methods letters, generate and both."""
    if max_new < 2:
        raise ValueError(f"max_new must be >= 2 (one decode step at least), got {max_new}")
    model_cfg = model_cfg.copy_and_resolve_references()
    model_cfg.scan_layers = False                  # XLA would count a scanned layer body once
    # FLOPs depend on shapes only: an abstract model (no parameter init) is enough to compile.
    model = nnx.eval_shape(lambda: model_build.new_model(model_cfg, seed=seed))
    graphdef, state = nnx.split(model)
    ids, pix, mask = prompt_batch(model_cfg, batch, frames, text_tokens)
    eos, pad = jnp.asarray([-1], jnp.int32), jnp.int32(0)
    heads = bool(model_cfg.action_token)

    t = model_cfg.text
    cache_shape = (t.num_layers, batch, ids.shape[1] + max_new, t.num_kv_heads, t.head_dim)
    cache = (jnp.zeros(cache_shape, model_cfg.dtype), jnp.zeros(cache_shape, model_cfg.dtype))
    step = _flops(_decode_step, graphdef, state, jnp.zeros((batch,), jnp.int32), cache, mask.sum(-1))
    loop_rest = (max_new - 2) * step               # the while-loop body is counted once in a compiled fn

    def after(new_tokens, action_heads):
        f = _flops(_prefill_and_generate, graphdef, state, ids, pix, mask, eos, pad,
                   max_new_tokens=new_tokens, action_heads=action_heads)
        return f + (loop_rest if new_tokens else 0.0)

    prefill = _flops(_floor_prefill, graphdef, state, ids, pix, mask)
    letters = after(0, heads)                      # == the old letter forward (already LM head at last only)
    old_generate = _flops(_generate, graphdef, state, ids, pix, mask, eos, pad, max_new_tokens=max_new) \
        + loop_rest
    new_generate = after(max_new, False)
    new_both = after(max_new, heads)
    floor = {"letters": prefill, "generate": prefill + (max_new - 1) * step, "both": prefill + (max_new - 1) * step}
    executed = {
        "before": {"letters": letters, "generate": old_generate, "both": letters + old_generate},
        "after": {"letters": letters, "generate": new_generate, "both": new_both},
    }
    per_q = lambda x: x / batch
    return {
        "prompt_len": int(ids.shape[1]), "video_tokens": num_video_tokens(model_cfg, frames),
        "decode_step": per_q(step), "prefill": per_q(prefill),
        "floor": {k: per_q(v) for k, v in floor.items()},
        "executed": {when: {k: per_q(v) for k, v in d.items()} for when, d in executed.items()},
        "ratio": {when: {k: d[k] / floor[k] for k in d} for when, d in executed.items()},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--text_tokens", type=int, default=24)
    p.add_argument("--max_new", type=int, default=32)
    args = p.parse_args()
    cfg = load_config(args.config)
    r = measure(cfg.model, batch=args.batch, frames=args.frames, text_tokens=args.text_tokens, max_new=args.max_new)
    print(f"prompt {r['prompt_len']} tokens ({r['video_tokens']} video), {args.max_new} new tokens, "
          f"batch {args.batch}; per question: prefill floor {r['prefill']:.4g} FLOPs, decode step "
          f"{r['decode_step']:.4g}")
    print(f"{'method':10s} {'floor':>12s} {'before':>12s} {'after':>12s} {'before/floor':>13s} {'after/floor':>12s}")
    for m in ("letters", "generate", "both"):
        print(f"{m:10s} {r['floor'][m]:12.5g} {r['executed']['before'][m]:12.5g} {r['executed']['after'][m]:12.5g} "
              f"{r['ratio']['before'][m]:13.3f} {r['ratio']['after'][m]:12.3f}")


if __name__ == "__main__":
    main()
