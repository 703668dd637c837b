"""Train step and loop on the real tiny model: mesh parity, learning, freezing / per-module LR, grad accumulation,
bad-input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from llavaction_jax import sharding as shd
from llavaction_jax.cli import UserError
from llavaction_jax.input import schema as schema_lib
from llavaction_jax.model.llava import ModelOutput
from llavaction_jax.train import loop, losses, state as state_lib, step as step_lib, synthetic_batches

SEQ_LEN = 64
LR, PROJ_LR = 3e-3, 1e-4


def _config(mesh=(1, 1, 1), steps=30):
    cfg = tiny.get_config()
    cfg.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    cfg.optim.update(lr=LR, schedule="constant", warmup_ratio=0.0, grad_clip_norm=0.0, weight_decay=0.0,
                     lr_overrides=(("^projector/", PROJ_LR),), freeze=("^vision/",))
    cfg.train.update(num_steps=steps, log_every=10, checkpoint_every=0, progress_bar=False)
    return cfg


def _mesh(cfg):
    n = cfg.mesh.data * cfg.mesh.fsdp * cfg.mesh.tensor
    return shd.make_mesh(cfg.mesh, devices=jax.devices()[:n])


def _arrays(cfg, n=8, seed=0):
    return synthetic_batches.synthetic_arrays(cfg, n, SEQ_LEN, seed=seed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 30 memorisation steps on one device and on a 2x2x2 mesh of 8 devices."""
    out = {}
    for name, shape in (("one", (1, 1, 1)), ("eight", (2, 2, 2))):
        cfg = _config(shape)
        mesh = _mesh(cfg)
        it = synthetic_batches.ArrayBatchIterator(_arrays(cfg), cfg.data.global_batch_size, mesh, seed=0)
        out[name] = loop.train(cfg, str(tmp_path_factory.mktemp(name)), train_iter=it, mesh=mesh)
    return out


def test_eight_device_mesh_matches_one_device(runs):
    one, eight = np.array(runs["one"]["losses"]), np.array(runs["eight"]["losses"])
    assert len(one) == len(eight) == 30
    np.testing.assert_allclose(eight[:5], one[:5], rtol=0, atol=1e-5)
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-3)
    # The params really are sharded on the 8-device mesh (not replicated).
    emb = runs["eight"]["state"]["params"]["llm"]["embed_tokens"]["embedding"]
    assert tuple(emb.sharding.shard_shape(emb.shape)) != tuple(emb.shape)


def test_loss_decreases_when_memorising_a_batch(runs):
    losses = runs["one"]["losses"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert runs["one"]["last_metrics"]["lr"] == pytest.approx(LR)
    assert runs["one"]["param_groups"]["frozen"] > 0


def test_frozen_unchanged_and_first_adam_step_is_group_lr(runs):
    cfg = _config()
    mesh = _mesh(cfg)
    setup = state_lib.build_setup(cfg, mesh)
    init = state_lib.init_state(setup, cfg)
    p0 = jax.device_get(init["params"])
    # Frozen vision tower: bit-identical after 30 steps.
    final = jax.device_get(runs["one"]["state"]["params"])
    for a, b in zip(jax.tree.leaves(final["vision"]), jax.tree.leaves(p0["vision"])):
        np.testing.assert_array_equal(a, b)
    # One step: Adam's first update is lr * g / (|g| + eps) = lr wherever |g| >> eps.
    it = synthetic_batches.ArrayBatchIterator(_arrays(cfg), cfg.data.global_batch_size, mesh, seed=0)
    new, _ = step_lib.jit_train_step(setup, cfg)(init, next(it))
    p1 = jax.device_get(new["params"])
    for path, lr in ((("llm", "layers", "mlp", "down_proj", "kernel"), LR),
                     (("projector", "linear_2", "kernel"), PROJ_LR)):
        a, b = p1, p0
        for k in path:
            a, b = a[k], b[k]
        delta = np.abs(a - b)
        assert delta.max() <= lr * (1 + 1e-4)   # float32 rounding of p + delta
        np.testing.assert_allclose(np.median(delta), lr, rtol=1e-3)


def test_grad_accumulation_equals_full_batch():
    grads = {}
    for accum in (1, 2):
        cfg = _config()
        cfg.train.grad_accum_steps = accum
        mesh = _mesh(cfg)
        setup = state_lib.build_setup(cfg, mesh)
        params = state_lib.init_state(setup, _config())["params"]
        batch = next(synthetic_batches.ArrayBatchIterator(_arrays(cfg, seed=3), 8, mesh, seed=0))
        fn = jax.jit(step_lib.make_loss_and_grads(setup, cfg))
        loss, aux, g, n_tok, n_valid = fn(params, batch)
        grads[accum] = (float(loss), jax.device_get(g))
    # float32 sums in another order: a few ulp apart (3 ulp of 6.5 on one CPU); a wrong normalisation is off by ~2x.
    assert grads[1][0] == pytest.approx(grads[2][0], rel=1e-6, abs=0)
    flat1, flat2 = jax.tree.leaves(grads[1][1]), jax.tree.leaves(grads[2][1])
    assert len(flat1) == len(flat2) > 0
    for a, b in zip(flat1, flat2):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)    # ulp-level: float32 sums reordered


