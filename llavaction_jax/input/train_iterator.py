"""The training iterator: an infinite, shuffled, weighted-mixture stream of global batches with exact resume.

The host's k-th example is a pure function of (seed, k) (mixture.py), so resuming restarts the stream at k. A
background thread (prefetch.py) reads the records in that order (recordio.py), decodes them (decoded_stream.py),
tokenises them (text_stage.py) and batches them (batching.py); the caller's thread makes the global arrays.
"""
import functools
import logging

import jax
import numpy as np
import tensorflow as tf

from llavaction_jax.cli import UserError
from llavaction_jax.distributed import allgather_ints
from llavaction_jax.input import mixture, packing, recordio
from llavaction_jax.input.batching import BatchBuilder
from llavaction_jax.input.decode import make_decode_fn
from llavaction_jax.input.decoded_stream import DecodedRecords, Skipped
from llavaction_jax.input.prefetch import Prefetcher
from llavaction_jax.input.sources import host_index, split_sources
from llavaction_jax.input.text_stage import TextStage

log = logging.getLogger(__name__)

STATE_VERSION = 1


def _examples_per_process(k):
    """Every host's stream position."""
    return [int(x) for x in allgather_ints([k])[:, 0]]


class _TrainProducer:
    """Host side of the training stream (runs in the background thread).

    skip (config.data.skip_corrupt_records): a record failing its CRC, its decode or the text stage is left
    out and reported with the batch whose stream span holds it; the batch takes the next records instead. The
    stream position k still counts it, so a batch depends only on where it starts and resume stays exact.
    """

    def __init__(self, seed, indexes, schedule, text, builder, decode_fn, num_parallel, skip=False):
        self.seed, self.indexes, self.schedule = seed, indexes, schedule
        self.text, self.builder, self.decode_fn, self.num_parallel = text, builder, decode_fn, num_parallel
        self.skip = skip

    def record_stream(self, k0):
        """(k, (file, offset), raw record) for k = k0, k0+1, ... on this host (with skip, the
        CorruptRecordError in place of a record that fails its CRC)."""
        consumed = self.schedule.consumed(k0)
        readers = [recordio.RecordReader(index) for index in self.indexes]
        orders = {}
        k = k0
        try:
            while True:
                s = self.schedule.source(k)
                n = len(self.indexes[s])
                epoch, pos = divmod(int(consumed[s]), n)
                if orders.get(s, (None,))[0] != epoch:
                    orders[s] = (epoch, mixture.epoch_order(self.seed, s, epoch, n))
                i = int(orders[s][1][pos])
                try:
                    raw = readers[s].read(i)
                except recordio.CorruptRecordError as e:
                    if not self.skip:
                        raise
                    raw = e
                yield k, self.indexes[s].position(i), raw
                consumed[s] += 1
                k += 1
        finally:
            for reader in readers:
                reader.close()

    def _samples(self, k0):
        """(k, text-stage output, decoded example) of the records that make it, (k, Skipped, None) of the others."""
        # max_gap: every source failing (below) plus the elements tf.data may hold in flight.
        ds = DecodedRecords(lambda: self.record_stream(k0), self.decode_fn, self.num_parallel, skip=self.skip,
                             start=k0, max_gap=2 * sum(len(index) for index in self.indexes) + 1024)
        k = k0
        failing = [0] * len(self.indexes)       # per source: draws skipped in a row
        for got, ex in ds:
            if got != k:
                raise RuntimeError(f"input stream out of order: got example {got}, expected {k}")
            k += 1
            if not isinstance(ex, Skipped):
                try:
                    text = self.text(ex["sample_json"].decode(), bool(ex["has_video"]))
                except ValueError as e:
                    if not self.skip:
                        raise
                    ex = Skipped(got, ds.position, f"sample does not parse: {e}")
            if not self.skip:
                yield got, text, ex
                continue
            s = self.schedule.source(got)
            if not isinstance(ex, Skipped):
                failing[s] = 0
                yield got, text, ex
                continue
            failing[s] += 1
            # 2n draws of a source in a row hold a whole epoch of it: every record failed, skipping would not end.
            if failing[s] >= 2 * len(self.indexes[s]):
                files = sorted(set(self.indexes[s].files))
                raise UserError(f"every record of a training source was skipped as corrupt ({len(self.indexes[s])} "
                                f"records; the last: {ex.record['reason']})", ", ".join(files),
                                "intact TFRecord files written by llavaction-prep tfrecord")
            yield got, ex, None

    def host_batches(self, k0):
        """(host batch, ids, examples consumed after it, rows truncated, skipped records) for the stream
        starting at example k0."""
        if self.builder.packed:
            yield from self.packed_host_batches(k0)
            return
        rows, ids, truncated, skipped = [], [], 0, []
        for k, text, ex in self._samples(k0):
            if isinstance(text, Skipped):
                skipped.append(text.record)
                continue
            sid, tokens, labels, cut = text
            rows.append((tokens, labels, ex["frames"], ex["actions"]))
            ids.append(sid)
            truncated += cut
            if len(rows) == self.builder.local_batch_size:
                yield self.builder.host_batch(rows), ids, k + 1, truncated, skipped
                rows, ids, truncated, skipped = [], [], 0, []

    def packed_host_batches(self, k0):
        """Packed batches: (host batch, per-row ids, first example NOT in the batch, samples truncated, skipped).

        The sample that fits no row closes the batch and opens the next one; a batch therefore depends only on
        the example it starts at, and resuming at the returned position rebuilds the next batch exactly.
        """
        packer, skipped = self.builder.new_packer(), []
        for k, text, ex in self._samples(k0):
            if isinstance(text, Skipped):
                skipped.append(text.record)
                continue
            has_video = bool(ex["has_video"])
            sid, tokens, labels, cut = text
            sample = packing.Sample(sid, tokens, labels, ex["frames"], ex["actions"], has_video, bool(cut))
            if not packer.add(sample):
                host, ids, truncated = self._packed(packer)
                yield host, ids, k, truncated, skipped
                packer, skipped = self.builder.new_packer(), []
                packer.add(sample)      # an empty packer takes any sample of <= max_length tokens

    def _packed(self, packer):
        host = self.builder.host_batch_packed(packer.rows)
        ids = [[s.sid for s in row] for row in packer.rows]
        return host, ids, sum(s.truncated for row in packer.rows for s in row)


