"""LM loss from hidden states: "chunked" and "supervised" equal "full" in value and in gradients (w.r.t. the hidden
states and the LM head), including rows without supervised tokens, the >K fallback and a chunk size that does not
divide L; and the tiny train step's loss and grads are the same with every setting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from llavaction_jax import sharding as shd
from llavaction_jax.train import losses, state as state_lib, step as step_lib, synthetic_batches

B, L, H, V = 4, 45, 16, 97


def _inputs():
    rng = np.random.RandomState(0)
    hidden = jnp.asarray(rng.randn(B, L, H), jnp.float32)
    w = jnp.asarray(rng.randn(H, V) * 0.5, jnp.float32)
    labels = np.full((B, L), losses.IGNORE_INDEX, np.int32)
    labels[0, 10:16] = rng.randint(0, V, 6)          # 6 supervised targets (labels[t + 1] for t = 9..14)
    # row 1: no supervised token at all
    labels[2, 1:40] = rng.randint(0, V, 39)          # 39 targets: more than K = 8
    labels[3, 0] = 7                                 # position -1 does not exist: labels[:, 0] never counts
    labels[3, L - 3:] = rng.randint(0, V, 3)         # the last label is predicted by position L - 2
    return hidden, w, jnp.asarray(labels)


def _value_and_grads(mode, hidden, w, labels, chunk_size=8, max_supervised=8):
    def f(h, w):
        total, count = losses.lm_loss_sums_from_hidden(lambda x: jnp.dot(x, w), h, labels, mode=mode,
                                                       chunk_size=chunk_size, max_supervised=max_supervised)
        return total, count

    (total, count), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(hidden, w)
    return float(total), float(count), jax.device_get(grads)


def _assert_same(got, want):
    assert got[1] == want[1]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for g, r in zip(got[2], want[2]):
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-6 * max(1.0, float(np.abs(r).max())))


def test_full_mode_is_lm_loss_sums():
    hidden, w, labels = _inputs()
    total, count = losses.lm_loss_sums(jnp.dot(hidden, w), labels)
    full = _value_and_grads("full", hidden, w, labels)
    assert full[1] == float(count) == 6 + 0 + 39 + 3
    np.testing.assert_allclose(full[0], float(total), rtol=1e-7)
    # Row 1 has no supervised token, row 3's labels[:, 0] is ignored: their hidden grads are exactly zero there.
    assert np.all(full[2][0][1] == 0.0)
    assert np.all(full[2][0][3, :L - 4] == 0.0) and np.all(full[2][0][3, L - 4:L - 1] != 0.0) and np.all(full[2][0][3, L - 1] == 0.0)


@pytest.fixture(scope="module")
def full_reference():
    hidden, w, labels = _inputs()
    return _value_and_grads("full", hidden, w, labels)


@pytest.mark.parametrize("chunk_size", [7, 100, 1])
def test_chunked_equals_full(chunk_size, full_reference):
    """7 does not divide L = 45; 100 > L is one chunk; 1 is one position per chunk."""
    hidden, w, labels = _inputs()
    _assert_same(_value_and_grads("chunked", hidden, w, labels, chunk_size=chunk_size), full_reference)


@pytest.mark.parametrize("max_supervised,chunk_size", [(40, 8), (39, 45), (8, 8), (38, 3)])
def test_supervised_equals_full_including_fallback(max_supervised, chunk_size, full_reference):
    """K >= 39 gathers (row 2 has exactly 39 targets); K = 8 or 38 < 39 takes the exact chunked fallback."""
    hidden, w, labels = _inputs()
    _assert_same(_value_and_grads("supervised", hidden, w, labels, chunk_size, max_supervised), full_reference)


def test_supervised_with_no_supervised_token_at_all():
    hidden, w, _ = _inputs()
    labels = jnp.full((B, L), losses.IGNORE_INDEX, jnp.int32)
    for mode in ("chunked", "supervised"):
        total, count, (gh, gw) = _value_and_grads(mode, hidden, w, labels)
        assert total == 0.0 and count == 0.0
        assert not np.any(gh) and not np.any(gw)


def test_bad_mode_and_knobs():
    hidden, w, labels = _inputs()
    fn = lambda x: jnp.dot(x, w)
    ok = dict(mode="supervised", chunk_size=8, max_supervised=8)
    with pytest.raises(ValueError, match=r"config.train.lm_loss must be one of .* got 'sparse'"):
        losses.lm_loss_sums_from_hidden(fn, hidden, labels, **{**ok, "mode": "sparse"})
    with pytest.raises(ValueError, match="lm_loss_chunk_size must be >= 1, got 0"):
        losses.lm_loss_sums_from_hidden(fn, hidden, labels, **{**ok, "chunk_size": 0})
    with pytest.raises(ValueError, match="lm_loss_max_supervised must be >= 1, got 0"):
        losses.lm_loss_sums_from_hidden(fn, hidden, labels, **{**ok, "max_supervised": 0})
    with pytest.raises(ValueError, match=r"hidden must be \[B, L, H\] and labels \[B, L\]"):
        losses.lm_loss_sums_from_hidden(fn, hidden, labels[:, 1:], **ok)


def _step_config(lm_loss, chunk_size=512, max_supervised=1024):
    cfg = tiny.get_config()
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    cfg.optim.update(freeze=("^vision/",))
    cfg.train.update(lm_loss=lm_loss, lm_loss_chunk_size=chunk_size, lm_loss_max_supervised=max_supervised)
    return cfg


def test_train_step_loss_and_grads_same_for_every_setting():
    """The tiny model's loss + grads per setting. Synthetic rows have 2..8 targets: with K = 7 the first batch
    (a row of 8) takes the fallback and the second (that row cut to 7) the gathered path, in the SAME compiled
    step; chunk 24 does not divide L = 64."""
    cfg = _step_config("full")
    mesh = shd.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    setup = state_lib.build_setup(cfg, mesh)           # the setup does not depend on config.train.lm_loss*
    params = state_lib.init_state(setup, cfg)["params"]
    arrays = synthetic_batches.synthetic_arrays(cfg, 8, 64, seed=3)
    counts = (arrays["labels"][:, 1:] != losses.IGNORE_INDEX).sum(1)
    assert counts.max() == 8 and (counts == 8).sum() == 1 and counts.min() > 0
    cut = {k: v.copy() for k, v in arrays.items()}
    row = int(np.argmax(counts))
    first = 1 + int(np.argmax(cut["labels"][row, 1:] != losses.IGNORE_INDEX))
    cut["labels"][row, first] = losses.IGNORE_INDEX
    batches = [next(synthetic_batches.ArrayBatchIterator(a, 8, mesh, seed=0)) for a in (arrays, cut)]
    results = {}
    for name, args in {"full": ("full",), "chunked": ("chunked", 24), "supervised": ("supervised", 24, 7)}.items():
        fn = jax.jit(step_lib.make_loss_and_grads(setup, _step_config(*args)))
        for b, batch in enumerate(batches):
            loss, aux, grads, n_tok, _ = fn(params, batch)
            results[name, b] = (float(loss), float(aux["lm_sum"]), float(aux["ce_verb_sum"]), jax.device_get(grads))
    assert results["full", 0][1] > results["full", 1][1] > 0 and results["full", 0][2] > 0
    for (name, b), got in results.items():
        want = results["full", b]
        leaves = jax.tree.leaves(want[3])
        assert len(leaves) > 10
        np.testing.assert_allclose(got[:3], want[:3], rtol=2e-6, err_msg=name)
        for g, r in zip(jax.tree.leaves(got[3]), leaves):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-6 * max(1.0, float(np.abs(r).max())), err_msg=name)


def test_compiled_memory_full_vs_chunked_vs_supervised():
    """XLA memory_analysis of loss + grads (deterministic): "full" holds [B, L, V] f32 logits and more; "chunked" and
    "supervised" (both cond branches compiled) stay under 3 chunks' worth of [B, C, V] f32 logits."""
    from benchmarks.lm_loss_memory import measure
    b, length, h, v, chunk = 2, 2048, 64, 8192, 256
    temp = {mode: measure(mode, batch=b, length=length, hidden=h, vocab=v, chunk_size=chunk, max_supervised=256)[0]
            for mode in losses.LM_LOSS_MODES}
    full_logits, chunk_logits = b * length * v * 4, b * chunk * v * 4
    assert temp["full"] > 2 * full_logits
    assert temp["chunked"] < 3 * chunk_logits and temp["supervised"] < 3 * chunk_logits