def test_all_layers_action_loss_averages_the_heads_over_every_hidden_state():
    """config.train.action_loss_layers="all_layers": the heads' loss on the action token after the embeddings and
    after each of the tiny model's 2 layers (the last the eval heads' input), averaged; "last_layer" only the last."""
    cfg = _config()
    cfg.train.action_loss_weight = 0.5
    mesh = _mesh(cfg)
    setup = state_lib.build_setup(cfg, mesh)
    params = state_lib.init_state(setup, cfg)["params"]
    batch = next(synthetic_batches.ArrayBatchIterator(_arrays(cfg, seed=4), 8, mesh, seed=0))
    loss = {}
    for mode in ("last_layer", "all_layers"):
        cfg.train.action_loss_layers = mode
        loss[mode] = float(jax.jit(step_lib.make_loss_and_grads(setup, cfg))(params, batch)[0])
    model = setup.merge(params)
    pixels = schema_lib.normalize_pixels(batch["pixel_values"])
    _, _, taps = model.hidden_states(batch["input_ids"], pixels, batch["attention_mask"], action_layers=True)
    assert taps.shape[0] == cfg.model.text.num_layers + 1
    out = model(batch["input_ids"], pixels, batch["attention_mask"])
    np.testing.assert_allclose(model.action(taps[-1][:, 0])[0], out.verb_logits, rtol=0, atol=1e-6)
    per_layer = [float(losses.action_loss(ModelOutput(None, *model.action(t[:, 0])), batch["actions"]))
                 for t in taps]
    assert len(set(per_layer)) == len(per_layer)          # three different hidden states, three losses
    lm = loss["last_layer"] - 0.5 * per_layer[-1]
    assert loss["all_layers"] == pytest.approx(lm + 0.5 * np.mean(per_layer), rel=1e-5, abs=0)


def test_indivisible_batch_and_mesh_errors(tmp_path):
    cfg = _config((2, 2, 2))
    cfg.data.global_batch_size = 6
    with pytest.raises(UserError, match=r"not divisible by the mesh batch shards data\*fsdp = 2\*2 = 4 .*"
                                        r"\(config.data.global_batch_size\): a multiple of grad_accum_steps x data "
                                        r"x fsdp = 4"):
        loop.train(cfg, str(tmp_path), train_iter=iter([]))
    cfg = _config((2, 2, 2))
    cfg.train.grad_accum_steps = 3
    with pytest.raises(UserError, match="not divisible by config.train.grad_accum_steps=3"):
        loop.train(cfg, str(tmp_path), train_iter=iter([]))
    cfg = _config((3, 1, 1))
    with pytest.raises(ValueError, match="needs 3 devices but 8 are available"):
        loop.train(cfg, str(tmp_path), train_iter=iter([]))


class _EmptyIterator:
    def __next__(self):
        raise StopIteration

    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def test_empty_dataset_errors(tmp_path):
    cfg = _config()
    with pytest.raises(ValueError, match="empty dataset"):
        loop.train(cfg, str(tmp_path / "a"), train_iter=_EmptyIterator(), mesh=_mesh(cfg))
    arrays = {k: v[:0] for k, v in _arrays(cfg).items()}
    with pytest.raises(ValueError, match="empty dataset"):
        synthetic_batches.ArrayBatchIterator(arrays, 8, _mesh(cfg))
    cfg.data.train_files = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(UserError, match=r"no TFRecord files match '.*nothing-\*\.tfrecord' \(empty dataset\) "
                                        r"\(config.data.train_files\)"):
        loop.train(cfg, str(tmp_path / "b"), mesh=_mesh(cfg))
