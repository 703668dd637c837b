"""Greedy decoding with a KV cache: one jitted prefill, then a jitted while-loop of single-token steps.

Prompts are right-padded with different lengths: sample b's cache slots 0..len_b-1 hold its prompt and
each new token is written at slot len_b + t (overwriting padding), so every sample attends exactly to
its own prefix. Samples stop at eos (which is emitted) and are padded afterwards.

`prefill_and_generate` also returns what evaluation reads from the SAME prefill: the next-token logits at each
row's last real position (option-letter scoring) and the action-head logits, so a question costs one prefill.
The LM head runs only at the last real position (and at each decode step), never over [B, L, V].
"""
import functools
from typing import Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx


@flax.struct.dataclass
class PrefillOutput:
    next_logits: jax.Array                       # float32 [B, V] at each row's last real prompt position
    tokens: Optional[jax.Array] = None           # int32 [B, max_new_tokens] (None when max_new_tokens == 0)
    action_logits: Optional[Tuple[jax.Array, jax.Array, jax.Array]] = None   # (verb, noun, action) float32


def _as_tuple(eos_id):
    return tuple(int(e) for e in eos_id) if isinstance(eos_id, (tuple, list)) else (int(eos_id),)


def _prefill(model, input_ids, pixel_values, attention_mask, *, with_kv: bool):
    """One forward of the prompt: (hidden [B, L, H], video slots, per-layer (k, v) or None, lengths [B],
    final-norm hidden at each row's last real position [B, H])."""
    bsz, length = input_ids.shape
    lengths = attention_mask.astype(jnp.int32).sum(-1)
    embeds, slots = model.embed_inputs(input_ids, pixel_values)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
    if with_kv:
        hidden, kv = model.llm(embeds, positions, lengths, return_kv=True)
    else:
        hidden, kv = model.llm(embeds, positions, lengths), None
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return hidden, slots, kv, lengths, last


def _greedy_decode(model, first_logits, kv, lengths, eos_ids, pad_id, max_new_tokens: int):
    """Tokens [B, max_new_tokens]: the first from the prefill's last-position logits, then cached steps."""
    bsz = first_logits.shape[0]
    k, v = kv
    # Cache [layers, B, L + max_new, K, D]: the prompt's keys/values, then room for the new tokens.
    pad = [(0, 0), (0, 0), (0, max_new_tokens), (0, 0), (0, 0)]
    cache = (jnp.pad(k, pad), jnp.pad(v, pad))

    def is_eos(tok):
        return (tok[:, None] == eos_ids[None, :]).any(-1)

    tok = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)
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


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _generate(graphdef, state, input_ids, pixel_values, attention_mask, eos_ids, pad_id, *, max_new_tokens):
    model = nnx.merge(graphdef, state)
    _, _, kv, lengths, last = _prefill(model, input_ids, pixel_values, attention_mask, with_kv=True)
    return _greedy_decode(model, model.lm_logits(last), kv, lengths, eos_ids, pad_id, max_new_tokens)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "action_heads"))
def _prefill_and_generate(graphdef, state, input_ids, pixel_values, attention_mask, eos_ids, pad_id, *,
                          max_new_tokens, action_heads):
    model = nnx.merge(graphdef, state)
    # Without generation no KV cache is built: a plain forward, LM head only at the last position.
    hidden, slots, kv, lengths, last = _prefill(model, input_ids, pixel_values, attention_mask,
                                                with_kv=max_new_tokens > 0)
    next_logits = model.lm_logits(last)
    tokens = (_greedy_decode(model, next_logits, kv, lengths, eos_ids, pad_id, max_new_tokens)
              if max_new_tokens > 0 else None)
    heads = model.action_logits(hidden, slots) if action_heads else None
    return PrefillOutput(next_logits=next_logits, tokens=tokens, action_logits=heads)


def _check_inputs(model, input_ids, pixel_values, attention_mask, caller):
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {attention_mask.shape} != input_ids {input_ids.shape}")
    if not isinstance(input_ids, jax.core.Tracer):
        model._check_slots(input_ids, pixel_values)
        model.check_right_padded(attention_mask)
        if (attention_mask.sum(-1) == 0).any():
            raise ValueError(f"{caller}: every prompt needs at least one real token (attention_mask row of zeros)")
    return input_ids, attention_mask


def generate(model, input_ids, pixel_values, attention_mask, max_new_tokens, eos_id, pad_id=0):
    """Greedy generation -> int32 [B, max_new_tokens] (see module docstring). eos_id: int or sequence."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids, attention_mask = _check_inputs(model, input_ids, pixel_values, attention_mask, "generate")
    graphdef, state = nnx.split(model)
    eos_ids = jnp.asarray(_as_tuple(eos_id), jnp.int32)
    return _generate(graphdef, state, input_ids, pixel_values, attention_mask, eos_ids, jnp.int32(pad_id),
                     max_new_tokens=int(max_new_tokens))


def prefill_and_generate(model, input_ids, pixel_values, attention_mask, max_new_tokens=0, eos_id=-1, pad_id=0,
                         action_heads=False) -> PrefillOutput:
    """One prefill -> PrefillOutput: next-token logits at each row's last real position, greedy tokens continued
    from that prefill's KV cache (max_new_tokens > 0; same tokens as `generate`), and with action_heads the
    (verb, noun, action) logits at the action token (needs a model with the action token and pixel_values)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if action_heads and (not model.spec.action_token or pixel_values is None):
        raise ValueError("prefill_and_generate: action_heads=True needs a model with the action token "
                         "(config.model.action_token) and pixel_values")
    input_ids, attention_mask = _check_inputs(model, input_ids, pixel_values, attention_mask,
                                              "prefill_and_generate")
    graphdef, state = nnx.split(model)
    eos_ids = jnp.asarray(_as_tuple(eos_id), jnp.int32)
    return _prefill_and_generate(graphdef, state, input_ids, pixel_values, attention_mask, eos_ids,
                                 jnp.int32(pad_id), max_new_tokens=int(max_new_tokens),
                                 action_heads=bool(action_heads))
