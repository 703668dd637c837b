"""TFRecord integrity in the training/eval reader: every CRC is checked, a damaged or foreign record is an error
naming its file and byte offset (as tf.data's own reader would refuse it), never a silently different sample."""
import os
import struct

import jax
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import Mesh

from configs import tiny
from llavaction_jax.cli import UserError
from llavaction_jax.input import recordio, synthetic_records, train_iterator
from llavaction_jax.input.tokenizer import train_tiny_tokenizer

F, S = 4, 32


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("crc")
    paths, samples = synthetic_records.write_shards(str(root), 6, 1, F, S, prefix="train")
    texts = [c["value"] for s in samples for c in s["conversations"]]
    tok = train_tiny_tokenizer(texts * 4, str(root / "tok"), vocab_size=300)
    return dict(root=root, path=paths[0], samples=samples, tok=tok)


def _flip_answer_letter(src, dst, record):
    """Copy `src` with the supervised answer letter of `record` changed (e.g. C -> D); returns its offset."""
    data = bytearray(open(src, "rb").read())
    offsets, _ = recordio.scan_file(src)
    start = int(offsets[record])
    at = data.index(b'"answer": "', start) + len(b'"answer": "')
    data[at] = ord("A") + (data[at] - ord("A") + 1) % 5
    open(dst, "wb").write(bytes(data))
    return start - 12


def test_masked_crc_matches_tensorflow_writer(shard):
    raw = open(shard["path"], "rb").read()
    (length,) = struct.unpack("<Q", raw[:8])
    assert struct.unpack("<I", raw[8:12])[0] == recordio.masked_crc(raw[:8])
    assert struct.unpack("<I", raw[12 + length:16 + length])[0] == recordio.masked_crc(raw[12:12 + length])


def test_flipped_byte_is_an_error_naming_file_and_offset(shard, tmp_path):
    bad = str(tmp_path / "train-00000-of-00001.tfrecord")
    pos = _flip_answer_letter(shard["path"], bad, record=3)
    index = recordio.RecordIndex([bad])                     # headers are intact: indexing succeeds
    reader = recordio.RecordReader(index)
    for i in range(3):
        reader.read(i)
    with pytest.raises(recordio.CorruptRecordError) as e:
        reader.read(3)
    assert e.value.line() == (f"corrupt TFRecord: data CRC mismatch ({bad} record at byte {pos}): an intact "
                              "TFRecord file (rewrite the shard with llavaction-prep tfrecord)")
    # tf.data refuses the same file too: the two readers agree.
    with pytest.raises(tf.errors.DataLossError):
        for _ in tf.data.TFRecordDataset(bad):
            pass
    # A damaged length field is caught while indexing.
    data = bytearray(open(shard["path"], "rb").read())
    data[0] ^= 0x01
    open(bad, "wb").write(bytes(data))
    with pytest.raises(recordio.CorruptRecordError, match=r"length CRC mismatch .*record at byte 0\)"):
        recordio.RecordIndex([bad])


def _mesh():
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


def _config(files):
    cfg = tiny.get_config()
    cfg.data.train_files = files
    cfg.data.global_batch_size = 2
    cfg.data.length_buckets = (192, 256)
    return cfg


def test_training_iterator_stops_on_a_corrupt_record(shard, tmp_path):
    """The flipped answer letter (C -> D) no longer reaches training with rc 0: the iterator raises the CRC error
    itself (not a tf.data error with a traceback in its message)."""
    bad = str(tmp_path / "train-00000-of-00001.tfrecord")
    pos = _flip_answer_letter(shard["path"], bad, record=0)
    it = train_iterator.make_train_iterator(_config(bad), _mesh(), shard["tok"], seed=0)
    try:
        with pytest.raises(recordio.CorruptRecordError, match=rf"data CRC mismatch \({bad} record at byte {pos}\)"):
            for _ in range(4):        # 3 batches of 2 = one epoch: the damaged record is reached
                next(it)
    finally:
        it.close()


def test_wrong_schema_record_names_the_file(shard, tmp_path):
    bad = str(tmp_path / "other-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(bad) as w:
        for _ in range(2):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}))
            w.write(ex.SerializeToString())
    it = train_iterator.make_train_iterator(_config(bad), _mesh(), shard["tok"], seed=0)
    try:
        with pytest.raises(UserError, match=rf"record does not decode as a training sample: .*\({bad} record at "
                                            r"byte 0\): records written by llavaction-prep tfrecord"):
            next(it)
    finally:
        it.close()
