"""Host batching: token rows -> numpy batches right-padded to the smallest length bucket that fits (or packed,
packing.py), then, in the caller's thread, the length all hosts agree on and global jax.Arrays over the mesh batch
axes ('data', 'fsdp') via jax.make_array_from_process_local_data. Frames stay uint8; the train step
SigLIP-normalises them on device (input/schema.normalize_pixels).
"""
import jax
import numpy as np

from llavaction_jax.distributed import allgather_ints
from llavaction_jax.input import chat, packing
from llavaction_jax.sharding import batch_sharding


def pad_length(needed, buckets, max_length):
    """Smallest bucket (or max_length) >= needed."""
    for length in sorted(set(int(b) for b in buckets) | {int(max_length)}):
        if length >= needed:
            return length
    raise ValueError(f"a row of {needed} tokens exceeds max_length={max_length}")


def agreed_pad_length(local_length):
    """The padded length every host uses: the max over hosts of their own bucket (one tiny allgather)."""
    return int(np.max(allgather_ints([local_length])))


class BatchBuilder:
    """Host rows -> padded numpy batch (background thread) -> global jax.Arrays (caller's thread)."""

    def __init__(self, config, mesh, tok, global_batch_size, packed=False):
        self.tok = tok
        self.packed = bool(packed)
        self.max_videos = int(config.data.max_videos_per_row)
        if self.packed and self.max_videos < 1:
            raise ValueError(f"config.data.max_videos_per_row={self.max_videos}: a packed row needs >= 1 video slot")
        self.frame_shape = (int(config.data.num_frames), int(config.model.vision.image_size),
                            int(config.model.vision.image_size), 3)
        self.buckets = tuple(config.data.length_buckets)
        self.max_length = int(config.data.max_length)
        self.sharding = batch_sharding(mesh)
        pc = jax.process_count()
        if global_batch_size % pc:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by {pc} processes")
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // pc
        shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))
        if self.global_batch_size % shards:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by the {shards} "
                             "batch shards of the mesh (data x fsdp)")

    def host_batch(self, rows):
        """rows: list of (ids, labels, uint8 frames, actions) -> numpy dict padded to this host's bucket."""
        b = self.local_batch_size
        length = pad_length(max(len(r[0]) for r in rows), self.buckets, self.max_length)
        input_ids = np.full((b, length), self.tok.pad_id, np.int32)
        attention_mask = np.zeros((b, length), np.int32)
        labels = np.full((b, length), chat.IGNORE_INDEX, np.int32)
        for i, (ids, lab, _, _) in enumerate(rows):
            input_ids[i, :len(ids)] = ids
            attention_mask[i, :len(ids)] = 1
            labels[i, :len(lab)] = lab
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "frames": np.stack([r[2] for r in rows]),
            "actions": np.stack([r[3] for r in rows]).astype(np.int32, copy=False),
        }

    def new_packer(self):
        return packing.RowPacker(self.local_batch_size, self.max_length, self.max_videos)

    def host_batch_packed(self, rows):
        """rows: per batch row, a list of packing.Sample -> numpy dict (packing.pack_rows) padded to the bucket."""
        length = pad_length(max(sum(len(s.ids) for s in row) for row in rows), self.buckets, self.max_length)
        return packing.pack_rows(rows, length, self.tok.pad_id, self.max_videos, self.frame_shape)

    def to_global(self, host):
        """Pads to the length all hosts agree on, builds the global arrays; frames stay uint8 (the step
        normalises them on device, schema.normalize_pixels)."""
        length = agreed_pad_length(host["input_ids"].shape[1])
        extra = length - host["input_ids"].shape[1]
        if extra:
            fill = {"input_ids": self.tok.pad_id, "attention_mask": 0, "labels": chat.IGNORE_INDEX,
                    "segment_ids": 0, "positions": 0}
            host = dict(host, **{k: np.pad(host[k], ((0, 0), (0, extra)), constant_values=v)
                                 for k, v in fill.items() if k in host})

        def put(x):
            global_shape = (self.global_batch_size,) + x.shape[1:]
            return jax.make_array_from_process_local_data(self.sharding, x, global_shape)

        batch = {k: put(v) for k, v in host.items() if k != "frames"}
        batch["pixel_values"] = put(host["frames"])
        return batch
