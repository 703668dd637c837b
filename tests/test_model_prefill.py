"""prefill_and_generate: one prefill gives the last-position next-token logits, the action-head logits and the
greedy tokens continued from its KV cache; all equal the separate full forward / `generate`; the LM head never
runs over [B, L, V], and letters alone build no KV cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from llavaction_jax.model import LlavaActionModel, generate, num_video_tokens
from llavaction_jax.model.generate import _prefill_and_generate, prefill_and_generate

MAX_NEW = 5


@pytest.fixture(scope="module")
def setup():
    cfg = tiny.get_config().model
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(4))
    frames = 2
    n = num_video_tokens(cfg, frames)
    rng = np.random.RandomState(2)
    prompts = [[1, 9] + [cfg.video_token_id] * n + list(rng.randint(4, 512, 9)),
               [1, 11, 12] + [cfg.video_token_id] * n + list(rng.randint(4, 512, 2))]
    length = max(len(p) for p in prompts) + 3                       # extra padding on both rows
    ids = np.zeros((2, length), np.int32)
    mask = np.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
        mask[b, :len(p)] = 1
    pix = rng.randn(2, frames, 32, 32, 3).astype(np.float32)
    out = nnx.jit(lambda m, i, p, k: m(i, p, k))(model, ids, pix, mask)
    return cfg, model, ids, pix, mask, [len(p) for p in prompts], out


def test_one_prefill_matches_forward_and_generate(setup):
    cfg, model, ids, pix, mask, lengths, full = setup
    res = prefill_and_generate(model, ids, pix, mask, MAX_NEW, eos_id=-1, action_heads=True)
    want_logits = np.stack([np.asarray(full.logits)[b, n - 1] for b, n in enumerate(lengths)])
    assert res.next_logits.shape == (2, cfg.text.vocab_size) and res.next_logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(res.next_logits), want_logits, rtol=1e-5, atol=1e-5)
    for got, want in zip(res.action_logits, (full.verb_logits, full.noun_logits, full.action_logits)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(res.tokens), np.asarray(generate(model, ids, pix, mask, MAX_NEW, -1)))
    assert np.asarray(res.tokens)[:, 0].tolist() == want_logits.argmax(-1).tolist()
    # Letters only: the same logits from a plain forward (no tokens, no heads unless asked).
    alone = prefill_and_generate(model, ids, pix, mask)
    assert alone.tokens is None and alone.action_logits is None
    np.testing.assert_allclose(np.asarray(alone.next_logits), np.asarray(res.next_logits), rtol=1e-6, atol=1e-6)
    # eos stops a row (eos emitted, pad after), like generate.
    eos = int(np.asarray(res.tokens)[0, 1])
    stopped = prefill_and_generate(model, ids, pix, mask, MAX_NEW, eos_id=eos, pad_id=0, action_heads=True)
    np.testing.assert_array_equal(np.asarray(stopped.tokens), np.asarray(generate(model, ids, pix, mask, MAX_NEW, eos)))
    assert np.asarray(stopped.tokens)[0, 2:].tolist() == [0] * (MAX_NEW - 2)


def test_no_full_logits_and_no_cache_for_letters_alone(setup):
    cfg, model, ids, pix, mask, _, _ = setup
    # 3 rows, so the stacked [layers=2, B=3, ...] keys/values cannot be confused with a per-layer activation.
    ids, pix, mask = (jnp.asarray(np.concatenate([x, x[:1]])) for x in (ids, pix, mask))
    graphdef, state = nnx.split(model)
    t = cfg.text
    bsz, length = ids.shape
    full_logits = f"f32[{bsz},{length},{t.vocab_size}]"
    kv = f"f32[{t.num_layers},{bsz},{length},{t.num_kv_heads},{t.head_dim}]"    # prefill keys/values, stacked
    cache = f"f32[{t.num_layers},{bsz},{length + MAX_NEW},{t.num_kv_heads},{t.head_dim}]"

    def hlo(max_new):
        return _prefill_and_generate.lower(graphdef, state, ids, pix, mask, jnp.asarray([-1], jnp.int32),
                                           jnp.int32(0), max_new_tokens=max_new,
                                           action_heads=True).compile().as_text()

    letters, both = hlo(0), hlo(MAX_NEW)
    assert full_logits not in letters and full_logits not in both
    assert f"f32[{bsz},{t.vocab_size}]" in letters                  # the LM head at one position per row
    assert cache in both and kv in both
    assert cache not in letters and kv not in letters


def test_bad_arguments(setup):
    cfg, model, ids, pix, mask, _, _ = setup
    with pytest.raises(ValueError, match="action_heads=True needs a model with the action token"):
        prefill_and_generate(model, ids, None, mask, action_heads=True)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -1"):
        prefill_and_generate(model, ids, pix, mask, -1)
    with pytest.raises(ValueError, match="every prompt needs at least one real token"):
        prefill_and_generate(model, ids, pix, np.zeros_like(mask))
