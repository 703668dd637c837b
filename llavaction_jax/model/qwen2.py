"""Qwen2 decoder: GQA with q/k/v bias, RoPE (HF rotate_half), RMSNorm, SwiGLU; layers stacked and scanned.

Three modes share one code path:
  * full sequence (training / scoring): causal attention, right padding via per-sample key lengths;
  * prefill: the same, and each layer also returns its keys/values to seed a KV cache;
  * decode: T new tokens per sample written into the cache at per-sample positions, attending to
    cache slots 0..position (slots fill contiguously, so this is exactly the causal prefix).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llavaction_jax.model.attention import attention
from llavaction_jax.model import remat
from llavaction_jax.model.layers import Build, Dense, Embed, RMSNorm, constrain, run_layers
from llavaction_jax.model.spec import ModelSpec


def rope_tables(positions, head_dim: int, theta: float):
    """cos/sin [B, T, head_dim] in float32 (HF: inv_freq = 1/theta^(2i/d), emb = cat(freqs, freqs))."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x [B, T, N, D]; rotate_half convention (first half / second half)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class DecoderAttention(nnx.Module):
    def __init__(self, b: Build, spec: ModelSpec, dtype):
        t = spec.text
        n = t.num_layers
        self.num_heads, self.num_kv_heads, self.head_dim = t.num_heads, t.num_kv_heads, t.head_dim
        self.impl = spec.attention_impl
        self.rules = b.rules
        self.q_proj = Dense(b, t.hidden_size, t.num_heads * t.head_dim, ("embed", "heads"), stack=n, dtype=dtype)
        self.k_proj = Dense(b, t.hidden_size, t.num_kv_heads * t.head_dim, ("embed", "kv_heads"), stack=n,
                            dtype=dtype)
        self.v_proj = Dense(b, t.hidden_size, t.num_kv_heads * t.head_dim, ("embed", "kv_heads"), stack=n,
                            dtype=dtype)
        self.o_proj = Dense(b, t.num_heads * t.head_dim, t.hidden_size, ("heads", "embed"), use_bias=False,
                            stack=n, dtype=dtype)

    def __call__(self, x, cos, sin, kv_lengths, cache=None, cache_pos=None, segment_ids=None):
        bsz, length, _ = x.shape
        heads = lambda y, n, axis: constrain(y.reshape(bsz, length, n, self.head_dim),
                                             ("batch", "seq", axis, "head_dim"), self.rules)
        q = remat.name(heads(self.q_proj(x), self.num_heads, "act_heads"), "query_proj")
        k = remat.name(heads(self.k_proj(x), self.num_kv_heads, "act_kv_heads"), "key_proj")
        v = remat.name(heads(self.v_proj(x), self.num_kv_heads, "act_kv_heads"), "value_proj")
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = attention(q, k, v, impl=self.impl, causal=True, kv_lengths=kv_lengths, segment_ids=segment_ids,
                            rules=self.rules)
            new_kv = (k, v)
        else:
            k_cache, v_cache = cache
            # Write the new keys/values at each sample's own positions (prompts have different lengths).
            rows = jnp.arange(bsz)
            k_cache = k_cache.at[rows, cache_pos].set(k[:, 0].astype(k_cache.dtype))
            v_cache = v_cache.at[rows, cache_pos].set(v[:, 0].astype(v_cache.dtype))
            out = attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), impl=self.impl, causal=False,
                            kv_lengths=cache_pos + 1, rules=self.rules)
            new_kv = (k_cache, v_cache)
        out = remat.name(constrain(out, ("batch", "seq", "act_heads", "head_dim"), self.rules), "attention_out")
        out = self.o_proj(out.reshape(bsz, length, -1))
        return remat.name(constrain(out, ("batch", "seq", "act_embed"), self.rules), "out_proj"), new_kv


class DecoderMLP(nnx.Module):
    def __init__(self, b: Build, spec: ModelSpec, dtype):
        t = spec.text
        n = t.num_layers
        self.gate_proj = Dense(b, t.hidden_size, t.intermediate_size, ("embed", "mlp"), use_bias=False, stack=n,
                               dtype=dtype)
        self.up_proj = Dense(b, t.hidden_size, t.intermediate_size, ("embed", "mlp"), use_bias=False, stack=n,
                             dtype=dtype)
        self.down_proj = Dense(b, t.intermediate_size, t.hidden_size, ("mlp", "embed"), use_bias=False, stack=n,
                               dtype=dtype)
        self.rules = b.rules

    def __call__(self, x):
        wide = lambda y, tag: remat.name(constrain(y, ("batch", "seq", "act_mlp"), self.rules), tag)
        h = jax.nn.silu(wide(self.gate_proj(x), "mlp_gate")) * wide(self.up_proj(x), "mlp_up")
        return remat.name(constrain(self.down_proj(h), ("batch", "seq", "act_embed"), self.rules), "mlp_out")


