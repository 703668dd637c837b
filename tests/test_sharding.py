"""Mesh construction, logical->mesh rules, sharded init and sharded == single-device forward."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import base, tiny
from llavaction_jax.model import build as model_build
from llavaction_jax import sharding as shd
from llavaction_jax.model import LlavaActionModel, num_video_tokens
from llavaction_jax.train import state as state_lib

FSDP_RULES = (("batch", ("data", "fsdp")), ("layers", None), ("vocab", None), ("embed", "fsdp"), ("mlp", None),
              ("heads", None), ("kv_heads", None), ("head_dim", None), ("vision_embed", "fsdp"),
              ("vision_mlp", None), ("vision_heads", None), ("patches", None), ("conv", None),
              ("action_slots", None), ("action_classes", None), ("seq", None), ("norm", None))


def test_make_mesh_fills_and_errors():
    mesh = shd.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(shd.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}).shape)["fsdp"] == 8
    with pytest.raises(ValueError, match="do not divide the 8 available devices"):
        shd.make_mesh({"data": -1, "fsdp": 3, "tensor": 1})
    with pytest.raises(ValueError, match="needs 4 devices but 8 are available"):
        shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        shd.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
    with pytest.raises(ValueError, match=r"needs 3 devices but 8 are available; expected data x fsdp x tensor = 8"):
        shd.make_mesh({"data": 3, "fsdp": 1, "tensor": 1})
    # One slice of CPU devices: dcn_data -1 is 1; asking for 2 slices is an error naming the slice count.
    assert dict(shd.make_mesh({"data": 8, "fsdp": 1, "tensor": 1, "dcn_data": -1, "dcn_fsdp": 1}).shape) == \
        {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match=r"dcn_data x dcn_fsdp = 2 but the 8 devices span 1 slice\(s\)"):
        shd.make_mesh({"data": 4, "fsdp": 1, "tensor": 1, "dcn_data": 2, "dcn_fsdp": 1})
    with pytest.raises(ValueError, match="axis 'dcn_fsdp' has size -1; expected a positive size$"):
        shd.check_mesh_sizes({"data": 1, "fsdp": 1, "tensor": 1, "dcn_fsdp": -1})


def test_hybrid_mesh_over_two_tpu_slices_and_a_mesh_the_torus_cannot_hold():
    """Two v5p 2x2x2 slices (libtpu's topology, no TPU): 'data' crosses the slices (DCN), fsdp stays inside
    one; the per-slice mesh is the config's. fsdp 8 x tensor 8 on a 4x4x4 torus is one line naming the sizes."""
    pytest.importorskip("libtpu")
    from llavaction_jax import aot
    devices = aot.topology_devices("v5p:2x2x2", num_slices=2)
    mesh = shd.make_mesh({"data": 1, "fsdp": 8, "tensor": 1, "dcn_data": -1, "dcn_fsdp": 1}, devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 8, "tensor": 1}
    assert [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)] == [{0}, {1}]
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2, "dcn_data": 1, "dcn_fsdp": 2}, devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 2}
    # dcn_fsdp: the outer half of 'fsdp' is the slice.
    assert {d.slice_index for d in mesh.devices[:, :2].flat} == {0} and {d.slice_index for d in mesh.devices[:, 2:].flat} == {1}
    with pytest.raises(ValueError, match=r"needs 32 devices but 8 per slice \(2 slices\)"):
        shd.make_mesh({"data": 2, "fsdp": 8, "tensor": 1}, devices)
    with pytest.raises(ValueError) as e:
        shd.make_mesh({"data": 1, "fsdp": 8, "tensor": 8}, aot.topology_devices("v5p:4x4x4"))
    assert str(e.value) == ("mesh data=1 fsdp=8 tensor=8 does not fit the 4x4x4 torus of TPU v5 (one slice): each of "
                            "data, fsdp, tensor must be one of [1, 4, 16, 64] (a product of torus dimensions) and "
                            "together use each dimension once")
    assert shd.holdable_sizes((2, 4, 4)) == [1, 2, 4, 8, 16, 32]


def test_logical_to_mesh_spec_rules_and_fallbacks():
    rules = base.DEFAULT_SHARDING_RULES
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert shd.logical_to_mesh_spec(("layers", "embed", "mlp"), rules) == P(None, "fsdp", "tensor")
    assert shd.logical_to_mesh_spec(("batch", None), rules) == P(("data", "fsdp"), None)
    # 97 does not divide by the tensor axis -> replicated along that dim; 6 not by fsdp x ... -> partial.
    custom = (("a", "tensor"), ("b", ("data", "fsdp")))
    assert shd.logical_to_mesh_spec(("a",), custom, (97,), mesh) == P(None)
    assert shd.logical_to_mesh_spec(("b",), custom, (6,), mesh) == P("data")
    # A mesh axis is never used twice in one spec (projector kernel: vision_embed and embed both -> fsdp).
    assert shd.logical_to_mesh_spec(("embed", "embed"), rules, (8, 8), mesh) == P("fsdp", None)
    with pytest.raises(KeyError, match="no entry in sharding_rules"):
        shd.logical_to_mesh_spec(("nonexistent",), rules)