class TrainIterator:
    """Infinite, shuffled, weighted-mixture stream of global batches with exact resume.

    Batches may span an epoch boundary (the stream of each source is epoch after epoch), so no sample is
    dropped and each epoch visits every record of this host exactly once.
    """

    def __init__(self, config, mesh, tok, files=None, seed=None, global_batch_size=None, num_parallel=None,
                 prefetch_batches=2):
        self.config = config
        self.seed = int(config.seed if seed is None else seed)
        pi, pc = jax.process_index(), jax.process_count()
        self.sources = split_sources(config.data.train_files if files is None else files)
        self.indexes = [host_index(p, pi, pc) for p in self.sources]
        for patterns, index in zip(self.sources, self.indexes):
            if len(index) == 0:
                # e.g. zero-byte shards (a valid, empty TFRecord file: tf.data would just yield nothing)
                raise UserError(f"no training records in {', '.join(map(str, patterns))} for process {pi} of {pc}",
                                "config.data.train_files", "TFRecord shards holding records (a zero-byte shard is "
                                "empty: rewrite it with llavaction-prep tfrecord)")
        self.weights = mixture.normalise_weights(tuple(config.data.mixture_weights), len(self.sources))
        self.schedule = mixture.MixtureSchedule(self.weights, self.seed)
        self.text = TextStage(config, tok, with_answer=True)
        self.packed = bool(config.data.packing)
        self.skip_corrupt = bool(config.data.skip_corrupt_records)
        self.builder = BatchBuilder(config, mesh, tok, global_batch_size or config.data.global_batch_size,
                                     packed=self.packed)
        self.decode_fn = make_decode_fn(int(config.data.num_frames), int(config.model.vision.image_size))
        self.num_parallel = num_parallel or tf.data.AUTOTUNE
        self.prefetch_batches = prefetch_batches
        self.last_ids = []          # packed: one list of sample ids per local row
        self._per_process = None    # packed: every host's stream position (hosts consume different counts)
        self.num_truncated = 0      # rows with text cut to max_length among the batches returned so far
        self.last_skipped = []      # skip_corrupt: this host's records left out of the last batch's stream span
        self.num_skipped = 0        # skip_corrupt: records skipped so far on all hosts (kept in the state)
        self._prefetch = None
        self._start(0)

    @property
    def local_batch_size(self):
        return self.builder.local_batch_size

    def _start(self, k0):
        self.close()
        # The producer must not reference `self`: then dropping the iterator runs __del__, which stops the thread.
        producer = _TrainProducer(self.seed, self.indexes, self.schedule, self.text, self.builder, self.decode_fn,
                                  self.num_parallel, skip=self.skip_corrupt)
        self._prefetch = Prefetcher(functools.partial(producer.host_batches, k0), self.prefetch_batches)
        self._examples = k0

    def close(self):
        """Stops the background reader (a later set_state restarts it)."""
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown
            pass

    def __iter__(self):
        return self

    def __next__(self):
        if self._prefetch is None:
            self._start(self._examples)
        host, ids, k, truncated, skipped = self._prefetch.get()
        batch = self.builder.to_global(host)
        self._examples = k
        if self.skip_corrupt:
            # A host that skipped a record has read further: positions differ per host, as when packed.
            gathered = allgather_ints([k, len(skipped)])
            self._per_process = [int(x) for x in gathered[:, 0]]
            self.num_skipped += int(gathered[:, 1].sum())
            for r in skipped:
                log.warning("skipped the training record at byte %d of %s (example %d): %s",
                            r["offset"], r["file"], r["example"], r["reason"])
        elif self.packed:
            self._per_process = _examples_per_process(k)
        self.last_ids = ids
        self.last_skipped = skipped
        self.num_truncated += truncated
        return batch

    def epochs(self):
        """Per source, how many full passes this host has made (for logging)."""
        consumed = self.schedule.consumed(self._examples)
        return [int(c) // len(index) for c, index in zip(consumed, self.indexes)]

    def get_state(self):
        """Small JSON-serialisable state; identical on every host (it only depends on (seed, k)).

        Packed, or skipping corrupt records: hosts consume different numbers of examples per batch, so the state
        lists every host's k (gathered with each batch) and each host resumes at its own; with skipping it also
        holds the number of records skipped so far on all hosts.
        """
        if self.packed or self.skip_corrupt:
            per_process = self._per_process or [int(self._examples)] * jax.process_count()
            state = {
                "version": STATE_VERSION,
                "seed": self.seed,
                "packing": self.packed,
                "examples_per_process": [int(k) for k in per_process],
                "draws_per_source": [[int(c) for c in self.schedule.consumed(k)] for k in per_process],
                "weights": [float(w) for w in self.weights],
            }
            if self.skip_corrupt:
                state["skipped_records"] = int(self.num_skipped)
            return state
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "examples": int(self._examples),
            "draws_per_source": [int(c) for c in self.schedule.consumed(self._examples)],
            "weights": [float(w) for w in self.weights],
        }

    def set_state(self, state):
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"input state version {state.get('version')} != {STATE_VERSION}: {state}")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"input state was saved with seed {state['seed']}, this iterator has {self.seed}")
        pi, pc = jax.process_index(), jax.process_count()
        if "examples_per_process" in state:
            per_process = [int(k) for k in state["examples_per_process"]]
            if len(per_process) != pc:
                raise ValueError(f"input state has examples_per_process for {len(per_process)} processes, "
                                 f"this run has {pc}: a packed stream resumes only on the same process count")
            if not (self.packed or self.skip_corrupt) and len(set(per_process)) > 1:
                raise ValueError("input state comes from a packed run (config.data.packing) or one that skipped "
                                 "corrupt records, whose hosts stopped at different examples "
                                 f"{per_process}; resume it with the same packing / skip_corrupt_records")
            saved_draws = state["draws_per_source"][pi]
        else:       # an unpacked state: every host is at the same k
            per_process = [int(state["examples"])] * pc
            saved_draws = state["draws_per_source"]
        k = per_process[pi]
        draws = [int(c) for c in self.schedule.consumed(k)]
        if draws != [int(c) for c in saved_draws] or not np.allclose(state["weights"], self.weights):
            raise ValueError("input state does not match this iterator's sources/mixture weights: "
                             f"saved draws {saved_draws} weights {state['weights']}, "
                             f"here {draws} {list(self.weights)}")
        self._start(k)
        self._per_process = per_process if (self.packed or self.skip_corrupt) else None
        self.num_skipped = int(state.get("skipped_records", 0))


def make_train_iterator(config, mesh, tok, files=None, seed=None, global_batch_size=None, num_parallel=None,
                        prefetch_batches=2):
    """Training batches: dict of global jax.Arrays (input_ids, attention_mask, labels, pixel_values, actions).

    With config.data.packing also segment_ids and positions [B, L]; pixel_values is then [B, P, F, S, S, 3]
    and actions [B, P, 3] (P = config.data.max_videos_per_row; see llavaction_jax.input.packing).
    """
    return TrainIterator(config, mesh, tok, files=files, seed=seed, global_batch_size=global_batch_size,
                         num_parallel=num_parallel, prefetch_batches=prefetch_batches)
