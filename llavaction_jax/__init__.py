"""LLaVAction in JAX/Flax. Heavy submodules load lazily so `import llavaction_jax` stays cheap."""
from llavaction_jax import logs as _logs
from llavaction_jax import torch_env as _torch_env

__version__ = "0.1.0"

# TensorFlow reads its native log level once, when it loads: set before any submodule can import it.
_logs.quiet_native_logs()
# torch's triton and TensorFlow crash one process when triton loads after TF (torch_env.py): hidden before
# either can load, so any import order of the input pipeline, torchvision and transformers works.
_torch_env.hide_triton()


def __getattr__(name):
    # PEP 562 lazy attribute: the converter pulls in jax/flax/orbax, and `import llavaction_jax` (every CLI, the
    # offline tools, the JAX-free data layer) must stay light.
    if name in ("load_pretrained", "export_model"):
        from llavaction_jax.convert import api  # why: keeps `import llavaction_jax` free of JAX (see above)
        return getattr(api, name)
    raise AttributeError(f"module 'llavaction_jax' has no attribute {name!r}")


__all__ = ["load_pretrained", "export_model", "__version__"]
