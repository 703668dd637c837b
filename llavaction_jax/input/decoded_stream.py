"""tf.data over a stream of raw records: a parallel, order-preserving map decodes them (decode.py), and what tf.data
would hide is kept: a CRC failure or a record that does not parse is an error naming its file and offset, or,
with config.data.skip_corrupt_records, a `Skipped` (counted, listed, still a position of the stream, so resume
stays exact).
"""
import tensorflow as tf

from llavaction_jax.cli import UserError
from llavaction_jax.input import recordio

_PREFETCH = 4


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


class DecodedRecords:
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
