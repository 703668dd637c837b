"""Random access into TFRecord files: an index of (file, offset, length) per record, and a reader.

A TFRecord file is a sequence of `uint64 length | uint32 crc(length) | data[length] | uint32 crc(data)`. Indexing
reads only the 12-byte headers (seeking over the payloads), so an epoch can visit records in any order and a
resumed run can start at any position without replaying the stream (exact, O(1) resume).

Both checksums are verified as tf.data's reader does (masked CRC32C): the length's when indexing, the data's at
every read, so a flipped byte is a CorruptRecordError naming the file and byte offset, never a silently
different sample.
"""
import os
import struct

import numpy as np
import tensorflow as tf

from llavaction_jax.cli import UserError
from llavaction_jax.data.tfrecord import masked_crc

_HEADER = 12   # uint64 length + uint32 masked crc of the length
_FOOTER = 4    # uint32 masked crc of the data


class CorruptRecordError(UserError):
    """A TFRecord whose length or data fails its CRC, or that is cut short."""


class NoFilesError(UserError, FileNotFoundError):
    """A data glob that matches no file (a FileNotFoundError too, for callers that catch that)."""


def _corrupt(path, pos, what):
    return CorruptRecordError(f"corrupt TFRecord: {what}", f"{path} record at byte {pos}",
                              "an intact TFRecord file (rewrite the shard with llavaction-prep tfrecord)")


def _open(path):
    # Local files through the OS (fast small reads); anything else (gs://, ...) through tf.io.gfile.
    if "://" in path:
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def expand_pattern(pattern):
    """Sorted files of one comma-free glob through tf.io.gfile (local, file://, gs://); error if none match."""
    pattern = pattern.strip()
    try:
        files = sorted(tf.io.gfile.glob(pattern))
    except tf.errors.OpError as e:
        raise UserError(f"cannot list data files: {e.message}", pattern) from None
    files = [f for f in files if not f.endswith((".json", ".jsonl"))]   # manifest.json, failures.jsonl
    if not files:
        raise NoFilesError("no TFRecord files match", pattern, "a glob of TFRecord shards, e.g. /data/train-*")
    return files


def scan_file(path):
    """(offsets, lengths) of the payloads of every record in one TFRecord file."""
    offsets, lengths = [], []
    with _open(path) as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        pos = 0
        while pos < size:
            f.seek(pos)
            header = f.read(_HEADER)
            if len(header) != _HEADER:
                raise _corrupt(path, pos, f"truncated record header (file size {size})")
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
                raise _corrupt(path, pos, "length CRC mismatch (not a TFRecord file, or a damaged one)")
            end = pos + _HEADER + length + _FOOTER
            if end > size:
                raise _corrupt(path, pos, f"record claims {length} bytes, past the end of the file ({size} bytes); "
                                          "the file is truncated")
            offsets.append(pos + _HEADER)
            lengths.append(length)
            pos = end
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


class RecordIndex:
    """All records of a list of files, in file order then record order."""

    def __init__(self, files):
        self.files = list(files)
        file_idx, offsets, lengths = [], [], []
        for i, path in enumerate(self.files):
            off, length = scan_file(path)
            file_idx.append(np.full(len(off), i, np.int32))
            offsets.append(off)
            lengths.append(length)
        self.file_idx = np.concatenate(file_idx) if file_idx else np.zeros(0, np.int32)
        self.offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)

    def __len__(self):
        return len(self.offsets)

    def subset(self, rows):
        """A view holding only `rows` (np index array) of this index, in that order."""
        sub = RecordIndex.__new__(RecordIndex)
        sub.files = self.files
        sub.file_idx, sub.offsets, sub.lengths = self.file_idx[rows], self.offsets[rows], self.lengths[rows]
        return sub

    def position(self, i):
        """(file, byte offset of record i's header): where a CorruptRecordError points."""
        return self.files[self.file_idx[i]], int(self.offsets[i] - _HEADER)

    def location(self, i):
        return "{} record at byte {}".format(*self.position(i))


class RecordReader:
    """Reads payloads by index; keeps one open handle per file (single-threaded use)."""

    def __init__(self, index):
        self.index = index
        self._handles = {}

    def read(self, i):
        fi = int(self.index.file_idx[i])
        handle = self._handles.get(fi)
        if handle is None:
            handle = self._handles[fi] = _open(self.index.files[fi])
        offset = int(self.index.offsets[i])
        handle.seek(offset)
        length = int(self.index.lengths[i])
        buf = handle.read(length + _FOOTER)
        path, pos = self.index.files[fi], offset - _HEADER
        if len(buf) != length + _FOOTER:
            raise _corrupt(path, pos, f"short read ({len(buf)} of {length + _FOOTER} bytes); the file shrank")
        data = buf[:length]
        if struct.unpack("<I", buf[length:])[0] != masked_crc(data):
            raise _corrupt(path, pos, "data CRC mismatch")
        return data

    def close(self):
        for handle in self._handles.values():
            handle.close()
        self._handles = {}