def _mid_config():
    """Small but not tiny: some params exceed 1 MiB (embed/lm_head 2048x256 f32 = 2 MiB)."""
    cfg = tiny.get_config().model
    cfg.text.update(vocab_size=2048, hidden_size=256, intermediate_size=640, num_heads=4, num_kv_heads=2,
                    head_dim=64)
    cfg.vision.update(hidden_size=64, intermediate_size=128)
    return cfg


@pytest.mark.parametrize("mesh_shape,rules", [((2, 2, 2), base.DEFAULT_SHARDING_RULES), ((1, 8, 1), FSDP_RULES),
                                              ((2, 4, 1), FSDP_RULES)])
def test_no_large_param_fully_replicated(mesh_shape, rules):
    mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, mesh_shape)))
    abstract = model_build.abstract_model(_mid_config(), mesh, rules)
    large = 0
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        x = var.get_value()
        assert isinstance(x, jax.ShapeDtypeStruct)
        assert isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh
        if x.size * np.dtype(x.dtype).itemsize > 2 ** 20:
            large += 1
            assert x.sharding.shard_shape(x.shape) != x.shape, f"{'/'.join(path)} {x.shape} fully replicated"
    assert large >= 3


def test_sharded_forward_equals_single_device():
    cfg = tiny.get_config().model
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    frames = 1
    n = num_video_tokens(cfg, frames)
    rng = np.random.RandomState(0)
    ids = rng.randint(4, 512, size=(4, n + 8)).astype(np.int32)
    ids[:, 2:2 + n] = cfg.video_token_id
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    mask[3, -5:] = 0
    pix = rng.randn(4, frames, 32, 32, 3).astype(np.float32)

    single = LlavaActionModel(cfg, rngs=nnx.Rngs(0))
    want = nnx.jit(lambda m, a, b, c: m(a, b, c))(single, ids, pix, mask)

    # The trainer's init: random params made inside one jit straight into their shardings (train.state).
    config = tiny.get_config()
    config.seed = 0
    setup = state_lib.build_setup(config, mesh)
    model = setup.merge(state_lib.init_state(setup, config)["params"])
    embed = model.llm.embed_tokens.embedding[...]
    assert embed.sharding.spec == P("tensor", "fsdp")          # vocab -> tensor, embed -> fsdp
    assert model.llm.layers.mlp.gate_proj.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    # Same seed -> same init (jit vs eager sampling may differ in the last ulp).
    np.testing.assert_allclose(np.asarray(embed), np.asarray(single.llm.embed_tokens.embedding[...]), rtol=1e-6)
    # Compare the forward on bit-identical params: move the single-device values into the sharded layout.
    # (Variable metadata differs: only params built under a mesh carry out_sharding, so go via pure dicts.)
    sharded_state = nnx.state(model)
    moved = jax.tree.map(lambda a, s: jax.device_put(a, s.sharding), nnx.to_pure_dict(nnx.state(single)),
                         nnx.to_pure_dict(sharded_state))
    nnx.replace_by_pure_dict(sharded_state, moved)
    nnx.update(model, sharded_state)
    assert model.llm.embed_tokens.embedding[...].sharding.spec == P("tensor", "fsdp")
    bs = shd.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        got = nnx.jit(lambda m, a, b, c: m(a, b, c))(model, jax.device_put(ids, bs), jax.device_put(pix, bs),
                                                     jax.device_put(mask, bs))
    for name in ("logits", "verb_logits", "noun_logits", "action_logits"):
        np.testing.assert_allclose(np.asarray(getattr(got, name)), np.asarray(getattr(want, name)), atol=1e-5,
                                   rtol=0, err_msg=name)


def test_construct_under_mesh_is_sharded():
    """Contract: a plain construction under jax.set_mesh(mesh) places params in their shardings."""
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        model = nnx.eval_shape(lambda: LlavaActionModel(tiny.get_config().model, rngs=nnx.Rngs(0)))
    assert model.llm.layers.self_attn.q_proj.kernel.get_value().sharding.spec == P(None, "fsdp", "tensor")
    # 97 verb classes: 'action_classes' is replicated, 'embed' -> fsdp.
    assert model.action.verb_head.kernel.get_value().sharding.spec == P("fsdp", None)
    assert model.llm.layers.self_attn.q_proj.kernel.get_metadata()["logical_axes"] == ("layers", "embed", "heads")


