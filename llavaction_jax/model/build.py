"""The one place that creates a LlavaActionModel: concretely, abstractly (shapes + shardings, no memory), or some
of its parameters initialised directly in their shardings. Training, conversion, eval, predict and the benchmarks all come here.
"""
from typing import Iterable, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from llavaction_jax import sharding as shd
from llavaction_jax.model.llava import LlavaActionModel


def new_model(model_cfg, *, seed: int = 0, rules=None) -> LlavaActionModel:
    """A concrete, randomly initialised model (under an active mesh its Params are placed in their shardings)."""
    return LlavaActionModel(model_cfg, rngs=nnx.Rngs(seed), sharding_rules=shd.normalize_rules(rules))


def abstract_model(model_cfg, mesh: Mesh, rules=None, seed: int = 0) -> LlavaActionModel:
    """The model with ShapeDtypeStruct leaves carrying concrete NamedShardings (no memory allocated).

    `graphdef, abstract_state = nnx.split(abstract_model(...))` gives Orbax restore targets.
    """
    rules = shd.normalize_rules(rules)
    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(lambda: new_model(model_cfg, seed=seed, rules=rules))

    def concrete(x):
        if isinstance(x, nnx.Variable):
            value = x.get_value()
            sharding = NamedSharding(mesh, shd.variable_spec(x, rules, mesh))
            return x.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))
        return x
    graphdef, state = nnx.split(abstract)
    state = jax.tree.map(concrete, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def init_param_subset(model_cfg, mesh: Mesh, rules, paths: Iterable[str], shardings: Mapping[str, NamedSharding],
                      seed: int = 0) -> dict:
    """Model-initialised values of a few parameters only, by '/'-joined path (XLA prunes the other initialisers);
    e.g. the parameters a converted checkpoint lacks (allow_missing)."""
    paths = list(paths)

    def init():
        flat = {"/".join(str(p) for p in path): v
                for path, v in nnx.to_flat_state(nnx.state(new_model(model_cfg, seed=seed, rules=rules), nnx.Param))}
        return {p: flat[p].get_value() for p in paths}

    with jax.set_mesh(mesh):
        return jax.jit(init, out_shardings={p: shardings[p] for p in paths})()
