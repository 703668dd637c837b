"""The train batch, described once: its keys, per-sample shapes and dtypes. The input pipeline, synthetic data,
the train step's shardings and the AOT planner's abstract batch all read it from here.

Unpacked rows: one video per row. config.data.packing: several samples per row (llavaction_jax.input.packing),
so P = data.max_videos_per_row videos and action labels per row, plus segment ids and per-segment positions.
"""
import dataclasses
from typing import Dict, Tuple

import jax.numpy as jnp
import numpy as np

# SigLIP normalisation (mean = std = 0.5) of every uint8 value, as float32 numpy computes (x/255 - 0.5)/0.5.
# Frames travel as uint8 (4x less host memory traffic, host->device bytes and HBM for the step's batch) and
# are normalised on device by table lookup, which is bit-identical on every backend (no reciprocal /
# fast-division rewrites).
PIXEL_LUT = (np.arange(256, dtype=np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)


def normalize_pixels(frames):
    """uint8 RGB frames -> float32 in [-1, 1] (PIXEL_LUT), inside a traced program (train step, eval); frames
    that are already floating point are taken as normalised and returned as they are."""
    if jnp.issubdtype(frames.dtype, jnp.floating):
        return frames
    return jnp.asarray(PIXEL_LUT)[frames]

# Always present, [B, L] int32: token ids, 1 on real tokens, targets (-100 = not supervised).
TEXT_KEYS = ("input_ids", "attention_mask", "labels")
PACKING_KEYS = ("segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class BatchSchema:
    num_frames: int
    image_size: int
    videos_per_row: int = 0        # 0: unpacked (one video per row, no per-row video axis)

    @property
    def packed(self) -> bool:
        return self.videos_per_row > 0

    def keys(self) -> Tuple[str, ...]:
        return TEXT_KEYS + ("pixel_values", "actions") + (PACKING_KEYS if self.packed else ())

    def shapes(self, batch_size: int, seq_len: int) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """key -> (global shape, dtype). pixel_values are uint8 RGB frames [.., F, S, S, 3] (the step normalises
        them, normalize_pixels); actions (verb, noun, action) class ids, -1 = no label."""
        videos = (self.videos_per_row,) if self.packed else ()
        s = self.image_size
        out = {k: ((batch_size, seq_len), np.dtype(np.int32)) for k in TEXT_KEYS}
        out["pixel_values"] = ((batch_size,) + videos + (self.num_frames, s, s, 3), np.dtype(np.uint8))
        out["actions"] = ((batch_size,) + videos + (3,), np.dtype(np.int32))
        if self.packed:
            out.update({k: ((batch_size, seq_len), np.dtype(np.int32)) for k in PACKING_KEYS})
        return out

    def ranks(self) -> Dict[str, int]:
        return {k: len(shape) for k, (shape, _) in self.shapes(1, 1).items()}


def batch_schema(config) -> BatchSchema:
    data = config.data
    packed = bool(data.packing)
    return BatchSchema(num_frames=int(data.num_frames), image_size=int(config.model.vision.image_size),
                       videos_per_row=int(data.max_videos_per_row) if packed else 0)
