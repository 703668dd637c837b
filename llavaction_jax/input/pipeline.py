"""Training / evaluation input pipelines: TFRecord shards -> global, sharded jax.Array batches.

Stages
1. Index (recordio): each host lists its share of the records: whole files when the file count divides evenly
   by the process count, otherwise every P-th record. Only record headers are read.
2. Order (mixture): the host's k-th example is a pure function of (seed, k): a weighted, block-stratified choice
   of source, then that source's per-epoch permutation. Exact resume = restart the stream at k.
3. tf.data: a generator reads the raw records in that order; a parallel, order-preserving map parses them
   (llavaction_jax.input.features.FEATURE_SPEC), decodes the JPEG frames (uint8) and resizes them if needed. A record
   failing its CRC or its parse is an error naming file and offset, or, with config.data.skip_corrupt_records,
   a skip (`Skipped`: counted, listed, still a position of the stream, so resume stays exact).
4. Host stage (background thread): ChatML tokens + labels (chat.py; time instruction via llavaction_jax.data.prompts),
   truncation of text beyond max_length (counted, warned; video slots are never cut), right padding to the
   smallest length bucket that fits the row, stacking into numpy batches. With config.data.packing the
   training rows are packed instead (packing.py: greedy first-fit in stream order, several samples per row
   with segment_ids / per-segment positions, up to config.data.max_videos_per_row videos per row).
5. Caller's thread: all hosts agree on the padded length (the max of their buckets), the batch becomes global
   jax.Arrays over the mesh batch axes ('data', 'fsdp') via jax.make_array_from_process_local_data; the
   frames stay uint8 and the train step SigLIP-normalises them on device (input/schema.normalize_pixels:
   (x/255 - 0.5)/0.5, exact, by table lookup).
"""
import functools
import json
import logging
import math
import queue
import threading

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils

from llavaction_jax.data import prompts
from llavaction_jax.input.features import FEATURE_SPEC
from llavaction_jax.cli import UserError
from llavaction_jax.input import chat, mixture, packing, recordio

log = logging.getLogger(__name__)

# tf.data only needs the CPU; keep TensorFlow off any GPU so it does not reserve memory JAX needs.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:   # TF already initialised its devices elsewhere in this process
    pass

STATE_VERSION = 1
_PREFETCH = 4


# ---------------------------------------------------------------------------------------------------------------
# Sources and host sharding
# ---------------------------------------------------------------------------------------------------------------
def split_sources(files):
    """Sources as lists of glob patterns: 'a*,b*' -> [['a*'], ['b*']]; ['a*', 'b*'] -> same; [[...]] kept."""
    if isinstance(files, str):
        files = [p for p in files.split(",") if p.strip()]
    sources = [[s] if isinstance(s, str) else list(s) for s in files]
    if not sources:
        raise ValueError("no input files: set config.data.train_files / eval_files or pass files=")
    return sources


def _source_files(patterns):
    files = []
    for pattern in patterns:
        files.extend(recordio.expand_pattern(pattern))
    return files


def host_index(patterns, process_index, process_count, by_record=False):
    """This host's records of one source. File-level sharding when possible (each host scans only its files)."""
    files = _source_files(patterns)
    if not by_record and len(files) % process_count == 0:
        return recordio.RecordIndex(files[process_index::process_count])
    full = recordio.RecordIndex(files)
    return full.subset(np.arange(process_index, len(full), process_count))


# ---------------------------------------------------------------------------------------------------------------
# tf.data decoding
# ---------------------------------------------------------------------------------------------------------------

