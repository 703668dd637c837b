"""Training losses: next-token cross-entropy over supervised tokens, plus the LLaVAction action-token heads.

Both come in two forms: `*_sums` return (sum, count) so a step can divide by the GLOBAL batch count (exact
under gradient accumulation and any sharding), and the plain forms return the mean for one batch.
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
