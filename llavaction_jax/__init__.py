"""LLaVAction in JAX/Flax. Heavy submodules load lazily so `import llavaction_jax` stays cheap."""


def __getattr__(name):
    # PEP 562 lazy attribute: importing the converter pulls in jax/flax/orbax, only do it on first use.
    if name in ("load_pretrained", "export_model"):
        from llavaction_jax.convert import api
        return getattr(api, name)
    raise AttributeError(f"module 'llavaction_jax' has no attribute {name!r}")


__all__ = ["load_pretrained", "export_model"]
