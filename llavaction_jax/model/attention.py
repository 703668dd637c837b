"""The one attention entry point for the vision tower and the decoder.

q [B, T, N, D], k/v [B, S, K, D] (GQA when K < N, never repeated in memory by the kernels that can avoid
it). Masking is described, not materialised, by the caller:
  * causal: query t sees keys s <= t (decoder) or all keys (vision tower);
  * kv_lengths [B]: right padding, keys s >= kv_lengths[b] are invisible;
  * segment_ids [B, T] (T == S): packing, query and key must share a segment id; id 0 is padding and
    sees nothing (its output is defined but never used).
Each implementation turns that description into its own masking; `xla` is the reference
(jax.nn.dot_product_attention with an explicit boolean mask when segments are given).
"""
import jax
import jax.numpy as jnp


def _reference_mask(bsz, tq, tk, causal, kv_lengths, segment_ids):
    """Boolean mask [B, 1, T, S] of visible (query, key) pairs; None when nothing beyond causal is needed."""
    if segment_ids is None:
        return None
    seg = segment_ids.astype(jnp.int32)
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
    if causal:
        mask &= jnp.tril(jnp.ones((tq, tk), bool))[None]
    if kv_lengths is not None:
        mask &= jnp.arange(tk)[None, None, :] < kv_lengths[:, None, None]
    return mask[:, None]


def xla_attention(q, k, v, *, causal, kv_lengths=None, segment_ids=None):
    """Reference: XLA's dot_product_attention (float32 softmax; materialises the [B, N, T, S] scores)."""
    bsz, tq = q.shape[:2]
    tk = k.shape[1]
    mask = _reference_mask(bsz, tq, tk, causal, kv_lengths, segment_ids)
    if mask is not None:
        # The mask already holds causality and padding; every query row sees at least itself unless it is
        # padding (segment 0), whose output is never read: give it its own key so softmax stays finite.
        diag = jnp.eye(tq, tk, dtype=bool)[None, None]
        mask = mask | (diag & (segment_ids == 0)[:, None, :, None])
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=kv_lengths,
                                        implementation="xla")


def cudnn_attention(q, k, v, *, causal, kv_lengths=None, segment_ids=None):
    """cuDNN fused (flash) attention through jax.nn.dot_product_attention (GPU only)."""
    if segment_ids is not None:
        raise ValueError("attention_impl='cudnn' does not take segment_ids here; use 'auto' or 'xla' with packing")
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=kv_lengths,
                                        implementation="cudnn")


IMPLEMENTATIONS = {"xla": xla_attention, "cudnn": cudnn_attention}


def attention(q, k, v, *, impl, causal, kv_lengths=None, segment_ids=None):
    """Dispatch to `IMPLEMENTATIONS[impl]` (see the module docstring for the masking contract)."""
    if kv_lengths is not None:
        kv_lengths = kv_lengths.astype(jnp.int32)
    if segment_ids is not None and segment_ids.shape != q.shape[:2]:
        raise ValueError(f"segment_ids {segment_ids.shape} must be [B, T] = {q.shape[:2]}")
    try:
        fn = IMPLEMENTATIONS[impl or "xla"]
    except KeyError:
        raise ValueError(f"attention_impl={impl!r}: expected one of {sorted(IMPLEMENTATIONS)}") from None
    return fn(q, k, v, causal=causal, kv_lengths=kv_lengths, segment_ids=segment_ids)
