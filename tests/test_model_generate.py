"""KV-cache greedy generation == repeated full forwards (batch of 2, different prompt lengths, video)."""
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from llavaction_jax.model import LlavaActionModel, generate, num_video_tokens

MAX_NEW = 6


def _reference_greedy(model, prompts, pix, steps):
    """Greedy decoding by full forwards of the growing, right-padded sequences (no cache)."""
    total = max(len(p) for p in prompts) + steps
    forward = nnx.jit(lambda m, ids, px, mask: m(ids, px, mask).logits)
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        ids = np.zeros((len(seqs), total), np.int32)
        mask = np.zeros_like(ids)
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = s
            mask[b, :len(s)] = 1
        logits = np.asarray(forward(model, ids, pix, mask))
        for b, s in enumerate(seqs):
            s.append(int(logits[b, len(s) - 1].argmax()))
    return [s[len(p):] for s, p in zip(seqs, prompts)]


def test_kv_cache_generation_matches_full_forward():
    cfg = tiny.get_config().model
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(3))
    frames = 2
    n = num_video_tokens(cfg, frames)
    rng = np.random.RandomState(1)
    prompts = [[1, 9, 10] + [cfg.video_token_id] * n + list(rng.randint(4, 512, 7)),
               [1, 11] + [cfg.video_token_id] * n + list(rng.randint(4, 512, 3))]
    length = max(len(p) for p in prompts)
    ids = np.zeros((2, length), np.int32)
    mask = np.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
        mask[b, :len(p)] = 1
    pix = rng.randn(2, frames, 32, 32, 3).astype(np.float32)

    want = _reference_greedy(model, prompts, pix, MAX_NEW)
    got = np.asarray(generate(model, ids, pix, mask, MAX_NEW, eos_id=-1))   # eos never produced
    assert got.dtype == np.int32 and got.shape == (2, MAX_NEW)
    np.testing.assert_array_equal(got, np.asarray(want))

    # Stop at eos per sample (eos emitted, pad afterwards): take sample 0's 3rd token as eos.
    eos = want[0][2]
    got = np.asarray(generate(model, ids, pix, mask, MAX_NEW, eos_id=eos, pad_id=0))
    for b in range(2):
        stop = want[b].index(eos) + 1 if eos in want[b] else MAX_NEW
        expected = want[b][:stop] + [0] * (MAX_NEW - stop)
        np.testing.assert_array_equal(got[b], expected)
    assert got[0, 3:].tolist() == [0] * (MAX_NEW - 3)


def test_generate_text_only_and_jit_reuse():
    """Text-only prompts (pixel_values None), unrolled layers, and repeated calls reuse the compile."""
    cfg = tiny.get_config().model
    cfg.action_token, cfg.scan_layers = False, False
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
    prompts = [[1, 5, 6, 7, 8], [1, 5]]
    ids = np.array([[1, 5, 6, 7, 8], [1, 5, 0, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    want = _reference_greedy(model, prompts, None, 4)
    got = np.asarray(generate(model, ids, None, mask, 4, eos_id=[-1, -2]))
    np.testing.assert_array_equal(got, np.asarray(want))
    from llavaction_jax.model.generate import _generate
    size = _generate._cache_size()
    again = generate(model, ids, None, mask, 4, eos_id=[want[0][1], -2])   # other eos ids: no recompile
    assert _generate._cache_size() == size
    assert np.asarray(again)[0].tolist() == want[0][:2] + [0, 0]
    with pytest.raises(ValueError, match="row 1 is not right-padded"):
        generate(model, ids, None, np.array([[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]), 4, eos_id=2)
