"""The train state and how it is built: created directly in its shardings (never materialised replicated).

State pytree (what jit donates and Orbax saves): {"params": pure dict of arrays (the nnx.Param tree),
"opt_state": optax state, "step": int32 scalar, "rng": uint32 key data}. The nnx graph definition and any
non-Param model variables live outside it, in `TrainSetup`, and the step function merges them back.
"""
import dataclasses
import json
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llavaction_jax.model import build as model_build
from llavaction_jax.train import optimizer as opt_lib
from llavaction_jax.train.checkpointing import check_compatible


@dataclasses.dataclass
class TrainSetup:
    mesh: Any
    graphdef: Any
    param_template: Any          # nnx.State of abstract Params (structure for merging pure dicts back)
    rest: Any                    # nnx.State of non-Param model variables (concrete, replicated or sharded)
    tx: Any
    schedules: Dict[str, Callable]
    labels: Any                  # group label per parameter (pure-dict structure)
    abstract_state: Any          # ShapeDtypeStructs with concrete shardings
    shardings: Any               # NamedSharding per state leaf
    # The compiled functions of this setup (init, train step), one per config (see `compiled`). Owned here,
    # not in a process-wide cache: a new setup compiles anew (JAX's persistent compilation cache, when
    # enabled, makes that a disk read; see train.compilation_cache_dir).
    _compiled: Dict[str, Callable] = dataclasses.field(default_factory=dict, repr=False)

    def merge(self, params):
        """nnx model from a pure params dict (works inside jit)."""
        template = jax.tree.map(lambda x: x, self.param_template)
        nnx.replace_by_pure_dict(template, params)
        return nnx.merge(self.graphdef, template, self.rest)

    def compiled(self, name: str, config, make: Callable[[], Callable]) -> Callable:
        """The jitted function `name` for `config`, made by `make()` the first time it is asked for.

        Keyed by the WHOLE config (config_key), not a hand-picked list of fields: two configs that differ
        anywhere (e.g. train.lm_loss) never share a program.
        """
        key = f"{name}:{config_key(config)}"
        if key not in self._compiled:
            self._compiled[key] = make()
        return self._compiled[key]


def _build_model(config, seed):
    return model_build.new_model(config.model, seed=seed, rules=config.sharding_rules)


def _path_keys(path):
    return tuple(opt_lib.path_str([k]) for k in path)


def _match_param_shardings(abstract_tree, param_shardings, param_shapes, mesh):
    """Optimizer-state leaves that mirror a parameter (Adam mu/nu) get its sharding; others are replicated.

    A leaf mirrors a parameter when the end of its key path is that parameter's path and the shapes agree.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    max_depth = max(len(p) for p in param_shardings) if param_shardings else 0

    def pick(path, leaf):
        keys = _path_keys(path)
        for depth in range(min(len(keys), max_depth), 0, -1):
            tail = keys[-depth:]
            if tail in param_shardings and tuple(param_shapes[tail]) == tuple(leaf.shape):
                return param_shardings[tail]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def build_setup(config, mesh) -> TrainSetup:
    """Abstract model → shardings of every state leaf, and the optimizer for these parameters."""
    seed = int(config.seed)
    abstract_model = model_build.abstract_model(config.model, mesh, config.sharding_rules, seed)
    graphdef, abs_params, abs_rest = nnx.split(abstract_model, nnx.Param, ...)
    params_abs = nnx.to_pure_dict(abs_params)
    tx, schedules = opt_lib.make_optimizer(config.optim, int(config.train.num_steps), params_abs)
    labels = opt_lib.param_labels(params_abs, config.optim)

    # The non-Param variables (if any) are created once, concretely, in their shardings.
    rest = abs_rest
    if jax.tree.leaves(abs_rest):
        rest_shardings = jax.tree.map(lambda x: x.sharding, abs_rest)
        with jax.set_mesh(mesh):
            rest = jax.jit(lambda: nnx.split(_build_model(config, seed), nnx.Param, ...)[2],
                           out_shardings=rest_shardings)()

    flat, _ = jax.tree_util.tree_flatten_with_path(params_abs)
    p_shard = {_path_keys(p): leaf.sharding for p, leaf in flat}
    p_shape = {_path_keys(p): leaf.shape for p, leaf in flat}
    with jax.set_mesh(mesh):
        abs_opt = jax.eval_shape(tx.init, params_abs)
    opt_shardings = _match_param_shardings(abs_opt, p_shard, p_shape, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = {"params": jax.tree.map(lambda x: x.sharding, params_abs), "opt_state": opt_shardings,
                 "step": replicated, "rng": replicated}
    abstract = {"params": params_abs, "opt_state": abs_opt,
                "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return TrainSetup(mesh=mesh, graphdef=graphdef, param_template=abs_params, rest=rest, tx=tx,
                      schedules=schedules, labels=labels, abstract_state=abstract, shardings=shardings)


def _state_from_params(setup: TrainSetup, params, seed):
    return {"params": params, "opt_state": setup.tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed))}


def config_key(config) -> str:
    """Canonical JSON of the whole config: equal keys build identical programs."""
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def init_state(setup: TrainSetup, config):
    """Fresh random parameters (same values on any mesh: threefry is partitionable) + fresh optimizer state."""
    seed = int(config.seed)

    def make():
        def init():
            params = nnx.to_pure_dict(nnx.split(_build_model(config, seed), nnx.Param, ...)[1])
            return _state_from_params(setup, params, seed)
        return jax.jit(init, out_shardings=setup.shardings)

    fn = setup.compiled("init", config, make)
    with jax.set_mesh(setup.mesh):
        return fn()


def init_state_from_params(setup: TrainSetup, config, params):
    """Train state around given (already placed) parameters, e.g. a converted pretrained checkpoint."""
    check_compatible(params, setup.abstract_state["params"], "init_from params")
    params = jax.tree.map(lambda x, a: x.astype(a.dtype), params, setup.abstract_state["params"])
    with jax.set_mesh(setup.mesh):
        return jax.jit(lambda p: _state_from_params(setup, p, int(config.seed)),
                       in_shardings=(setup.shardings["params"],), out_shardings=setup.shardings,
                       donate_argnums=(0,))(params)