# The one JPEG decode of every path (training, periodic eval, the eval CLI, predict on TFRecords): TF's decoder
# with an explicit DCT (the default, INTEGER_FAST on most builds, differs from PIL / libjpeg's accurate DCT in most
# pixels by a level or two), so train and eval see bit-identical pixels.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode_frame_tf(jpeg, image_size):
    """One JPEG (scalar string tensor) -> uint8 [S, S, 3]; resized (bicubic, antialiased) only if not S x S."""
    img = tf.io.decode_jpeg(jpeg, channels=3, dct_method=JPEG_DCT_METHOD)
    shape = tf.shape(img)

    def resized():
        out = tf.image.resize(img, [image_size, image_size], method="bicubic", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
    img = tf.cond(same, lambda: img, resized)
    return tf.ensure_shape(img, [image_size, image_size, 3])


_DECODE_FRAMES_FNS = {}


def decode_jpeg_frames(jpegs, image_size):
    """list of JPEG bytes -> uint8 [N, S, S, 3] with exactly the training decode (eval sources use this)."""
    fn = _DECODE_FRAMES_FNS.get(int(image_size))
    if fn is None:
        fn = _DECODE_FRAMES_FNS[int(image_size)] = tf.function(
            lambda x: tf.map_fn(lambda j: decode_frame_tf(j, int(image_size)), x, fn_output_signature=tf.uint8),
            input_signature=[tf.TensorSpec([None], tf.string)])
    return fn(tf.constant(list(jpegs), tf.string)).numpy()


def make_decode_fn(num_frames, image_size):
    """raw tf.train.Example bytes -> dict of tensors; frames decoded to uint8 [F, S, S, 3] (zeros if text-only)."""
    def decode_frame(jpeg):
        return decode_frame_tf(jpeg, image_size)

    def decode(raw):
        ex = tf.io.parse_single_example(raw, FEATURE_SPEC)
        jpegs = ex["frames"]
        n = tf.shape(jpegs)[0]

        def video():
            check = tf.debugging.Assert(tf.equal(n, num_frames), [
                "sample", ex["id"], "has", n, f"frames; config.data.num_frames={num_frames}"])
            with tf.control_dependencies([check]):
                return tf.map_fn(decode_frame, jpegs, fn_output_signature=tf.uint8)

        def text_only():   # never looked at: a text-only row has no video slots
            return tf.zeros([num_frames, image_size, image_size, 3], tf.uint8)

        pixels = tf.cond(n > 0, video, text_only)
        return {
            "id": ex["id"],
            "sample_json": ex["sample_json"],
            "has_video": n > 0,
            "frames": tf.ensure_shape(pixels, [num_frames, image_size, image_size, 3]),
            "actions": tf.cast(tf.stack([ex["verb_class"], ex["noun_class"], ex["action_id"]]), tf.int32),
        }
    return decode


def _decoded_dataset(generator, decode_fn, num_parallel, skip_errors=False):
    ds = tf.data.Dataset.from_generator(
        generator, output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string)))
    ds = ds.map(lambda k, raw: (k, decode_fn(raw)), num_parallel_calls=num_parallel, deterministic=True)
    if skip_errors:
        # Drops the elements whose decode fails; their k is then missing from the ordered stream.
        ds = ds.ignore_errors()
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(_PREFETCH)


def _where(position):
    path, offset = position
    return f"{path} record at byte {offset}"


class Skipped:
    """A record left out of the stream (config.data.skip_corrupt_records): `record` = {example, file, offset,
    reason}, the row data_failures.jsonl gets."""

    def __init__(self, k, position, reason):
        self.record = {"example": int(k), "file": position[0], "offset": int(position[1]), "reason": reason}


class _DecodedRecords:
    """(k, decoded example) for a stream of (k, (file, offset), raw record), keeping what tf.data would hide.

    tf.data turns an exception of the Python generator (a CRC failure) into a generic error with a traceback in
    its message, and a record that does not parse (wrong schema, wrong frame count) into an op error that names
    no file. Here the generator's own exception is re-raised, and a decode error names the record's file and
    offset (the first record in flight is the one that failed: the map is deterministic, so order is kept).

    With skip=True the stream (starting at example `start`) yields (k, Skipped) in place of such a record: the
    stream hands over a CRC failure as the CorruptRecordError itself, and a record tf.data dropped for a
    decode error shows as a gap in k (the reason is then the error of decoding it again, eagerly). `max_gap`:
    the stream stops after that many records in a row without one that decodes (all data corrupt), as the
    consumer would otherwise wait forever.
    """

    def __init__(self, stream_fn, decode_fn, num_parallel, skip=False, start=0, max_gap=None):
        self.stream_fn, self.decode_fn, self.num_parallel = stream_fn, decode_fn, num_parallel
        self.skip, self.start, self.max_gap = skip, start, max_gap
        self.expected = start       # the consumer's next k (read by the generator's thread)
        self.locations = {}
        self.raws = {}              # skip: records in flight, to name a decode failure's reason
        self.crc_failed = {}        # skip: k -> reason
        self.position = None        # (file, offset) of the example yielded last
        self.error = None

    def _generator(self):
        try:
            for k, location, raw in self.stream_fn():
                if self.max_gap and k - self.expected >= self.max_gap:
                    break
                self.locations[k] = location
                if isinstance(raw, recordio.CorruptRecordError):
                    self.crc_failed[k] = raw.what
                    continue
                if self.skip:
                    self.raws[k] = raw
                yield k, raw
        except Exception as e:    # noqa: BLE001 - handed to the consumer as it is
            self.error = e

    def _skipped(self, k):
        raw, reason = self.raws.pop(k, None), self.crc_failed.pop(k, None)
        if reason is None:
            try:
                self.decode_fn(tf.constant(raw))
                reason = "record does not decode as a training sample"
            except tf.errors.OpError as e:
                reason = "record does not decode as a training sample: " + _first_line(e)
        return Skipped(k, self.locations.pop(k), reason)

    def __iter__(self):
        it = _decoded_dataset(self._generator, self.decode_fn, self.num_parallel,
                              skip_errors=self.skip).as_numpy_iterator()
        expected = self.expected = self.start
        while True:
            try:
                k, ex = next(it)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                if self.error is not None:
                    raise self.error from None
                where = _where(self.locations[min(self.locations)]) if self.locations else "a TFRecord file"
                raise UserError(f"record does not decode as a training sample: {_first_line(e)}", where,
                                "records written by llavaction-prep tfrecord with config.data.num_frames frames "
                                "per video") from None
            k = int(k)
            for gap in range(expected, k):
                yield gap, self._skipped(gap)
            expected = self.expected = k + 1
            self.raws.pop(k, None)
            self.position = self.locations.pop(k, None)
            yield k, ex
        for gap in sorted(self.locations):       # records skipped after the last good one
            if gap >= expected:
                yield gap, self._skipped(gap)
        if self.error is not None:
            raise self.error


