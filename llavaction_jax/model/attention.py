"""The one attention entry point for the vision tower and the decoder.

q [B, T, N, D], k/v [B, S, K, D] (GQA when K < N, never repeated in memory by the kernels that can avoid
it). Masking is described, not materialised, by the caller:
  * causal: query t sees keys s <= t (decoder) or all keys (vision tower);
  * kv_lengths [B]: right padding, keys s >= kv_lengths[b] are invisible;
  * segment_ids [B, T] (T == S): packing, query and key must share a segment id; id 0 is padding and
    sees nothing (its output is defined but never used).
Each implementation turns that description into its own masking; `xla` is the reference
(jax.nn.dot_product_attention with an explicit boolean mask when segments are given).

Implementations:
  * xla: the reference; materialises the float32 [B, N, T, S] scores.
  * blockwise: pure-JAX flash attention (online softmax over key blocks, custom VJP that saves only the
    output and the log-sum-exp and recomputes blocks); runs anywhere, O(block^2) score memory.
  * splash: the Pallas TPU splash-attention kernel, shard_mapped over the batch and head mesh axes
    (on a non-TPU platform it runs in the Pallas interpreter: slow, for tests).
  * cudnn: cuDNN fused attention (GPU, bf16/fp16); packing (segment_ids) through cuDNN's packed layout
    (per-segment lengths and offsets), on GPUs and JAX versions that support it (cudnn_supports_packing).
  * auto: splash on TPU, cuDNN on GPU where it applies (blockwise otherwise), blockwise on CPU once the
    scores get large (T * S > AUTO_XLA_MAX_SCORES; below that XLA's fused path is faster and small);
    single-query decode steps and cross-length calls use xla (tiny scores). The platform is the one of the mesh the
    program is traced under (an AOT compile for a TPU topology on a CPU host picks splash). Each distinct
    choice is logged once, with the reason (choose_kernel).
"""
import functools
import math

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jax.sharding import PartitionSpec as P

from llavaction_jax import sharding as shd
from llavaction_jax.model import remat

# Finite "minus infinity" (as in the splash kernel): a row whose keys are all masked stays finite.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# On CPU (and other platforms without a kernel), `auto` materialises scores up to 1024 x 1024 per head.
AUTO_XLA_MAX_SCORES = 1024 * 1024
# Splash query/key block (rows and keys per kernel tile), capped at the 128-rounded length.
SPLASH_BLOCK = 512


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