class DecoderLayers(nnx.Module):
    """All decoder layers, params stacked on a leading layer axis."""

    def __init__(self, b: Build, spec: ModelSpec, dtype):
        t = spec.text
        self.input_layernorm = RMSNorm(b, t.hidden_size, t.rms_norm_eps, stack=t.num_layers, dtype=dtype)
        self.self_attn = DecoderAttention(b, spec, dtype)
        self.post_attention_layernorm = RMSNorm(b, t.hidden_size, t.rms_norm_eps, stack=t.num_layers, dtype=dtype)
        self.mlp = DecoderMLP(b, spec, dtype)

    def __call__(self, x, cos, sin, kv_lengths, cache=None, cache_pos=None, segment_ids=None):
        attn, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, kv_lengths, cache, cache_pos, segment_ids)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


class Qwen2Decoder(nnx.Module):
    """embed_tokens + stacked layers + final norm. Returns final-norm hidden states."""

    def __init__(self, b: Build, spec: ModelSpec, dtype):
        t = spec.text
        self.embed_tokens = Embed(b, t.vocab_size, t.hidden_size, ("vocab", "embed"), dtype=dtype)
        self.layers = DecoderLayers(b, spec, dtype)
        self.norm = RMSNorm(b, t.hidden_size, t.rms_norm_eps, dtype=dtype)
        self.head_dim, self.rope_theta = t.head_dim, t.rope_theta
        self.scan, self.remat = spec.scan_layers, spec.remat_policy
        self.dtype = dtype
        self.rules = b.rules

    def __call__(self, embeds, positions, kv_lengths=None, segment_ids=None, *, return_kv=False, tap=None):
        """Full-sequence pass. embeds [B, T, H]; positions [B, T]; kv_lengths [B] (right padding);
        segment_ids [B, T] (packing: attention stays within a segment, 0 = padding).

        With return_kv, also returns stacked per-layer (k, v), each [layers, B, T, K, D], to seed a cache.
        With tap (int32 [B, P] sequence indices), also returns (last) HF's `output_hidden_states` at those indices:
        [layers + 1, B, P, H] = the embeddings, each layer's output, the last one after the final norm.
        """
        cos, sin = rope_tables(positions, self.head_dim, self.rope_theta)

        def at_tap(h):
            return jnp.take_along_axis(h, tap[..., None], axis=1)

        def body(layer, h, _):
            h, kv = layer(h, cos, sin, kv_lengths, segment_ids=segment_ids)
            # Pin the residual stream at every layer boundary (GSPMD may drift otherwise).
            h = constrain(h, ("batch", "seq", "act_embed"), self.rules)
            return h, ((kv if return_kv else None), (at_tap(h) if tap is not None else None))

        x = embeds.astype(self.dtype)
        h, (kv, taps) = run_layers(self.layers, x, None, body, scan=self.scan, remat_policy=self.remat)
        h = self.norm(h)
        if tap is None:
            return (h, kv) if return_kv else h
        taps = jnp.concatenate([at_tap(x)[None], taps[:-1], at_tap(h)[None]], axis=0)
        return (h, kv, taps) if return_kv else (h, taps)

    def decode(self, embeds, cache, cache_pos):
        """One cached step. embeds [B, 1, H] are the tokens at positions cache_pos [B];
        cache = (k, v) each [layers, B, S, K, D]. Returns (final-norm hidden [B, 1, H], updated cache)."""
        if embeds.shape[1] != 1:
            raise ValueError(f"decode takes one token per sample, got embeds {embeds.shape}")
        positions = cache_pos[:, None]
        cos, sin = rope_tables(positions, self.head_dim, self.rope_theta)

        def body(layer, h, layer_cache):
            return layer(h, cos, sin, None, layer_cache, cache_pos)

        h, cache = run_layers(self.layers, embeds.astype(self.dtype), cache, body, scan=self.scan,
                              remat_policy="none")
        return self.norm(h), cache
