"""Every attention implementation that runs on CPU matches the `xla` reference: outputs and dq/dk/dv."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import tiny
from llavaction_jax import sharding as shd
from llavaction_jax.model import LlavaActionModel, num_video_tokens
from llavaction_jax.model import attention as attn

TOL = dict(atol=1e-5, rtol=1e-5)


def _inputs(bsz=2, length=37, heads=4, kv_heads=2, dim=16, seed=0):
    r = np.random.default_rng(seed)
    q = r.normal(size=(bsz, length, heads, dim)).astype(np.float32)
    k = r.normal(size=(bsz, length, kv_heads, dim)).astype(np.float32)
    v = r.normal(size=(bsz, length, kv_heads, dim)).astype(np.float32)
    w = r.normal(size=(bsz, length, heads, dim)).astype(np.float32)
    return q, k, v, w


def _masking(kind, bsz, length):
    """kwargs of attention() and the [B, T] rows whose outputs are defined (segment 0 is never read)."""
    if kind == "none":
        return {}, np.ones((bsz, length), bool)
    if kind == "kv_lengths":
        lens = np.array([length, length // 2 + 1] * (bsz // 2))
        return {"kv_lengths": jnp.asarray(lens)}, np.ones((bsz, length), bool)
    seg = np.zeros((bsz, length), np.int32)
    for b in range(bsz):  # packed samples of different lengths, then padding (0) for odd rows
        cuts = [0, 7 + 3 * b, 20 + b, length - 5 * (b % 2)]
        for i in range(3):
            seg[b, cuts[i]:cuts[i + 1]] = i + 1
    lens = {"kv_lengths": jnp.asarray((seg != 0).sum(1))} if kind == "segments+kv_lengths" else {}
    return {"segment_ids": jnp.asarray(seg), **lens}, seg != 0


@functools.lru_cache(maxsize=None)
def _value_and_grads(impl, causal, kind, bsz, length, heads, kv_heads, **extra):
    q, k, v, w = _inputs(bsz, length, heads, kv_heads)
    kwargs, rows = _masking(kind, bsz, length)
    fn = attn.IMPLEMENTATIONS[impl]
    if extra:
        fn = functools.partial(fn, **extra)
    rowmask = jnp.asarray(rows)[:, :, None, None]

    def loss(q, k, v):
        out = fn(q, k, v, causal=causal, **kwargs) * rowmask
        return jnp.sum(out * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return np.asarray(out), [np.asarray(g) for g in grads]


def _assert_matches_reference(impl, causal, kind, bsz=2, length=37, heads=4, kv_heads=2, **extra):
    out, grads = _value_and_grads(impl, causal, kind, bsz, length, heads, kv_heads, **extra)
    ref_out, ref_grads = _value_and_grads("xla", causal, kind, bsz, length, heads, kv_heads)
    assert np.abs(ref_out).max() > 0.1  # the comparison is not vacuous
    np.testing.assert_allclose(out, ref_out, **TOL, err_msg="out")
    for name, g, ref in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert np.abs(ref).max() > 0.1
        np.testing.assert_allclose(g, ref, **TOL, err_msg=name)


@pytest.mark.parametrize("causal,kind", [(True, "none"), (True, "kv_lengths"), (True, "segments+kv_lengths"),
                                         (False, "kv_lengths"), (False, "segments")])
def test_blockwise_matches_xla(causal, kind):
    # 37 tokens in blocks of 8 queries x 16 keys: padded internally, several key blocks skipped when causal.
    _assert_matches_reference("blockwise", causal, kind, block_q=8, block_kv=16)


def test_blockwise_mqa():
    _assert_matches_reference("blockwise", True, "kv_lengths", heads=4, kv_heads=1, block_q=16, block_kv=8)


@pytest.mark.parametrize("causal,kind", [(True, "segments+kv_lengths"), (False, "kv_lengths")])
def test_splash_interpreted_matches_xla(causal, kind):
    """The Pallas splash kernel runs in the interpreter on CPU (37 tokens padded to its 128-lane tile)."""
    _assert_matches_reference("splash", causal, kind)


def test_splash_several_blocks():
    # 200 tokens with 128-wide tiles: two query and two key blocks, the second one partly padding.
    _assert_matches_reference("splash", True, "segments", length=200, block=128)


def _sharded_vs_reference(impl, mesh_shape, heads, kv_heads, bsz=4):
    q, k, v, w = _inputs(bsz, 24, heads, kv_heads, seed=1)
    kwargs, rows = _masking("segments+kv_lengths", bsz, 24)
    rowmask = jnp.asarray(rows)[:, :, None, None]
    mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, mesh_shape)))

    def loss(impl, q, k, v):
        out = attn.attention(q, k, v, impl=impl, causal=True, **kwargs) * rowmask
        return jnp.sum(out * w), out

    results = {}
    for name in ("xla", impl):
        with jax.set_mesh(mesh):
            place = lambda x: jax.device_put(x, jax.sharding.NamedSharding(
                mesh, P(("data", "fsdp"), None, "tensor" if x.shape[2] % 2 == 0 else None, None)))
            args = [place(x) for x in (q, k, v)]
            fn = jax.jit(jax.value_and_grad(functools.partial(loss, name), argnums=(0, 1, 2), has_aux=True))
            (_, out), grads = fn(*args)
            results[name] = [np.asarray(x) for x in (out, *grads)]
    for name, got, want in zip(("out", "dq", "dk", "dv"), results[impl], results["xla"]):
        np.testing.assert_allclose(got, want, **TOL, err_msg=name)


def test_splash_shard_mapped_over_batch_and_heads():
    _sharded_vs_reference("splash", (2, 2, 2), heads=4, kv_heads=2)


def test_splash_heads_not_divisible_by_tensor_axis_are_replicated():
    # 1 kv head cannot split over tensor=2: heads stay whole, the batch still splits over data x fsdp.
    _sharded_vs_reference("splash", (2, 2, 2), heads=4, kv_heads=1)


def _rules(**override):
    """The default rule table with some entries remapped."""
    return tuple((name, override.get(name, target)) for name, target in shd.DEFAULT_SHARDING_RULES)


def test_splash_specs_follow_the_rule_table(monkeypatch):
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    q_shape, k_shape = (4, 24, 4, 16), (4, 24, 2, 16)
    assert attn.splash_specs(mesh, q_shape, k_shape) == (P(("data", "fsdp"), None, "tensor", None),
                                                        P(("data", "fsdp"), None))
    # A custom table moves both: the batch over 'tensor', heads over data x fsdp (4 query and 4 kv heads divide 4).
    moved = _rules(batch="tensor", act_heads=("data", "fsdp"))
    assert attn.splash_specs(mesh, q_shape, (4, 24, 4, 16), moved) == (P("tensor", None, ("data", "fsdp"), None),
                                                                      P("tensor", None))
    # 2 kv heads do not divide data x fsdp = 4: heads stay whole (a shard's query heads need their kv heads).
    assert attn.splash_specs(mesh, q_shape, k_shape, moved)[0] == P("tensor", None, None, None)
    # A table from before the activation names (no 'act_heads') leaves heads whole, as constrain does.
    old = tuple(r for r in shd.DEFAULT_SHARDING_RULES if not r[0].startswith("act_"))
    assert attn.splash_specs(mesh, q_shape, k_shape, old)[0] == P(("data", "fsdp"), None, None, None)

    # The model hands config.sharding_rules down to the splash wrapper (decoder and vision tower): the shard_map
    # of every splash call is given the moved specs.
    seen = []
    shard_map = jax.shard_map
    monkeypatch.setattr(jax, "shard_map", lambda f, **kw: seen.append(kw["in_specs"][0]) or shard_map(f, **kw))
    cfg = tiny.get_config().model
    cfg.attention_impl = "splash"
    moved = _rules(batch="tensor", act_heads="data")
    ids, pix, mask = _model_inputs(cfg)
    with jax.set_mesh(mesh):
        model = nnx.eval_shape(lambda: LlavaActionModel(cfg, rngs=nnx.Rngs(0), sharding_rules=moved))
        jax.eval_shape(lambda m: m(ids, pix, mask).logits, model)
    assert len(seen) == 2 and set(seen) == {P("tensor", None, "data", None)}, seen


def test_auto_on_cpu_is_blockwise_and_decode_is_xla(monkeypatch):
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh):
        assert attn._platform() == "cpu"
    q, k, v, _ = _inputs(2, 20, 4, 2)
    full = lambda q, k, v: attn.attention(q, k, v, impl="auto", causal=True)
    # Small scores (20 x 20 <= AUTO_XLA_MAX_SCORES): XLA's path; larger ones: the blockwise flash VJP.
    assert "custom_vjp_call" not in str(jax.make_jaxpr(full)(q, k, v))
    monkeypatch.setattr(attn, "AUTO_XLA_MAX_SCORES", 20 * 20 - 1)
    full = lambda q, k, v: attn.attention(q, k, v, impl="auto", causal=True)   # a new trace
    assert "custom_vjp_call" in str(jax.make_jaxpr(full)(q, k, v))
    np.testing.assert_allclose(attn.attention(q, k, v, impl="auto", causal=True),
                               attn.attention(q, k, v, impl="xla", causal=True), **TOL)
    # One query against a KV cache: xla (no custom VJP, no kernel).
    lens = jnp.array([5, 20])
    decode = lambda q, k, v: attn.attention(q[:, :1], k, v, impl="auto", causal=False, kv_lengths=lens)
    assert "custom_vjp_call" not in str(jax.make_jaxpr(decode)(q, k, v))
    np.testing.assert_allclose(decode(q, k, v), attn.xla_attention(q[:, :1], k, v, causal=False, kv_lengths=lens),
                               **TOL)


def test_blockwise_temporaries_do_not_grow_with_the_score_matrix():
    """XLA's CPU memory analysis (deterministic): the reference keeps [B, N, T, S] float32 scores (and their
    softmax for the backward), blockwise only [block_q, block_kv] tiles."""
    shape = jax.ShapeDtypeStruct((1, 4096, 2, 16), jnp.float32)

    def temp(impl):
        def grads(q, k, v):
            return jax.grad(lambda q, k, v: jnp.sum(attn.attention(q, k, v, impl=impl, causal=True)),
                            argnums=(0, 1, 2))(q, k, v)
        return jax.jit(grads).lower(shape, shape, shape).compile().memory_analysis().temp_size_in_bytes

    scores = 2 * 4096 * 4096 * 4
    xla, blockwise = temp("xla"), temp("blockwise")
    assert xla >= scores
    assert blockwise * 20 < xla
    assert blockwise < scores // 8


def test_errors_name_the_field():
    q, k, v, _ = _inputs(1, 8, 3, 2)
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2 kv heads"):
        attn.attention(q, k, v, impl="blockwise", causal=True)
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        attn.attention(q, k, v, impl="flash", causal=True)
    with pytest.raises(ValueError, match=r"segment_ids need self-attention \(T == S\)"):
        attn.attention(q[:, :1], k, v, impl="auto", causal=False, segment_ids=jnp.ones((1, 1), jnp.int32))


def _model_inputs(cfg, frames=1):
    n = num_video_tokens(cfg, frames)
    rng = np.random.RandomState(0)
    ids = rng.randint(4, cfg.text.vocab_size, size=(2, n + 30)).astype(np.int32)
    ids[:, 1:1 + n] = cfg.video_token_id
    mask = np.ones_like(ids)
    mask[1, -7:] = 0
    pix = rng.randn(2, frames, 32, 32, 3).astype(np.float32)
    return ids, pix, mask


@functools.lru_cache(maxsize=None)
def _model_logits(impl):
    cfg = tiny.get_config().model
    cfg.attention_impl = impl
    model = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
    ids, pix, mask = _model_inputs(cfg)
    # Two samples in row 0 (positions restart at the cut), one plus right padding in row 1.
    seg = np.where(mask == 1, 1, 0).astype(np.int32)
    seg[0, 40:] = 2
    pos = np.where(np.arange(seg.shape[1]) < 40, np.arange(seg.shape[1]), np.arange(seg.shape[1]) - 40)
    pos = np.stack([pos, np.arange(seg.shape[1])]).astype(np.int32)
    out = nnx.jit(lambda m: m(ids, pix, mask, segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos)))(model)
    valid = mask.astype(bool)[:, :, None]
    return {name: np.asarray(getattr(out, name)) * (valid if name == "logits" else 1)
            for name in ("logits", "verb_logits", "action_logits")}


@pytest.mark.parametrize("impl", ["blockwise", "splash"])
def test_tiny_model_forward_equals_xla(impl):
    """Decoder (causal, packing and right padding) and vision tower (bidirectional) through `impl`
    (splash in the Pallas interpreter)."""
    ref, got = _model_logits("xla"), _model_logits(impl)
    for name in ref:
        assert np.abs(ref[name]).max() > 0.1, name
        np.testing.assert_allclose(got[name], ref[name], **TOL, err_msg=name)