def cudnn_packed_layout(segment_ids, max_segments=None):
    """cuDNN's packed layout of segment_ids [B, T]: (seqlen [B, M], offsets [B, M + 1]), -1 past the last segment.

    Every run of equal ids is one segment, padding (id 0) included, so padding rows attend among themselves and
    stay finite (as in xla_attention, their output is never read). M defaults to T, a bound every row meets."""
    seg = segment_ids.astype(jnp.int32)
    bsz, length = seg.shape
    m = length if max_segments is None else int(max_segments)
    starts = jnp.concatenate([jnp.ones((bsz, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    offsets = jax.vmap(lambda row: jnp.nonzero(row, size=m, fill_value=-1)[0])(starts).astype(jnp.int32)
    count = jnp.sum(starts, axis=1, dtype=jnp.int32)[:, None]
    slot = jnp.arange(m, dtype=jnp.int32)[None]
    ends = jnp.where(slot + 1 < count, jnp.roll(offsets, -1, axis=1), length)
    seqlen = jnp.where(slot < count, ends - offsets, -1)
    return seqlen, jnp.concatenate([offsets, jnp.full((bsz, 1), -1, jnp.int32)], axis=1)


def _cudnn_fused():
    # The packed (segment) layout is only in JAX's internal cuDNN module; jax.nn.dot_product_attention has
    # no segment argument. cudnn_supports_packing checks the signature before anything calls it.
    from jax._src.cudnn import fused_attention_stablehlo  # why: JAX-internal, GPU-only; absent = no packed cuDNN
    return fused_attention_stablehlo


@functools.lru_cache(maxsize=None)
def cudnn_supports_packing() -> bool:
    """The installed JAX's cuDNN attention takes segment offsets, and the GPU is Hopper or newer (cuDNN's
    packed layout needs compute capability 9.0: check_is_flash_attention in JAX's fused_attention_stablehlo)."""
    try:
        fused = _cudnn_fused()
    except ImportError:
        return False
    if "q_offsets" not in inspect.signature(fused.dot_product_attention).parameters:
        return False
    try:
        return bool(fused.check_compute_capability("9.0"))
    except Exception:       # no CUDA device visible (e.g. tracing for GPU from a CPU host)
        return False


def cudnn_attention(q, k, v, *, causal, kv_lengths=None, segment_ids=None):
    """cuDNN fused (flash) attention (GPU only): jax.nn.dot_product_attention, or with segment_ids cuDNN's
    packed layout (cudnn_packed_layout), where cudnn_supports_packing()."""
    if segment_ids is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=kv_lengths,
                                            implementation="cudnn")
    if not cudnn_supports_packing():
        raise ValueError("attention_impl='cudnn' with segment_ids needs cuDNN's packed layout (a JAX whose cuDNN "
                         "attention takes q_offsets, on a compute capability >= 9.0 GPU); use 'auto'")
    if kv_lengths is not None:
        segment_ids = jnp.where(jnp.arange(k.shape[1])[None] < kv_lengths[:, None], segment_ids, 0)
    fused = _cudnn_fused()
    seqlen, offsets = cudnn_packed_layout(segment_ids)
    mask = fused.MaskType.PADDING_CAUSAL if causal else fused.MaskType.PADDING
    return fused.dot_product_attention(q, k, v, q_seqlen=seqlen, kv_seqlen=seqlen, q_offsets=offsets,
                                       kv_offsets=offsets, scale=1.0 / math.sqrt(q.shape[-1]), mask_type=mask,
                                       qkv_layout="BTNH")


# ---------------------------------------------------------------------------------------------------------
# blockwise: pure-JAX flash attention


def _round_up(x, m):
    return -(-x // m) * m


def _pad_axis(x, size, axis, value=0):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _visible(qi, kj, bq, bk, causal, kv_len, q_seg, k_seg):
    """Mask [B, 1, 1, bq|1, bk] of the (query block qi, key block kj) tile, broadcastable over [B, K, G, bq, bk]."""
    kpos = kj * bk + jnp.arange(bk)
    mask = kpos[None, None, :] < kv_len[:, None, None]  # [B, 1, bk]
    if causal:
        qpos = qi * bq + jnp.arange(bq)
        mask = mask & (qpos[:, None] >= kpos[None, :])[None]
    if q_seg is not None:
        mask = mask & (q_seg[:, :, None] == k_seg[:, None, :])
    return mask[:, None, None]


def _num_key_blocks(kv_len, bk):
    # Key blocks past the longest sample are invisible to every query; keep at least one so every query block
    # sees a block (a row whose keys are all masked averages its masked keys, finite, as in splash).
    return jnp.maximum(1, (jnp.max(kv_len) + bk - 1) // bk)


def _causal_key_blocks(qi, bq, bk):
    # Key blocks that hold a key s <= the last query of block qi.
    return ((qi + 1) * bq - 1) // bk + 1


def _flash_forward(q, k, v, kv_len, seg, causal, bq, bk):
    """Padded inputs q [B, Tp, K, G, D], k/v [B, Sp, K, D] -> out [B, Tp, K, G, D] (q dtype), lse [B, K, G, Tp]."""
    bsz, tp, nkv, grp, dim = q.shape
    scale = 1.0 / math.sqrt(dim)
    n_kb = _num_key_blocks(kv_len, bk)

    def query_block(qi):
        qb = jax.lax.dynamic_slice_in_dim(q, qi * bq, bq, axis=1)
        qs = None if seg is None else jax.lax.dynamic_slice_in_dim(seg, qi * bq, bq, axis=1)
        hi = jnp.minimum(n_kb, _causal_key_blocks(qi, bq, bk)) if causal else n_kb

        def key_block(kj, carry):
            m, l, acc = carry
            kb = jax.lax.dynamic_slice_in_dim(k, kj * bk, bk, axis=1)
            vb = jax.lax.dynamic_slice_in_dim(v, kj * bk, bk, axis=1)
            ks = None if seg is None else jax.lax.dynamic_slice_in_dim(seg, kj * bk, bk, axis=1)
            s = jnp.einsum("bqkgd,bskd->bkgqs", qb, kb, preferred_element_type=jnp.float32) * scale
            s = jnp.where(_visible(qi, kj, bq, bk, causal, kv_len, qs, ks), s, _MASK_VALUE)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            l = l * corr + p.sum(-1)
            acc = acc * corr[..., None] + jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), vb,
                                                     preferred_element_type=jnp.float32)
            return m_new, l, acc

        init = (jnp.full((bsz, nkv, grp, bq), -jnp.inf, jnp.float32),
                jnp.zeros((bsz, nkv, grp, bq), jnp.float32),
                jnp.zeros((bsz, nkv, grp, bq, dim), jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, hi, key_block, init)
        return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)

    out, lse = jax.lax.map(query_block, jnp.arange(tp // bq))  # [nq, B, K, G, bq, D], [nq, B, K, G, bq]
    out = out.transpose(1, 0, 4, 2, 3, 5)  # [B, nq, bq, K, G, D]
    lse = jnp.moveaxis(lse, 0, 3)  # [B, K, G, nq, bq]
    return out.reshape(q.shape), lse.reshape(bsz, nkv, grp, tp)


def _flash_backward(q, k, v, kv_len, seg, out, lse, dout, causal, bq, bk):
    """Flash-attention backward: per key block, loop over the query blocks that can see it, recomputing scores."""
    bsz, tp, nkv, grp, dim = q.shape
    sp = k.shape[1]
    scale = 1.0 / math.sqrt(dim)
    delta = jnp.einsum("bqkgd,bqkgd->bkgq", dout.astype(jnp.float32), out.astype(jnp.float32))
    n_kb = _num_key_blocks(kv_len, bk)
    n_qb = tp // bq

    def key_block(kj, grads):
        dq, dk, dv = grads
        kb = jax.lax.dynamic_slice_in_dim(k, kj * bk, bk, axis=1)
        vb = jax.lax.dynamic_slice_in_dim(v, kj * bk, bk, axis=1)
        ks = None if seg is None else jax.lax.dynamic_slice_in_dim(seg, kj * bk, bk, axis=1)
        # The query blocks i the forward paired with this key block: those with kj < _causal_key_blocks(i).
        lo = (kj * bk) // bq if causal else 0

        def query_block(qi, carry):
            dq, dkb, dvb = carry
            qb = jax.lax.dynamic_slice_in_dim(q, qi * bq, bq, axis=1)
            dob = jax.lax.dynamic_slice_in_dim(dout, qi * bq, bq, axis=1)
            lse_b = jax.lax.dynamic_slice_in_dim(lse, qi * bq, bq, axis=3)
            delta_b = jax.lax.dynamic_slice_in_dim(delta, qi * bq, bq, axis=3)
            qs = None if seg is None else jax.lax.dynamic_slice_in_dim(seg, qi * bq, bq, axis=1)
            mask = _visible(qi, kj, bq, bk, causal, kv_len, qs, ks)
            s = jnp.einsum("bqkgd,bskd->bkgqs", qb, kb, preferred_element_type=jnp.float32) * scale
            p = jnp.exp(jnp.where(mask, s, _MASK_VALUE) - lse_b[..., None])
            dvb = dvb + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dout.dtype), dob,
                                   preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqkgd,bskd->bkgqs", dob, vb, preferred_element_type=jnp.float32)
            ds = jnp.where(mask, p * (dp - delta_b[..., None]), 0.0) * scale
            dq_i = jnp.einsum("bkgqs,bskd->bqkgd", ds.astype(k.dtype), kb, preferred_element_type=jnp.float32)
            dq = jax.lax.dynamic_update_slice_in_dim(
                dq, jax.lax.dynamic_slice_in_dim(dq, qi * bq, bq, axis=1) + dq_i, qi * bq, axis=1)
            dkb = dkb + jnp.einsum("bkgqs,bqkgd->bskd", ds.astype(q.dtype), qb, preferred_element_type=jnp.float32)
            return dq, dkb, dvb

        zeros = jnp.zeros((bsz, bk, nkv, dim), jnp.float32)
        dq, dkb, dvb = jax.lax.fori_loop(lo, n_qb, query_block, (dq, zeros, zeros))
        dk = jax.lax.dynamic_update_slice_in_dim(dk, dkb, kj * bk, axis=1)
        dv = jax.lax.dynamic_update_slice_in_dim(dv, dvb, kj * bk, axis=1)
        return dq, dk, dv

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros((bsz, sp, nkv, dim), jnp.float32),
            jnp.zeros((bsz, sp, nkv, dim), jnp.float32))
    dq, dk, dv = jax.lax.fori_loop(0, n_kb, key_block, init)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q, k, v, kv_len, seg, causal, bq, bk):
    return _flash_forward(q, k, v, kv_len, seg, causal, bq, bk)[0]


def _flash_fwd(q, k, v, kv_len, seg, causal, bq, bk):
    out, lse = _flash_forward(q, k, v, kv_len, seg, causal, bq, bk)
    return out, (q, k, v, kv_len, seg, out, lse)


def _flash_bwd(causal, bq, bk, res, dout):
    q, k, v, kv_len, seg, out, lse = res
    dq, dk, dv = _flash_backward(q, k, v, kv_len, seg, out, lse, dout, causal, bq, bk)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(q, k, v, *, causal, kv_lengths=None, segment_ids=None, block_q=512, block_kv=512):
    """Flash attention in pure JAX: float32 online softmax over [block_q, block_kv] tiles, GQA without
    repeating K/V, causal key blocks above the diagonal (and past the longest kv_length) skipped, and a
    flash backward. Lengths that do not divide the blocks are padded internally (padded keys are masked)."""
    bsz, tq, nh, dim = q.shape
    tk, nkv = k.shape[1], k.shape[2]
    if nh % nkv:
        raise ValueError(f"blockwise attention: {nh} query heads are not a multiple of {nkv} kv heads")
    if block_q < 1 or block_kv < 1:
        raise ValueError(f"blockwise attention: block_q={block_q}, block_kv={block_kv} must be positive")
    bq, bk = min(block_q, tq), min(block_kv, tk)
    tp, sp = _round_up(tq, bq), _round_up(tk, bk)
    kv_len = jnp.full((bsz,), tk, jnp.int32) if kv_lengths is None else jnp.minimum(kv_lengths, tk)
    seg = None
    if segment_ids is not None:
        # Queries and keys share the ids (T == S); internal padding gets 0 (real queries never see it).
        seg = _pad_axis(segment_ids.astype(jnp.int32), max(tp, sp), axis=1)
    qg = _pad_axis(q, tp, axis=1).reshape(bsz, tp, nkv, nh // nkv, dim)
    out = _flash(qg, _pad_axis(k, sp, axis=1), _pad_axis(v, sp, axis=1), kv_len, seg, bool(causal), bq, bk)
    return out.reshape(bsz, tp, nh, dim)[:, :tq]


# ---------------------------------------------------------------------------------------------------------
# splash: the Pallas TPU kernel


def _platform():
    """Platform of the devices the current program is traced for: the current mesh's, else the default."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    if device is not None and getattr(device, "platform", None):
        return device.platform
    return jax.default_backend()


def splash_block(length, block=SPLASH_BLOCK):
    """Tile (rows or keys) of a splash call: multiples of 128 lanes. A sequence up to 1.5 * block long is one
    tile (SigLIP's 729 patches: one 768 tile instead of 2 x 512 with 295 padded rows); longer ones use block."""
    padded = _round_up(length, 128)
    return padded if padded <= block + block // 2 else block


def _splash_local(q, k, v, q_seg, kv_seg, *, causal, block, interpret):
    """Per-shard splash call: q [B, T, N, D], k/v [B, S, K, D], q_seg [B, T], kv_seg [B, S] (0 = invisible)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa  # why: the TPU-only Pallas kernel

    tq, nh, dim = q.shape[1:]
    tk = k.shape[1]
    bq, bk = splash_block(tq, block), splash_block(tk, block)
    tp, sp = _round_up(tq, bq), _round_up(tk, bk)
    q_seg, kv_seg = _pad_axis(q_seg, tp, axis=1), _pad_axis(kv_seg, sp, axis=1)
    # The kernel does not scale the logits; [B, N, T, D] layout; padded keys carry segment 0.
    qh = jnp.swapaxes(_pad_axis(q * jnp.asarray(1.0 / math.sqrt(dim), q.dtype), tp, axis=1), 1, 2)
    kh = jnp.swapaxes(_pad_axis(k, sp, axis=1), 1, 2)
    vh = jnp.swapaxes(_pad_axis(v, sp, axis=1), 1, 2)
    head_mask = sa.CausalMask((tp, sp)) if causal else sa.FullMask((tp, sp))
    # Separate dq and dkv backward kernels (7 matmuls per block pair). The fused one (5) keeps a partial dq
    # per key block, [S / bk, B, N, T, D]: 1.7x the step's temporaries at 8k tokens, so it is not used.
    sizes = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                          block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    # Query heads h use kv head h // (N / K) inside the kernel (GQA without repeating K/V).
    kernel = sa.make_splash_mha(sa.MultiHeadMask([head_mask] * nh), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, interpret=interpret,
                                residual_checkpoint_name=remat.KERNEL_RESIDUALS)
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=sa.SegmentIds(q_seg, kv_seg))
    return jnp.swapaxes(out, 1, 2)[:, :tq]


def splash_specs(mesh, q_shape, k_shape, rules=None):
    """(q/k/v spec, segment-ids spec) of the splash shard_map, from the sharding rule table (default
    sharding.DEFAULT_SHARDING_RULES): the batch as the rule 'batch' maps it, query and kv heads both as
    'act_heads' maps them (replicated unless both counts divide: a shard's query heads must find their kv heads),
    the sequence and head_dim whole (the kernel sees every key). Shape-aware: an axis that does not divide is
    dropped."""
    q_spec = shd.activation_spec(("batch", None, "act_heads", None), rules, q_shape, mesh)
    kv_spec = shd.activation_spec(("batch", None, "act_heads", None), rules, k_shape, mesh)
    heads = q_spec[2] if q_spec[2] == kv_spec[2] else None
    return P(q_spec[0], None, heads, None), P(q_spec[0], None)


def splash_attention(q, k, v, *, causal, kv_lengths=None, segment_ids=None, block=SPLASH_BLOCK, interpret=None,
                     rules=None):
    """Splash attention (Pallas TPU), shard_mapped over the current mesh as the rule table `rules` splits the
    batch and heads (splash_specs; by default batch over ('data', 'fsdp') and heads over 'tensor', replicated
    when the query or kv heads do not divide it). Right padding
    and packing become the kernel's SegmentIds: a query sees a key only when both carry the same id and
    padding keys carry 0, which no real query has. interpret=None runs the Pallas interpreter off TPU."""
    bsz, tq, nh, dim = q.shape
    tk, nkv = k.shape[1], k.shape[2]
    if nh % nkv:
        raise ValueError(f"splash attention: {nh} query heads are not a multiple of {nkv} kv heads")
    if interpret is None:
        interpret = _platform() != "tpu"
    q_seg = jnp.ones((bsz, tq), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    kv_seg = jnp.ones((bsz, tk), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    if kv_lengths is not None:
        kv_seg = jnp.where(jnp.arange(tk)[None] < kv_lengths[:, None], kv_seg, 0)
    local = functools.partial(_splash_local, causal=bool(causal), block=block, interpret=bool(interpret))

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, q_seg, kv_seg)
    qkv_spec, seg_spec = splash_specs(mesh, q.shape, k.shape, rules)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec, seg_spec),
                       out_specs=qkv_spec, check_vma=False)
    return fn(q, k, v, q_seg, kv_seg)


# ---------------------------------------------------------------------------------------------------------


_LOGGED_CHOICES = set()


def choose_kernel(platform, q_shape, k_shape, dtype, packed: bool):
    """(kernel name, reason) that `auto` runs for these shapes on `platform` (see the module docstring)."""
    if q_shape[1] != k_shape[1] or q_shape[1] == 1:
        return "xla", "decode step or cross-length call: one score row per head"
    if platform == "tpu":
        return "splash", "TPU"
    if platform in ("gpu", "cuda"):
        if dtype not in (jnp.bfloat16, jnp.float16) or q_shape[-1] % 8 or q_shape[-1] > 128:
            return "blockwise", f"cuDNN needs bf16/fp16 and head_dim % 8 == 0, <= 128 (got {dtype}, {q_shape[-1]})"
        if packed and not cudnn_supports_packing():
            return "blockwise", "packing, and this JAX / GPU has no cuDNN packed layout (needs sm90+)"
        return "cudnn", "GPU" + (", packed layout" if packed else "")
    if q_shape[1] * k_shape[1] <= AUTO_XLA_MAX_SCORES:
        return "xla", f"{platform}: scores up to {AUTO_XLA_MAX_SCORES} per head"
    return "blockwise", f"{platform}: scores above {AUTO_XLA_MAX_SCORES} per head"


def auto_attention(q, k, v, *, causal, kv_lengths=None, segment_ids=None, rules=None):
    """Pick the fastest exact path for the platform the program is traced for (choose_kernel); each distinct
    choice is logged once."""
    platform = _platform()
    kernel, why = choose_kernel(platform, q.shape, k.shape, q.dtype, segment_ids is not None)
    key = (platform, kernel, why, q.shape[1], k.shape[1])
    if key not in _LOGGED_CHOICES:
        _LOGGED_CHOICES.add(key)
        logging.info("attention 'auto': %s for q %s k %s %s on %s (%s)", kernel, tuple(q.shape), tuple(k.shape),
                     q.dtype, platform, why)
    return _call(kernel, q, k, v, causal=causal, kv_lengths=kv_lengths, segment_ids=segment_ids, rules=rules)


# The one list of kernels: config validation (model/spec.ATTENTION_IMPLS) reads its names from here.
IMPLEMENTATIONS = {"auto": auto_attention, "xla": xla_attention, "blockwise": blockwise_attention,
                   "splash": splash_attention, "cudnn": cudnn_attention}


# Kernels that shard_map themselves and so take the sharding rule table (the others follow their inputs').
TAKES_RULES = ("splash", "auto")


def _call(kernel, q, k, v, *, rules, **mask):
    extra = {"rules": rules} if kernel in TAKES_RULES else {}
    return IMPLEMENTATIONS[kernel](q, k, v, **mask, **extra)


def attention(q, k, v, *, impl, causal, kv_lengths=None, segment_ids=None, rules=None):
    """Dispatch to `IMPLEMENTATIONS[impl]` (see the module docstring for the masking contract); `rules` is the
    model's sharding rule table (config.sharding_rules), which the shard_mapped kernels split by."""
    if kv_lengths is not None:
        kv_lengths = kv_lengths.astype(jnp.int32)
    if segment_ids is not None and segment_ids.shape != q.shape[:2]:
        raise ValueError(f"segment_ids {segment_ids.shape} must be [B, T] = {q.shape[:2]}")
    if segment_ids is not None and k.shape[1] != q.shape[1]:
        raise ValueError(f"segment_ids need self-attention (T == S), got T={q.shape[1]}, S={k.shape[1]}")
    if (impl or "xla") not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl={impl!r}: expected one of {sorted(IMPLEMENTATIONS)}")
    return _call(impl or "xla", q, k, v, causal=causal, kv_lengths=kv_lengths, segment_ids=segment_ids, rules=rules)
