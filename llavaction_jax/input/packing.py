"""Sequence packing: several samples per row, MaxText style (segment ids + per-segment positions).

A packed row is [sample 1][sample 2]...[padding]. Per row:
  segment_ids [L]  1, 2, ... per sample, 0 on padding (attention stays inside a segment);
  positions   [L]  restart at 0 in every sample (RoPE per sample);
  labels      [L]  the sample's labels, IGNORE at every segment's first token: the loss reads logits[t] against
                   labels[t+1], so without it a sample's last token would be trained to predict the next
                   sample's first token;
  frames      [P, F, S, S, 3]  the row's videos in row order (slot p = the p-th sample WITH a video; unused
                   slots zero), P = config.data.max_videos_per_row;
  actions     [P, 3]  the action labels of those videos (-1 where no video).
Text-only samples take no video slot (they have no video tokens and no action token).
"""
import dataclasses

import numpy as np

from llavaction_jax.input.chat import IGNORE_INDEX


@dataclasses.dataclass
class Sample:
    sid: str
    ids: list
    labels: list
    frames: np.ndarray        # uint8 [F, S, S, 3] (zeros, unused, when has_video is False)
    actions: np.ndarray       # int32 [3]
    has_video: bool
    truncated: bool = False


class RowPacker:
    """Greedy first-fit, in stream order, of samples into `num_rows` rows of `capacity` tokens and at most
    `max_videos` videos each. `add` returns False when the sample fits no row (the batch is then complete and
    the sample starts the next one), so a batch is a pure function of the stream position it starts at."""

    def __init__(self, num_rows, capacity, max_videos):
        if num_rows <= 0 or capacity <= 0 or max_videos <= 0:
            raise ValueError(f"RowPacker needs positive num_rows/capacity/max_videos, got "
                             f"{num_rows}/{capacity}/{max_videos}")
        self.capacity, self.max_videos = int(capacity), int(max_videos)
        self.rows = [[] for _ in range(num_rows)]
        self.used = [0] * num_rows
        self.videos = [0] * num_rows

    def add(self, sample: Sample) -> bool:
        n = len(sample.ids)
        if n > self.capacity:
            raise ValueError(f"sample {sample.sid!r}: {n} tokens exceed the packing capacity {self.capacity} "
                             "(config.data.max_length)")
        v = int(bool(sample.has_video))
        for r in range(len(self.rows)):
            if self.used[r] + n <= self.capacity and self.videos[r] + v <= self.max_videos:
                self.rows[r].append(sample)
                self.used[r] += n
                self.videos[r] += v
                return True
        return False

    @property
    def num_samples(self):
        return sum(len(r) for r in self.rows)


def pack_rows(rows, length, pad_id, max_videos, frame_shape):
    """rows: list (one per batch row) of lists of Sample -> numpy dict of the packed batch (see module doc)."""
    b = len(rows)
    out = {
        "input_ids": np.full((b, length), pad_id, np.int32),
        "attention_mask": np.zeros((b, length), np.int32),
        "labels": np.full((b, length), IGNORE_INDEX, np.int32),
        "segment_ids": np.zeros((b, length), np.int32),
        "positions": np.zeros((b, length), np.int32),
        "frames": np.zeros((b, max_videos) + tuple(frame_shape), np.uint8),
        "actions": np.full((b, max_videos, 3), -1, np.int32),
    }
    for i, row in enumerate(rows):
        start, video = 0, 0
        for seg, s in enumerate(row, start=1):
            n = len(s.ids)
            if start + n > length:
                raise ValueError(f"row {i}: samples need {start + n} tokens > padded length {length}")
            sl = slice(start, start + n)
            out["input_ids"][i, sl] = s.ids
            out["labels"][i, sl] = s.labels
            out["labels"][i, start] = IGNORE_INDEX
            out["segment_ids"][i, sl] = seg
            out["positions"][i, sl] = np.arange(n)
            if s.has_video:
                if video >= max_videos:
                    raise ValueError(f"row {i}: more than max_videos_per_row={max_videos} videos")
                out["frames"][i, video] = s.frames
                out["actions"][i, video] = s.actions
                video += 1
            start += n
        out["attention_mask"][i, :start] = 1
    return out
