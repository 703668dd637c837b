"""Pooling equals PyTorch; newline layouts / action token give the exact reference token order."""
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from configs import tiny
from llavaction_jax.model import (LlavaActionModel, arrange_video_tokens, num_video_tokens, pool2d,
                                  splice_video_tokens)


def _torch_pool(x_nhwc, mode, stride):
    t = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()   # as LLaVA-NeXT get_2dPool
    if mode == "bilinear":
        size = [math.ceil(t.shape[2] / stride), math.ceil(t.shape[3] / stride)]
        y = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
    elif mode == "average":
        y = F.avg_pool2d(t, stride)
    else:
        y = F.max_pool2d(t, stride)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("mode", ["bilinear", "average", "max"])
@pytest.mark.parametrize("rows,cols", [(27, 27), (5, 5), (7, 7), (5, 7), (4, 4)])
def test_pool2d_matches_torch(mode, rows, cols):
    x = np.random.RandomState(rows * 31 + cols).randn(3, rows, cols, 6).astype(np.float32)
    got = np.asarray(pool2d(jnp.asarray(x), mode, 2))
    want = _torch_pool(x, mode, 2)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_pool2d_sizes_27():
    x = jnp.zeros((1, 27, 27, 2))
    assert pool2d(x, "bilinear", 2).shape == (1, 14, 14, 2)
    assert pool2d(x, "average", 2).shape == (1, 13, 13, 2)
    assert pool2d(x, "max", 2).shape == (1, 13, 13, 2)


NEWLINE, ACTION = -1.0, -2.0


def _coded_features(b, f, r, c):
    """Each feature vector holds one unique code b*1000 + f*100 + row*10 + col (all H entries)."""
    codes = np.zeros((b, f, r, c, 2), np.float32)
    for bi in range(b):
        for fi in range(f):
            for ri in range(r):
                for ci in range(c):
                    codes[bi, fi, ri, ci] = bi * 1000 + fi * 100 + ri * 10 + ci
    return codes


def _expected(b, f, r, c, position, action):
    """Independently written reference order (LLaVA-NeXT add_token_per_grid / per_frame / one_token)."""
    seqs = []
    for bi in range(b):
        seq = []
        for fi in range(f):
            for ri in range(r):
                for ci in range(c):
                    seq.append(bi * 1000 + fi * 100 + ri * 10 + ci)
                if position == "grid":
                    seq.append(NEWLINE)
            if position == "frame":
                seq.append(NEWLINE)
        if position == "one_token":
            seq.append(NEWLINE)
        if action:
            seq.append(ACTION)
        seqs.append(seq)
    return np.asarray(seqs, np.float32)


@pytest.mark.parametrize("position", ["grid", "one_token", "frame", "no_token"])
@pytest.mark.parametrize("action", [False, True])
def test_layout_order(position, action):
    b, f, r, c = 2, 3, 2, 4
    feats = jnp.asarray(_coded_features(b, f, r, c))
    newline = jnp.full((2,), NEWLINE)
    token = jnp.full((1, 2), ACTION) if action else None
    got = np.asarray(arrange_video_tokens(feats, newline, position, token))
    want = _expected(b, f, r, c, position, action)
    assert got.shape == (b, want.shape[1], 2)
    np.testing.assert_array_equal(got[..., 0], want)
    np.testing.assert_array_equal(got[..., 1], want)
    counts = {"grid": f * r * (c + 1), "frame": f * (r * c + 1), "one_token": f * r * c + 1, "no_token": f * r * c}
    assert got.shape[1] == counts[position] + int(action)


def test_num_video_tokens_reference_counts():
    cfg = tiny.get_config().model
    cfg.vision.image_size, cfg.vision.patch_size = 384, 14      # 27x27 SigLIP grid
    cfg.action_token = False
    assert num_video_tokens(cfg, 16) == 3360                     # LLaVA-Video grid, 16 x 14 x 15
    assert num_video_tokens(cfg, 64) == 13440
    cfg.action_token = True
    assert num_video_tokens(cfg, 16) == 3361
    cfg.action_token = False
    cfg.newline_position = "one_token"
    assert num_video_tokens(cfg, 16) == 3137                     # transformers LlavaOnevision
    cfg.newline_position = "frame"
    assert num_video_tokens(cfg, 16) == 16 * 197
    cfg.newline_position, cfg.pool_mode = "grid", "average"
    assert num_video_tokens(cfg, 16) == 16 * 13 * 14
    cfg.newline_position = "no_token"
    assert num_video_tokens(cfg, 16) == 16 * 169
    cfg.pool_mode = "bogus"
    with pytest.raises(ValueError, match="pool_mode"):
        num_video_tokens(cfg, 16)


def test_splice_puts_kth_token_in_kth_slot():
    text = jnp.zeros((2, 9, 1))
    slots = jnp.asarray([[0, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0, 0]], bool)
    video = jnp.asarray([[[10.], [11.], [12.]], [[20.], [21.], [22.]]])
    got = np.asarray(splice_video_tokens(text, slots, video))[..., 0]
    np.testing.assert_array_equal(got, [[0, 10, 11, 12, 0, 0, 0, 0, 0], [0, 0, 0, 0, 20, 21, 22, 0, 0]])


@pytest.mark.parametrize("position,pool", [("grid", "bilinear"), ("one_token", "average")])
def test_model_video_token_count_and_splice(position, pool):
    """The model's video sequence length equals num_video_tokens, and the slots receive it in order."""
    cfg = tiny.get_config().model
    cfg.newline_position, cfg.pool_mode = position, pool
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
    frames = 2
    n = num_video_tokens(cfg, frames)
    pix = jnp.asarray(np.random.RandomState(0).randn(2, frames, 32, 32, 3), jnp.float32)
    tokens = model.video_tokens(pix)
    assert tokens.shape == (2, n, cfg.text.hidden_size)
    # Action token is the last video token; the newline appears where the layout says.
    np.testing.assert_array_equal(tokens[0, -1], model.action.token[...][0])
    if position == "grid":
        side = 2 if pool == "bilinear" else 1
        np.testing.assert_array_equal(tokens[1, side], model.image_newline[...])
    ids = np.full((2, n + 5), 7, np.int32)
    ids[0, 1:1 + n] = cfg.video_token_id
    ids[1, 4:4 + n] = cfg.video_token_id
    embeds, slots = model.embed_inputs(jnp.asarray(ids), pix)
    np.testing.assert_allclose(embeds[0, 1:1 + n], tokens[0], atol=0)
    np.testing.assert_allclose(embeds[1, 4:4 + n], tokens[1], atol=0)
    np.testing.assert_allclose(embeds[0, 0], model.llm.embed_tokens.embedding[...][7], atol=0)


def test_bad_slot_count_is_a_clear_error():
    cfg = tiny.get_config().model
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
    ids = np.full((1, 12), 5, np.int32)
    ids[0, 2:7] = cfg.video_token_id
    pix = jnp.zeros((1, 4, 32, 32, 3))
    with pytest.raises(ValueError, match="row 0: 5 video slots"):
        model(jnp.asarray(ids), pix)
