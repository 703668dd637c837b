"""config.data.skip_corrupt_records: off, a damaged training record stops the run with one line naming its file
and offset (exit 2); on, it is skipped, counted and listed, the batch takes the next records, and a resumed
stream is the same stream."""
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from llavaction_jax import cli
from llavaction_jax.cli import UserError
from llavaction_jax.input import mixture, recordio, synthetic_records, train_iterator
from llavaction_jax.input.tokenizer import Tokenizer, train_tiny_tokenizer
from llavaction_jax.train import loop

from tests.test_train_step import _config, _mesh

N = 9           # records in the shard: 8 intact + the damaged one = one batch of 8 and one skip


def _flip_middle_byte(path, record):
    """Flips one byte in the middle of `record`'s payload (its data CRC then fails); returns the record's offset."""
    data = bytearray(open(path, "rb").read())
    offsets, lengths = recordio.scan_file(path)
    data[int(offsets[record] + lengths[record] // 2)] ^= 0xFF
    open(path, "wb").write(bytes(data))
    return int(offsets[record]) - 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("skip")
    cfg = _config(steps=1)
    paths, samples = synthetic_records.write_shards(str(root / "records"), N, 1, cfg.data.num_frames,
                                            cfg.model.vision.image_size)
    train_tiny_tokenizer([t["value"] for s in samples for t in s["conversations"]], str(root / "tok"),
                         vocab_size=cfg.model.text.vocab_size)
    # The record read third in the first epoch: intact records come before and after it in the stream.
    record = int(mixture.epoch_order(int(cfg.seed), 0, 0, N)[2])
    offset = _flip_middle_byte(paths[0], record)
    cfg.data.update(train_files=paths[0], tokenizer_path=str(root / "tok"), length_buckets=(256,),
                    global_batch_size=8)
    ids = [s["id"] for s in samples]
    return dict(cfg=cfg, path=paths[0], record=record, offset=offset,
                good_ids=set(ids) - {ids[record]})


def test_corrupt_record_is_one_line_error_by_default(data, tmp_path, capsys):
    cfg = data["cfg"]
    assert cli.run(lambda: loop.train(cfg, str(tmp_path / "w"), mesh=_mesh(cfg))) == cli.EXIT_USER
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: corrupt TFRecord: data CRC mismatch ({data['path']} record at byte {data['offset']}): "
                     "an intact TFRecord file (rewrite the shard with llavaction-prep tfrecord)"]


def test_skip_corrupt_records_counts_lists_and_consumes_the_rest(data, tmp_path, caplog):
    cfg = data["cfg"].copy_and_resolve_references()
    cfg.data.skip_corrupt_records = True
    mesh = _mesh(cfg)
    workdir = str(tmp_path / "w")
    it = loop.make_train_iterator(cfg, mesh)
    try:
        summary = loop.train(cfg, workdir, train_iter=it, mesh=mesh)
        consumed = list(it.last_ids)
        state = it.get_state()
    finally:
        it.close()
    assert summary["final_step"] == 1 and np.isfinite(summary["losses"]).all()
    assert summary["skipped_records"] == 1
    assert sorted(consumed) == sorted(data["good_ids"])          # every other record, each once
    assert state["examples_per_process"] == [N] and state["skipped_records"] == 1
    with open(os.path.join(workdir, "data_failures.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert rows == [{"step": 1, "example": 2, "file": data["path"], "offset": data["offset"],
                     "reason": "corrupt TFRecord: data CRC mismatch"}]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        counts = [r for r in map(json.loads, f) if r["prefix"] == "data"]
    assert counts == [{"step": 1, "prefix": "data", "skipped_records": 1}]
    summary_lines = [r.getMessage() for r in caplog.records if "corrupt training record(s) skipped" in r.getMessage()]
    assert summary_lines == ["1 corrupt training record(s) skipped (config.data.skip_corrupt_records); listed in "
                             f"{workdir}/data_failures.jsonl"]


def _take(it, n):
    out = []
    for _ in range(n):
        batch = next(it)
        out.append((jax.device_get(batch["input_ids"]), list(it.last_ids), list(it.last_skipped)))
    return out


@pytest.mark.parametrize("packing", [False, True])
def test_skips_are_deterministic_and_resume_exactly(data, tmp_path, packing):
    """A record that does not parse (valid CRCs, wrong schema) is skipped too; batches after a restore from
    get_state() equal those of the uninterrupted stream, skips and count included, packed or not."""
    cfg = data["cfg"].copy_and_resolve_references()
    src = cfg.data.train_files
    path = str(tmp_path / "mixed.tfrecord")
    foreign = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))})).SerializeToString()
    index = recordio.RecordIndex([src])
    reader = recordio.RecordReader(index)
    intact = []
    for i in range(len(index)):
        try:
            intact.append(reader.read(i))
        except recordio.CorruptRecordError:
            pass
    reader.close()
    with tf.io.TFRecordWriter(path) as w:
        for raw in intact[:3] + [foreign] + intact[3:6]:
            w.write(raw)
    cfg.data.update(train_files=path, skip_corrupt_records=True, global_batch_size=2, packing=packing)
    mesh = _mesh(cfg)
    tok = Tokenizer.load(cfg.data.tokenizer_path, video_token_id=cfg.model.video_token_id)
    full = train_iterator.make_train_iterator(cfg, mesh, tok, seed=0)
    part = train_iterator.make_train_iterator(cfg, mesh, tok, seed=0)
    rest = train_iterator.make_train_iterator(cfg, mesh, tok, seed=0)
    try:
        expected = _take(full, 8)            # 16 samples: more than two epochs of the 6 intact records
        head = _take(part, 3)
        rest.set_state(part.get_state())
        tail = _take(rest, 5)
        skips = [r for _, _, s in expected for r in s]
        assert full.num_skipped == len(skips) >= 2                  # the foreign record, once per epoch
        assert {(r["offset"], r["reason"].split(":")[0]) for r in skips} == {
            (_record_offset(path, 3), "record does not decode as a training sample")}
        assert rest.num_skipped == full.num_skipped
        for (a_ids, a_sid, a_skip), (b_ids, b_sid, b_skip) in zip(expected, head + tail):
            np.testing.assert_array_equal(a_ids, b_ids)
            assert a_sid == b_sid and a_skip == b_skip
    finally:
        for it in (full, part, rest):
            it.close()


def _record_offset(path, record):
    return int(recordio.scan_file(path)[0][record]) - 12


def test_a_source_of_only_corrupt_records_is_an_error_not_an_endless_skip(data, tmp_path):
    cfg = data["cfg"].copy_and_resolve_references()
    path = str(tmp_path / "all-bad.tfrecord")
    with open(data["path"], "rb") as f:
        open(path, "wb").write(f.read())
    for record in range(N):
        if record != data["record"]:        # that one is damaged already
            _flip_middle_byte(path, record)
    cfg.data.update(train_files=path, skip_corrupt_records=True, global_batch_size=2)
    tok = Tokenizer.load(cfg.data.tokenizer_path, video_token_id=cfg.model.video_token_id)
    it = train_iterator.make_train_iterator(cfg, _mesh(cfg), tok, seed=0)
    try:
        with pytest.raises(UserError) as e:
            next(it)
    finally:
        it.close()
    assert e.value.line() == (f"every record of a training source was skipped as corrupt ({N} records; the last: "
                              f"corrupt TFRecord: data CRC mismatch) ({path}): intact TFRecord files written by "
                              "llavaction-prep tfrecord")
