"""Checkpoint conversion between the registered formats (convert/formats: hf, llava_qwen, orbax, train) and
sharded nnx models. CLI: `python -m llavaction_jax.convert {import,export} ...`."""
from llavaction_jax.convert.api import (detect_format, export_checkpoint, export_model, import_checkpoint,
                                        load_pretrained)
from llavaction_jax.convert.mapping import CheckpointMismatchError

__all__ = ["CheckpointMismatchError", "detect_format", "export_checkpoint", "export_model", "import_checkpoint",
           "load_pretrained"]
