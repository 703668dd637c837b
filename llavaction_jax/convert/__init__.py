"""Checkpoint conversion: transformers LlavaOnevision (hf) and original LLaVA-NeXT/LLaVAction (llava_qwen)
safetensors <-> sharded nnx model <-> Orbax. CLI: `python -m llavaction_jax.convert {import,export} ...`."""
from llavaction_jax.convert.api import (detect_format, export_checkpoint, export_model, import_checkpoint,
                                        load_pretrained)
from llavaction_jax.convert.mapping import CheckpointMismatchError

__all__ = ["CheckpointMismatchError", "detect_format", "export_checkpoint", "export_model", "import_checkpoint",
           "load_pretrained"]
