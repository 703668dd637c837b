"""The checkpoint formats: one module each, all with the same few names, and the one registry of them.

A format module has
  NAME, DESCRIPTION                                      registry key; one line for messages
  detect(path) -> bool                                   is `path` a checkpoint of this format?
  read_config(path, config_overrides=None, dtype=None) -> (model config, notes)
  load(path, mesh, dtype=None, config_overrides=None, allow_missing=(), rules=None, allow_nonfinite=False)
      -> common.Loaded                                   (a tensor holding NaN / inf: refused unless allowed)
  write(loaded, dst, options=common.WriteOptions()) -> dict   the report; a format that cannot be written has
                                                         no `write` but NOT_WRITABLE, the reason
Safetensors formats build these from a mapping table (convert/safetensors_format.py). `detect_format`,
`load_pretrained`, `import_checkpoint`, `export_checkpoint` and the convert CLI's --format all read FORMATS.
A new format is one module in this package plus its name in MODULES (or `register(module)` from outside).
"""
import importlib
import os

from llavaction_jax.cli import UserError
from llavaction_jax.convert.errors import ConvertError

MODULES = ("hf", "llava_qwen", "orbax", "train")     # the registry: modules of this package, one per format
FORMATS = {}


def register(module):
    """Adds a format module (see the module docstring for what it has) to FORMATS under its NAME."""
    FORMATS[module.NAME] = module
    return module


for _name in MODULES:
    register(importlib.import_module(f"{__name__}.{_name}"))


class NotACheckpointError(UserError, ValueError):
    """A directory no format reads (empty, a folder of videos, an Orbax dir without params/ ...): the one-line
    user error in every CLI (a ValueError too, for library callers)."""


class NoCheckpointDirError(NotACheckpointError, FileNotFoundError):
    """The checkpoint path is not a directory at all."""


def detect_format(path: str) -> str:
    """The NAME of the one registered format that claims the directory `path` (a clear error otherwise)."""
    if not os.path.isdir(path):
        raise NoCheckpointDirError(f"{path}: not a directory")
    found = [name for name, fmt in FORMATS.items() if fmt.detect(path)]
    if len(found) > 1:
        raise NotACheckpointError(f"{path}: claimed by more than one checkpoint format: {found}")
    if not found:
        raise NotACheckpointError(f"{path}: not a recognised checkpoint; expected one of: "
                                  + "; ".join(f"{name}: {fmt.DESCRIPTION}" for name, fmt in FORMATS.items()))
    return found[0]


def get(name: str):
    """The format module registered as `name`."""
    if name not in FORMATS:
        raise ConvertError(f"unknown checkpoint format {name!r} (known: {sorted(FORMATS)})")
    return FORMATS[name]


def writer(name: str):
    """`write` of format `name`; a UserError naming the format (and why) when it cannot be written."""
    fmt = get(name)
    if not hasattr(fmt, "write"):
        raise UserError(f"the {name!r} checkpoint format cannot be written", f"--format {name}", fmt.NOT_WRITABLE)
    return fmt.write


def writable():
    """Names of the formats that can be written (the convert CLI's export choices)."""
    return sorted(name for name, fmt in FORMATS.items() if hasattr(fmt, "write"))
