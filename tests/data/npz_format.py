"""A whole extra checkpoint format for tests/test_convert_formats.py, as docs/architecture.md describes one:
our parameter tree in one .npz file (keys are the '/'-joined nnx paths) next to the model config as JSON."""
import os

import jax
import numpy as np
from flax import nnx

from llavaction_jax.convert import common
from llavaction_jax.model import build as model_build

NAME = "npz"
DESCRIPTION = "numpy archive of the parameter tree (npz_params.npz + npz_model_config.json)"
PARAMS, CONFIG = "npz_params.npz", "npz_model_config.json"


def detect(path):
    return os.path.isfile(os.path.join(path, PARAMS)) and os.path.isfile(os.path.join(path, CONFIG))


def read_config(path, config_overrides=None, dtype=None):
    return common.model_config_from_dict(common.read_json(os.path.join(path, CONFIG)), dtype, config_overrides), []


def load(path, mesh, dtype=None, config_overrides=None, allow_missing=(), rules=None, allow_nonfinite=False):
    model_cfg, notes = read_config(path, config_overrides, dtype)
    graphdef, params, _ = nnx.split(model_build.abstract_model(model_cfg, mesh, rules), nnx.Param, ...)
    with np.load(os.path.join(path, PARAMS)) as saved:
        for key, var in common.flat_params(params).items():
            target = var.get_value()
            var.set_value(jax.device_put(saved[key].astype(target.dtype), target.sharding))
    return common.Loaded(nnx.merge(graphdef, params), model_cfg, NAME, os.path.abspath(path), notes=notes)


def write(loaded, dst, options=common.WriteOptions()):
    os.makedirs(dst, exist_ok=True)
    flat = {k: common.host_value(v.get_value())
            for k, v in common.flat_params(nnx.state(loaded.model, nnx.Param)).items()}
    np.savez(os.path.join(dst, PARAMS), **flat)
    with open(os.path.join(dst, CONFIG), "w") as f:
        f.write(common.model_config_to_json(loaded.model_cfg))
    return dict(format=NAME, keys=sorted(flat))
