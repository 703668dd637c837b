"""Random access into TFRecord files: an index of (file, offset, length) per record, and a reader.

A TFRecord file is a sequence of `uint64 length | uint32 crc(length) | data[length] | uint32 crc(data)`. Indexing
reads only the 12-byte headers (seeking over the payloads), so an epoch can visit records in any order and a
resumed run can start at any position without replaying the stream (exact, O(1) resume).
"""
import glob
import os
import struct

import numpy as np
import tensorflow as tf

_HEADER = 12   # uint64 length + uint32 masked crc of the length
_FOOTER = 4    # uint32 masked crc of the data


def _open(path):
    # Local files through the OS (fast small reads); anything else (gs://, ...) through tf.io.gfile.
    if "://" in path:
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def expand_pattern(pattern):
    """Sorted files of one comma-free glob (local or tf.io.gfile); error if it matches nothing."""
    pattern = pattern.strip()
    files = sorted(tf.io.gfile.glob(pattern)) if "://" in pattern else sorted(glob.glob(pattern))
    files = [f for f in files if not f.endswith((".json", ".jsonl"))]   # manifest.json, failures.jsonl
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
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
                raise ValueError(f"{path}: truncated record header at byte {pos} (file size {size})")
            (length,) = struct.unpack("<Q", header[:8])
            end = pos + _HEADER + length + _FOOTER
            if end > size:
                raise ValueError(f"{path}: record at byte {pos} claims {length} bytes, past the end of the file "
                                 f"({size} bytes); the file is truncated or not a TFRecord file")
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

    def location(self, i):
        return f"{self.files[self.file_idx[i]]} record at byte {self.offsets[i]}"


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
        handle.seek(int(self.index.offsets[i]))
        length = int(self.index.lengths[i])
        data = handle.read(length)
        if len(data) != length:
            raise ValueError(f"{self.index.location(i)}: short read ({len(data)} of {length} bytes)")
        return data

    def close(self):
        for handle in self._handles.values():
            handle.close()
        self._handles = {}