def _first_line(error):
    return (error.message or type(error).__name__).strip().splitlines()[0]


# ---------------------------------------------------------------------------------------------------------------
# Host-side text stage
# ---------------------------------------------------------------------------------------------------------------
class TextStage:
    """Turns a decoded example into (id, input_ids, labels, truncated) with truncation to max_length."""

    def __init__(self, config, tok, with_answer=True):
        from llavaction_jax.model import num_video_tokens   # the model owns the video token layout
        self.tok = tok
        self.num_frames = int(config.data.num_frames)
        self.n_video = int(num_video_tokens(config.model, self.num_frames))
        self.max_length = int(config.data.max_length)
        self.add_time = bool(config.data.add_time_instruction)
        self.system_prompt = config.data.system_prompt
        self.with_answer = with_answer
        self.num_truncated = 0
        if self.n_video + 16 > self.max_length:
            raise ValueError(f"config.data.max_length={self.max_length} leaves no room for text after the "
                             f"{self.n_video} video tokens of {self.num_frames} frames")

    def __call__(self, sample_json, has_video):
        try:
            sample = json.loads(sample_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"sample_json is not valid JSON ({e}): {sample_json[:200]!r}") from None
        sid = sample.get("id", "<no id>")
        conversations = sample.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise ValueError(f"sample {sid!r}: 'conversations' must be a non-empty list")
        n_video = self.n_video if has_video else 0
        conversations = [dict(turn) for turn in conversations]
        human = next((t for t in conversations if t.get("from", t.get("role")) in ("human", "user")), None)
        if human is None:
            raise ValueError(f"sample {sid!r}: no human turn in 'conversations'")
        try:
            if has_video and self.add_time:
                duration = float(sample["stop_timestamp"]) - float(sample["start_timestamp"])
                human["value"] = prompts.add_time_instruction(sample, human["value"], duration, self.num_frames)
            if self.with_answer:
                ids, labels = chat.tokenize_conversation(self.tok, conversations, n_video, self.system_prompt)
            else:
                ids = chat.tokenize_prompt(self.tok, human["value"], n_video, self.system_prompt)
                labels = [chat.IGNORE_INDEX] * len(ids)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"sample {sid!r}: {type(e).__name__}: {e}") from None
        truncated = len(ids) > self.max_length
        if truncated:
            ids, labels = self._truncate(sid, ids, labels)
        return sid, ids, labels, truncated

    def _truncate(self, sid, ids, labels):
        # Training rows lose their end (as the original's model_max_length cut). A generation prompt keeps its
        # last `<|im_end|>\n<|im_start|>assistant\n` and loses the end of the question instead.
        tail = 0 if self.with_answer else 3 + len(self.tok.encode("assistant\n"))
        keep = self.max_length - tail
        video = np.flatnonzero(np.asarray(ids) == self.tok.video_token_id)
        if len(video) and video[-1] >= keep:
            raise ValueError(f"sample {sid!r}: its video tokens end at position {video[-1] + 1}, past the "
                             f"{keep} tokens config.data.max_length={self.max_length} leaves; video slots are "
                             "never truncated: raise max_length or shorten the prompt before <image>")
        self.num_truncated += 1
        if self.num_truncated <= 10 or self.num_truncated % 1000 == 0:
            log.warning("sample %r: %d tokens > max_length=%d, text truncated (%d samples so far)",
                        sid, len(ids), self.max_length, self.num_truncated)
        if tail:
            return ids[:keep] + ids[-tail:], labels[:keep] + labels[-tail:]
        return ids[:keep], labels[:keep]


