"""TFRecord files without TensorFlow (importing TF imports JAX, and data prep needs neither).

A record is `uint64 length | uint32 masked crc(length) | data | uint32 masked crc(data)`, little-endian, with
TFRecord's masked CRC32C (tensorflow/core/lib/io/record_writer.cc): the bytes tf.io.TFRecordWriter writes.
"""
import struct

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C (tensorflow/core/lib/hash/crc32c.h: rotate right by 15, add a constant)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record's bytes as they sit in a TFRecord file."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


class RecordWriter:
    """Writes records to a local TFRecord file (uncompressed, like tf.io.TFRecordWriter(path))."""

    def __init__(self, path: str):
        self._file = open(path, "wb")

    def write(self, record: bytes) -> None:
        self._file.write(frame_record(record))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
