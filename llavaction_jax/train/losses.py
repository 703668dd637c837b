"""Training losses: next-token cross-entropy over supervised tokens, plus the LLaVAction action-token heads.

Both come in two forms: `*_sums` return (sum, count) so a step can divide by the GLOBAL batch count (exact
under gradient accumulation and any sharding), and the plain forms return the mean for one batch.

`lm_loss_sums_from_hidden` computes the LM loss from final-norm hidden states without ever materialising the
[B, L, V] float32 logits ("chunked", "supervised"); "full" is the reference.
"""
import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100
ACTION_PARTS = ("verb", "noun", "action")


def lm_loss_sums(logits, labels):
    """(sum of token CE, number of supervised tokens). HF convention: logits[:, :-1] predict labels[:, 1:]."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    return jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid).astype(jnp.float32)


def _next_token_targets(labels):
    """labels[:, t + 1] aligned with position t (HF shift); the last position predicts nothing."""
    pad = jnp.full((labels.shape[0], 1), IGNORE_INDEX, labels.dtype)
    return jnp.concatenate([labels[:, 1:], pad], axis=1)


def _ce_sum(logits_fn, hidden, targets):
    """Sum of CE over the positions with a target != IGNORE_INDEX; hidden [..., H], targets [...]."""
    valid = targets != IGNORE_INDEX
    logits = logits_fn(hidden).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    return jnp.sum(jnp.where(valid, ce, 0.0))


def _chunked_ce_sum(logits_fn, hidden, targets, chunk_size):
    """Sum of CE over [B, T] positions, `chunk_size` positions at a time.

    Each chunk's logits live only inside a jax.checkpoint'ed scan body: the backward recomputes them instead
    of keeping [B, T, V] residuals, so at most one chunk's [B, C, V] logits (and their grads) exist at once.
    T need not divide by chunk_size: the tail is padded with IGNORE_INDEX targets (zero-weight positions).
    """
    bsz, length, width = hidden.shape
    chunk = max(1, min(int(chunk_size), length))
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
    hs = hidden.reshape(bsz, n, chunk, width).swapaxes(0, 1)          # [n, B, C, H]
    ts = targets.reshape(bsz, n, chunk).swapaxes(0, 1)                # [n, B, C]
    body = jax.checkpoint(lambda h, t: _ce_sum(logits_fn, h, t))

    def step(total, xs):
        return total + body(*xs), None

    total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), (hs, ts))
    return total


def _supervised_ce_sum(logits_fn, hidden, targets, max_supervised, chunk_size):
    """LM head only at each row's first `max_supervised` supervised positions (gathered, then chunked).

    Exact: when some row has more supervised positions than that, the whole batch takes the chunked path
    instead (a run-time lax.cond), so no token is ever dropped.
    """
    length = hidden.shape[1]
    k = max(1, min(int(max_supervised), length))
    valid = targets != IGNORE_INDEX
    counts = jnp.sum(valid, axis=1)

    def gathered(h, t):
        # Indices of the supervised positions first (in order), then padding positions marked IGNORE.
        idx = jax.vmap(lambda v: jnp.nonzero(v, size=k, fill_value=0)[0])(valid)
        keep = jnp.arange(k)[None, :] < counts[:, None]
        h_sel = jnp.take_along_axis(h, idx[:, :, None], axis=1)                 # [B, K, H]
        t_sel = jnp.where(keep, jnp.take_along_axis(t, idx, axis=1), IGNORE_INDEX)
        return _chunked_ce_sum(logits_fn, h_sel, t_sel, chunk_size)

    def chunked(h, t):
        return _chunked_ce_sum(logits_fn, h, t, chunk_size)

    return jax.lax.cond(jnp.max(counts) <= k, gathered, chunked, hidden, targets)


LM_LOSS_MODES = ("full", "chunked", "supervised")


def lm_loss_sums_from_hidden(logits_fn, hidden, labels, *, mode, chunk_size, max_supervised):
    """(sum of token CE, number of supervised tokens) from final-norm hidden states [B, L, H].

    mode / chunk_size / max_supervised are config.train.lm_loss / lm_loss_chunk_size / lm_loss_max_supervised
    (defaults and the reason for the default mode: configs/base.py).

    logits_fn maps hidden [..., H] to logits [..., V] (model.lm_logits). Same values as
    lm_loss_sums(logits_fn(hidden), labels) for every mode; they differ in memory and FLOPs:
      full:       all [B, L, V] float32 logits (reference);
      chunked:    chunk_size positions at a time under jax.checkpoint (peak one [B, C, V] chunk);
      supervised: LM head only at <= max_supervised supervised positions per row, chunked; exact fallback to
                  chunked when a row has more.
    """
    if mode not in LM_LOSS_MODES:
        raise ValueError(f"config.train.lm_loss must be one of {LM_LOSS_MODES}, got {mode!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"config.train.lm_loss_chunk_size must be >= 1, got {chunk_size}")
    if int(max_supervised) < 1:
        raise ValueError(f"config.train.lm_loss_max_supervised must be >= 1, got {max_supervised}")
    if hidden.ndim != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, L, H] and labels [B, L], got {hidden.shape} and {labels.shape}")
    if mode == "full":
        return lm_loss_sums(logits_fn(hidden), labels)
    targets = _next_token_targets(labels)
    count = jnp.sum(targets != IGNORE_INDEX).astype(jnp.float32)
    if mode == "chunked":
        return _chunked_ce_sum(logits_fn, hidden, targets, chunk_size), count
    return _supervised_ce_sum(logits_fn, hidden, targets, max_supervised, chunk_size), count


def lm_loss(logits, labels):
    """Mean token cross-entropy over supervised tokens (0 when there are none)."""
    total, count = lm_loss_sums(logits, labels)
    return total / jnp.maximum(count, 1.0)


def action_valid(actions):
    """Samples with an EK100 action label ([verb, noun, action] all >= 0); actions [B, 3] or packed [B, P, 3]."""
    return jnp.all(actions >= 0, axis=-1)


def action_loss_sums(out, actions):
    """Per-head (CE sum, correct count) over valid samples, and the number of valid samples.

    Packed batches: actions [B, P, 3] with logits [B, P, C], one (row, video) pair per sample; unused video
    slots carry -1 and drop out like unlabelled samples.
    """
    valid = action_valid(actions)
    sums, correct = {}, {}
    for i, name in enumerate(ACTION_PARTS):
        logits = getattr(out, f"{name}_logits").astype(jnp.float32)
        target = jnp.where(valid, actions[..., i], 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
        sums[name] = jnp.sum(jnp.where(valid, ce, 0.0))
        correct[name] = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == target, False)).astype(jnp.float32)
    return sums, correct, jnp.sum(valid).astype(jnp.float32)


def combine_action_parts(sums, count, parts=(0.5, 0.5, 0.1)):
    """sum_k parts[k] * CE_k over valid samples / count; 0 when no sample is valid."""
    total = sum(w * sums[name] for w, name in zip(parts, ACTION_PARTS))
    return total / jnp.maximum(count, 1.0)


def action_loss(out, actions, parts=(0.5, 0.5, 0.1)):
    """LLaVAction head loss 0.5*CE_verb + 0.5*CE_noun + 0.1*CE_action, mean over valid samples (0 if none).

    The trainer multiplies it by config.train.action_loss_weight (0.05 = 0.1 / (1 layer + 1), as released).
    """
    sums, _, count = action_loss_sums(out, actions)
    return combine_action_parts(sums, count, parts)