def test_state_shardings_cover_optimizer_state():
    import optax
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        opt = nnx.eval_shape(lambda: nnx.Optimizer(LlavaActionModel(tiny.get_config().model, rngs=nnx.Rngs(0)),
                                                   optax.adam(1e-3), wrt=nnx.Param))
    shardings = shd.state_shardings(nnx.state(opt), mesh)
    flat = dict(nnx.to_flat_state(shardings))
    mu = [v.get_value() for p, v in flat.items() if "mu" in p and "gate_proj" in p]
    assert mu and mu[0].spec == P(None, "fsdp", "tensor")


def _activation_constraints(rules, mesh_shape=(2, 2, 2), text_tokens=6):
    """Counter of (mesh spec, shape) over the sharding constraints in the lowered tiny-model forward."""
    import collections
    import re
    import jax.numpy as jnp
    cfg = tiny.get_config()
    mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, mesh_shape)))
    graphdef, state = nnx.split(model_build.abstract_model(cfg.model, mesh, rules))
    n = num_video_tokens(cfg.model, 1)
    ids = jax.ShapeDtypeStruct((4, n + text_tokens), jnp.int32, sharding=shd.batch_sharding(mesh))
    pix = jax.ShapeDtypeStruct((4, 1, 32, 32, 3), jnp.float32, sharding=shd.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        text = jax.jit(lambda st, i, p: nnx.merge(graphdef, st)(i, p).logits).lower(state, ids, pix).as_text()
    found = re.findall(r"sdy.sharding_constraint[^<]*<@mesh, (\[[^\]]*\])>[^:]*: tensor<([^>]*)>", text)
    return collections.Counter(found)


def test_activation_shardings_golden():
    """Every layer boundary is pinned: batch over (data, fsdp), heads / mlp over tensor, the residual stream
    whole on tensor. Tiny model, batch 4, 13 text tokens, 16 patches per frame."""
    bt, bth = '[{"data", "fsdp"}, {}, {}]', '[{"data", "fsdp"}, {}, {"tensor"}]'
    heads = '[{"data", "fsdp"}, {}, {"tensor"}, {}]'
    assert _activation_constraints(base.DEFAULT_SHARDING_RULES) == {
        (heads, "4x13x4x16xf32"): 2,     # decoder q, attention_out
        (heads, "4x13x2x16xf32"): 2,     # decoder k, v (GQA: 2 kv heads over tensor=2)
        (bth, "4x13x128xf32"): 2,        # decoder mlp gate, up
        (bt, "4x13x64xf32"): 4,          # embeddings, o_proj out, mlp out, layer boundary
        (heads, "4x16x4x8xf32"): 4,      # vision q, k, v, attention_out
        (bth, "4x16x64xf32"): 1,         # vision fc1
        (bt, "4x16x32xf32"): 3,          # vision out_proj, mlp out, layer boundary
    }


def test_activation_rules_follow_the_table():
    """Sequence sharding over 'tensor' by one rule (heads then stay whole: an axis is used once per array);
    an old table without the activation names stays valid (they are replicated)."""
    rules = tuple((k, "tensor" if k == "seq" else v) for k, v in base.DEFAULT_SHARDING_RULES)
    got = _activation_constraints(rules, (1, 4, 2), text_tokens=7)             # 14 tokens
    seq, seq_heads = '[{"data", "fsdp"}, {"tensor"}, {}]', '[{"data", "fsdp"}, {"tensor"}, {}, {}]'
    assert got[(seq, "4x14x64xf32")] == 4 and got[(seq_heads, "4x14x4x16xf32")] == 2
    assert got[(seq_heads, "4x14x2x16xf32")] == 2 and got[(seq, "4x14x128xf32")] == 2
    assert got[('[{"data", "fsdp"}, {}, {"tensor"}, {}]', "4x16x4x8xf32")] == 4       # vision: 'patches', not 'seq'
    assert not any(name.startswith("act_") for name, _ in FSDP_RULES)
    old = _activation_constraints(FSDP_RULES, (1, 4, 2))
    assert old == {('[{"data", "fsdp"}, {}, {}, {}]', "4x13x4x16xf32"): 2, ('[{"data", "fsdp"}, {}, {}, {}]', "4x13x2x16xf32"): 2,
                   ('[{"data", "fsdp"}, {}, {}]', "4x13x128xf32"): 2, ('[{"data", "fsdp"}, {}, {}]', "4x13x64xf32"): 4,
                   ('[{"data", "fsdp"}, {}, {}, {}]', "4x16x4x8xf32"): 4, ('[{"data", "fsdp"}, {}, {}]', "4x16x64xf32"): 1,
                   ('[{"data", "fsdp"}, {}, {}]', "4x16x32xf32"): 3}
