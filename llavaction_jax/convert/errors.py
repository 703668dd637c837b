"""The converter's user errors: a checkpoint, config, tokenizer or flag it cannot take as given.

Each is a llavaction_jax.cli.UserError (every CLI prints it as one `error:` line, exit 2) and also the builtin
type library callers caught before (ValueError / FileNotFoundError / KeyError). Anything else raised out of the
converter is a bug and keeps its traceback. (Kin with their own module: mapping.CheckpointMismatchError,
safetensors_io.SafetensorsFileError, safetensors_format.TensorError, common.BadConfigFileError and
formats.NotACheckpointError.)
"""
from llavaction_jax.cli import UserError


class ConvertError(UserError, ValueError):
    """A checkpoint (its config.json, tensors, tokenizer or model card) the converter cannot read or write as
    given; the message names the file or key."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the converter needs is absent (a shard an index lists, tokenizer.json, an eval summary)."""


class BadOverrideError(UserError, KeyError):
    """A config override whose key names no config field."""
