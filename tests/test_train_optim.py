"""Optimizer (schedules, groups, freezing, decay mask, clipping) and losses, without the model."""
import math
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from llavaction_jax.train import losses, optimizer


def _optim(**kw):
    c = ml_collections.ConfigDict(dict(
        lr=1e-2, vision_lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_ratio=0.0,
        schedule="constant", grad_clip_norm=0.0, lr_overrides=(("^vision/", "vision_lr"),), freeze=(),
        weight_decay_exclude=(r"(^|/)bias$", r"(^|/)scale$", r"norm")))
    c.update(kw)
    return c


def _params():
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return {"vision": {"encoder": {"layers": {"mlp": {"fc1": {"kernel": f(2, 3, 4), "bias": f(2, 4)}}}}},
            "projector": {"linear_1": {"kernel": f(4, 5), "bias": f(5)}},
            "llm": {"norm": {"scale": f(5)}, "embed_tokens": {"embedding": f(7, 5)}}}


def test_cosine_schedule_matches_hf_formula():
    s = optimizer.make_schedule(1e-5, 100, optimizer.warmup_steps_for(100, 0.03), "cosine")
    assert optimizer.warmup_steps_for(100, 0.03) == 3          # ceil(0.03 * 100)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(1)), 1e-5 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(s(3)), 1e-5, rtol=1e-6)
    np.testing.assert_allclose(float(s(50)), 1e-5 * 0.5 * (1 + math.cos(math.pi * 47 / 97)), rtol=1e-5)
    assert abs(float(s(100))) < 1e-12
    lin = optimizer.make_schedule(2.0, 10, 0, "linear")
    np.testing.assert_allclose([float(lin(i)) for i in (0, 5, 10)], [2.0, 1.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="schedule"):
        optimizer.make_schedule(1.0, 10, 0, "exp")


def test_labels_groups_and_decay_mask():
    p = _params()
    labels = optimizer.param_labels(p, _optim(freeze=("^projector/",)))
    assert labels["vision"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"] == "^vision/"
    assert labels["projector"]["linear_1"]["kernel"] == "frozen"
    assert labels["llm"]["embed_tokens"]["embedding"] == "default"
    mask = optimizer.decay_mask(p, _optim())
    assert mask["projector"]["linear_1"]["kernel"] and mask["llm"]["embed_tokens"]["embedding"]
    assert not mask["projector"]["linear_1"]["bias"] and not mask["llm"]["norm"]["scale"]
    counts = optimizer.summarize_groups(p, _optim(freeze=("^projector/",)))
    assert counts == {"^vision/": 24 + 8, "frozen": 25, "default": 5 + 35}
    assert optimizer.group_lrs(_optim()) == {"default": 1e-2, "^vision/": 1e-3}
    with pytest.raises(ValueError, match="no_such_lr"):
        optimizer.group_lrs(_optim(lr_overrides=(("^x", "no_such_lr"),)))


def test_first_adam_step_is_lr_per_group_and_frozen_untouched():
    p = _params()
    cfg = _optim(freeze=("^projector/",))
    tx, scheds = optimizer.make_optimizer(cfg, 10, p)
    assert set(scheds) == {"default", "^vision/"}
    state = tx.init(p)
    # Frozen params get no Adam moments (set_to_zero has no state).
    assert len(jax.tree.leaves(state)) < 3 * len(jax.tree.leaves(p))
    g = jax.tree.map(lambda x: jnp.full_like(x, 0.3) * jnp.sign(jnp.arange(x.size).reshape(x.shape) - 1.5), p)
    upd, _ = tx.update(g, state, p)
    new = optax.apply_updates(p, upd)
    d = jax.tree.map(lambda a, b: np.abs(np.asarray(a - b)), new, p)
    # Adam step 1 (bias-corrected): |update| = lr * |g| / (|g| + eps) ~= lr.
    np.testing.assert_allclose(d["vision"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"], 1e-3, rtol=1e-4)
    np.testing.assert_allclose(d["llm"]["embed_tokens"]["embedding"], 1e-2, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(new["projector"]["linear_1"]["kernel"]),
                                  np.asarray(p["projector"]["linear_1"]["kernel"]))


def test_weight_decay_skips_bias_and_norm():
    p = _params()
    tx, _ = optimizer.make_optimizer(_optim(weight_decay=0.1), 10, p)
    zeros = jax.tree.map(jnp.zeros_like, p)
    new = optax.apply_updates(p, tx.update(zeros, tx.init(p), p)[0])
    k = p["projector"]["linear_1"]["kernel"]
    np.testing.assert_allclose(new["projector"]["linear_1"]["kernel"], k * (1 - 1e-2 * 0.1), rtol=1e-6)
    np.testing.assert_array_equal(new["projector"]["linear_1"]["bias"], p["projector"]["linear_1"]["bias"])
    np.testing.assert_array_equal(new["llm"]["norm"]["scale"], p["llm"]["norm"]["scale"])


def test_clipping_ignores_frozen_gradients():
    p = _params()
    cfg = _optim(freeze=("^projector/",), grad_clip_norm=1.0, schedule="constant")
    tx, _ = optimizer.make_optimizer(cfg, 10, p)
    g = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), p)
    g_big = jax.tree.map(lambda x: x, g)
    g_big["projector"]["linear_1"]["kernel"] = 1e6 * jnp.ones_like(p["projector"]["linear_1"]["kernel"])
    s = tx.init(p)
    u1, _ = tx.update(g, s, p)
    u2, _ = tx.update(g_big, s, p)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _np_ce(logits, t):
    z = logits - logits.max(-1, keepdims=True)
    return -(z[t] - np.log(np.exp(z).sum()))


def test_lm_loss_shift_and_ignore():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
    labels = np.array([[-100, -100, 4, 7, -100], [-100, 3, -100, -100, 9]], np.int32)
    expect = [_np_ce(logits[0, 1], 4), _np_ce(logits[0, 2], 7), _np_ce(logits[1, 0], 3), _np_ce(logits[1, 3], 9)]
    np.testing.assert_allclose(float(losses.lm_loss(jnp.asarray(logits), jnp.asarray(labels))),
                               np.mean(expect), rtol=1e-6)
    total, count = losses.lm_loss_sums(jnp.asarray(logits), jnp.asarray(labels))
    assert float(count) == 4.0
    none = np.full_like(labels, -100)
    assert float(losses.lm_loss(jnp.asarray(logits), jnp.asarray(none))) == 0.0


def test_action_loss_valid_samples_only():
    rng = np.random.default_rng(2)
    out = types.SimpleNamespace(verb_logits=jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                                noun_logits=jnp.asarray(rng.normal(size=(3, 6)), jnp.float32),
                                action_logits=jnp.asarray(rng.normal(size=(3, 9)), jnp.float32))
    actions = np.array([[1, 2, 3], [-1, -1, -1], [3, 5, 8]], np.int32)
    expect = np.mean([0.5 * _np_ce(np.asarray(out.verb_logits[i]), actions[i, 0])
                      + 0.5 * _np_ce(np.asarray(out.noun_logits[i]), actions[i, 1])
                      + 0.1 * _np_ce(np.asarray(out.action_logits[i]), actions[i, 2]) for i in (0, 2)])
    np.testing.assert_allclose(float(losses.action_loss(out, jnp.asarray(actions))), expect, rtol=1e-6)
    assert float(losses.action_loss(out, jnp.full((3, 3), -1, jnp.int32))) == 0.0
    _, correct, count = losses.action_loss_sums(out, jnp.asarray(actions))
    assert float(count) == 2.0
    assert float(correct["verb"]) == sum(int(np.argmax(out.verb_logits[i]) == actions[i, 0]) for i in (0, 2))
