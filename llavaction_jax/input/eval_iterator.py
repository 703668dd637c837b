"""The evaluation iterator: one ordered pass over the records, every record exactly once, the last batch padded."""
import math

import jax
import numpy as np
import tensorflow as tf

from llavaction_jax.input import recordio
from llavaction_jax.input.batching import BatchBuilder
from llavaction_jax.input.decode import make_decode_fn
from llavaction_jax.input.decoded_stream import DecodedRecords
from llavaction_jax.input.prefetch import Prefetcher
from llavaction_jax.input.sources import source_files, split_sources
from llavaction_jax.input.text_stage import TextStage


class EvalIterator:
    """One ordered pass; every record exactly once. Iterating yields (batch, ids).

    batch: the training keys plus "valid" int32 [B] (0 on padding rows). ids: this host's rows' sample ids in
    local row order, None on padding rows. Padding rows repeat the first record of the set (a real sample, so
    the model never sees an all-masked row). Records are dealt to hosts round-robin (record i -> host i % P),
    so every host runs the same number of batches.

    with_answer=False: input_ids are generation prompts ending with "<|im_start|>assistant\\n" (labels all -100);
    with_answer=True: full conversations with training labels (for an eval loss).
    """

    def __init__(self, config, mesh, tok, files, batch_size=None, with_answer=False, num_parallel=None):
        pi, pc = jax.process_index(), jax.process_count()
        sources = split_sources(files)
        full = recordio.RecordIndex([f for patterns in sources for f in source_files(patterns)])
        if len(full) == 0:
            raise ValueError(f"evaluation files {sources} hold no records")
        self.num_records = len(full)
        self.index = full.subset(np.arange(pi, len(full), pc))
        self.filler_index = full.subset(np.arange(0, 1))
        self.text = TextStage(config, tok, with_answer=with_answer)
        self.builder = BatchBuilder(config, mesh, tok, batch_size or config.eval.batch_size)
        self.decode_fn = make_decode_fn(int(config.data.num_frames), int(config.model.vision.image_size))
        self.num_parallel = num_parallel or tf.data.AUTOTUNE
        per_host = math.ceil(self.num_records / pc)
        self.num_batches = math.ceil(per_host / self.builder.local_batch_size)

    def __len__(self):
        return self.num_batches

    def _stream(self, index):
        reader = recordio.RecordReader(index)
        try:
            for i in range(len(index)):
                yield i, index.position(i), reader.read(i)
        finally:
            reader.close()

    def _rows(self, index):
        ds = DecodedRecords(lambda: self._stream(index), self.decode_fn, self.num_parallel)
        for _, ex in ds:
            sid, tokens, labels, _ = self.text(ex["sample_json"].decode(), bool(ex["has_video"]))
            yield sid, (tokens, labels, ex["frames"], ex["actions"])

    def _host_batches(self):
        filler = next(self._rows(self.filler_index))[1]
        rows_iter = self._rows(self.index)
        b = self.builder.local_batch_size
        for _ in range(self.num_batches):
            rows, ids = [], []
            for sid, row in rows_iter:
                rows.append(row)
                ids.append(sid)
                if len(rows) == b:
                    break
            valid = np.zeros(b, np.int32)
            valid[:len(rows)] = 1
            ids += [None] * (b - len(rows))
            rows += [filler] * (b - len(rows))
            host = self.builder.host_batch(rows)
            host["valid"] = valid
            yield host, ids

    def __iter__(self):
        prefetch = Prefetcher(self._host_batches)
        try:
            for _ in range(self.num_batches):
                host, ids = prefetch.get()
                yield self.builder.to_global(host), ids
        finally:
            prefetch.close()