def pad_length(needed, buckets, max_length):
    """Smallest bucket (or max_length) >= needed."""
    for length in sorted(set(int(b) for b in buckets) | {int(max_length)}):
        if length >= needed:
            return length
    raise ValueError(f"a row of {needed} tokens exceeds max_length={max_length}")


def agreed_pad_length(local_length):
    """The padded length every host uses: the max over hosts of their own bucket (one tiny allgather)."""
    if jax.process_count() == 1:
        return int(local_length)
    return int(np.max(multihost_utils.process_allgather(np.asarray([local_length], np.int64))))


def _allgather_ints(values):
    """[process_count, len(values)] int64: every host's `values` (one tiny allgather, in the caller's thread
    like the pad length)."""
    local = np.asarray(values, np.int64).reshape(1, -1)
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local[0])).reshape(jax.process_count(), -1)


def _examples_per_process(k):
    """Every host's stream position."""
    return [int(x) for x in _allgather_ints([k])[:, 0]]


def _batch_sharding(mesh):
    from llavaction_jax.sharding import batch_sharding
    return batch_sharding(mesh)


class _BatchBuilder:
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
        self.sharding = _batch_sharding(mesh)
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


class _Failure:
    def __init__(self, error):
        self.error = error


class _Prefetcher:
    """Runs a generator of host-side batches in a background thread (bounded queue, order kept).

    Only host work runs there (reading, tokenising, padding); anything that talks to other hosts or devices
    stays in the caller's thread, so every host issues its collectives in the same order.
    """
    _END = object()

    def __init__(self, generator_fn, depth=2):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(generator_fn,), daemon=True,
                                        name="input-host-stage")
        self._thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, generator_fn):
        gen = None
        try:
            gen = generator_fn()
            for item in gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:   # re-raised in the consumer's thread
            self._put(_Failure(e))
        finally:
            if gen is not None:
                gen.close()

    def get(self):
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)       # stay exhausted
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise item.error
        return item

    def close(self):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.05)


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
        ds = _DecodedRecords(lambda: self.record_stream(k0), self.decode_fn, self.num_parallel, skip=self.skip,
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


# ---------------------------------------------------------------------------------------------------------------
# Training iterator
# ---------------------------------------------------------------------------------------------------------------
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
        self.builder = _BatchBuilder(config, mesh, tok, global_batch_size or config.data.global_batch_size,
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
        self._prefetch = _Prefetcher(functools.partial(producer.host_batches, k0), self.prefetch_batches)
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
            gathered = _allgather_ints([k, len(skipped)])
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


# ---------------------------------------------------------------------------------------------------------------
# Evaluation iterator
# ---------------------------------------------------------------------------------------------------------------
class EvalIterator:
    """One ordered pass; every record exactly once. Iterating yields (batch, ids).

    batch: the training keys plus "valid" int32 [B] (0 on padding rows). ids: this host's rows' sample ids in
    local row order, None on padding rows. Padding rows repeat the first record of the set (a real sample, so
    the model never sees an all-masked row). Records are dealt to hosts round-robin (record i -> host i % P),
    so every host runs the same number of batches.
    """

    def __init__(self, config, mesh, tok, files=None, batch_size=None, with_answer=False, num_parallel=None):
        pi, pc = jax.process_index(), jax.process_count()
        sources = split_sources(config.data.eval_files if files is None else files)
        full = recordio.RecordIndex([f for patterns in sources for f in _source_files(patterns)])
        if len(full) == 0:
            raise ValueError(f"evaluation files {sources} hold no records")
        self.num_records = len(full)
        self.index = full.subset(np.arange(pi, len(full), pc))
        self.filler_index = full.subset(np.arange(0, 1))
        self.text = TextStage(config, tok, with_answer=with_answer)
        self.builder = _BatchBuilder(config, mesh, tok, batch_size or config.eval.batch_size)
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
        ds = _DecodedRecords(lambda: self._stream(index), self.decode_fn, self.num_parallel)
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
        prefetch = _Prefetcher(self._host_batches)
        try:
            for _ in range(self.num_batches):
                host, ids = prefetch.get()
                yield self.builder.to_global(host), ids
        finally:
            prefetch.close()


def make_eval_iterator(config, mesh, tok, files=None, batch_size=None, with_answer=False, num_parallel=None):
    """Evaluation batches (no shuffle, one pass, last batch padded with valid=0 rows): yields (batch, ids).

    with_answer=False: input_ids are generation prompts ending with "<|im_start|>assistant\\n" (labels all -100);
    with_answer=True: full conversations with training labels (for an eval loss).
    """
    return EvalIterator(config, mesh, tok, files=files, batch_size=batch_size, with_answer=with_answer,
                        num_parallel=num_parallel)
