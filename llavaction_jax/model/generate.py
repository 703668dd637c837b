"""Greedy decoding with a KV cache: one jitted prefill, then a jitted while-loop of single-token steps.

Prompts are right-padded with different lengths: sample b's cache slots 0..len_b-1 hold its prompt and
each new token is written at slot len_b + t (overwriting padding), so every sample attends exactly to
its own prefix. Samples stop at eos (which is emitted) and are padded afterwards.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _as_tuple(eos_id):
    return tuple(int(e) for e in eos_id) if isinstance(eos_id, (tuple, list)) else (int(eos_id),)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _generate(graphdef, state, input_ids, pixel_values, attention_mask, eos_ids, pad_id, *, max_new_tokens):
    model = nnx.merge(graphdef, state)
    bsz, length = input_ids.shape
    lengths = attention_mask.astype(jnp.int32).sum(-1)
    embeds, _ = model.embed_inputs(input_ids, pixel_values)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
    hidden, (k, v) = model.llm(embeds, positions, lengths, return_kv=True)
    # Cache [layers, B, L + max_new, K, D]: the prompt's keys/values, then room for the new tokens.
    pad = [(0, 0), (0, 0), (0, max_new_tokens), (0, 0), (0, 0)]
    cache = (jnp.pad(k, pad), jnp.pad(v, pad))
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    eos = eos_ids

    def is_eos(tok):
        return (tok[:, None] == eos[None, :]).any(-1)

    tok = jnp.argmax(model.lm_logits(last), axis=-1).astype(jnp.int32)
    out = jnp.full((bsz, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    done = is_eos(tok)

    def cond(carry):
        t, _, _, _, done = carry
        return (t < max_new_tokens - 1) & ~done.all()

    def body(carry):
        t, tok, cache, out, done = carry
        h, cache = model.llm.decode(model.llm.embed_tokens(tok[:, None]), cache, lengths + t)
        nxt = jnp.argmax(model.lm_logits(h[:, 0]), axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        out = out.at[:, t + 1].set(nxt)
        return t + 1, nxt, cache, out, done | is_eos(nxt)

    _, _, _, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tok, cache, out, done))
    return out


def generate(model, input_ids, pixel_values, attention_mask, max_new_tokens, eos_id, pad_id=0):
    """Greedy generation -> int32 [B, max_new_tokens] (see module docstring). eos_id: int or sequence."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {attention_mask.shape} != input_ids {input_ids.shape}")
    if not isinstance(input_ids, jax.core.Tracer):
        model._check_slots(input_ids, pixel_values)
        model.check_right_padded(attention_mask)
        if (attention_mask.sum(-1) == 0).any():
            raise ValueError("generate: every prompt needs at least one real token (attention_mask row of zeros)")
    graphdef, state = nnx.split(model)
    eos_ids = jnp.asarray(_as_tuple(eos_id), jnp.int32)
    return _generate(graphdef, state, input_ids, pixel_values, attention_mask, eos_ids, jnp.int32(pad_id),
                     max_new_tokens=int(max_new_tokens))
