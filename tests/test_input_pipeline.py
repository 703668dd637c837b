"""TFRecords -> tf.data -> global sharded batches: layout, pixels, buckets, truncation, resume, mixture, eval."""
import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import Mesh, PartitionSpec

from configs import tiny
from llavaction_jax.cli import UserError
from llavaction_jax.data import prompts
from llavaction_jax.data.records import encode_example, encode_jpeg
from llavaction_jax.input import batching, decode, eval_iterator, mixture, synthetic_records, text_stage, train_iterator
from llavaction_jax.input.chat import IGNORE_INDEX, tokenize_conversation, tokenize_prompt
from llavaction_jax.input.schema import normalize_pixels
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from tests.test_input_tokenizer import ek100_texts

F, S, NV = 4, 32, 25          # tiny config: frames, image size, video slots


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    # 20 training samples over 4 shards (20 % 8 != 0: batches straddle the epoch boundary); lengths vary.
    train, train_samples = synthetic_records.write_shards(str(root), 20, 4, F, S, prefix="train",
                                                  extra_words_fn=lambda i: (i % 4) * 12)
    short, _ = synthetic_records.write_shards(str(root), 16, 2, F, S, prefix="short", id_prefix="b", start_index=100)
    long_, long_samples = synthetic_records.write_shards(str(root), 8, 1, F, S, prefix="long", id_prefix="l", start_index=200,
                                      extra_words_fn=lambda i: 150)
    evals, eval_samples = synthetic_records.write_shards(str(root), 19, 3, F, S, prefix="eval", id_prefix="e",
                                                 start_index=300)
    texts = ek100_texts(300) + [c["value"] for s in train_samples for c in s["conversations"]]
    tok = train_tiny_tokenizer(texts, str(root / "tok"), vocab_size=512)
    return dict(root=root, train=f"{root}/train-*", short=f"{root}/short-*", long=f"{root}/long-*",
                eval=f"{root}/eval-*", samples={s["id"]: s for s in train_samples + long_samples + eval_samples}, tok=tok,
                train_jpegs={s["id"]: i for i, s in enumerate(train_samples)})


def config(files="", **data):
    cfg = tiny.get_config()
    cfg.data.train_files = files
    cfg.data.length_buckets = (192, 256)       # tiny-BPE prompts are ~170-250 tokens
    cfg.data.update(data)
    return cfg


def host(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


def expected_tokens(tok, sample, with_answer=True):
    conv = [dict(t) for t in sample["conversations"]]
    conv[0]["value"] = prompts.insert_time_instruction(
        conv[0]["value"], sample["stop_timestamp"] - sample["start_timestamp"], F)
    if with_answer:
        return tokenize_conversation(tok, conv, NV, prompts.SYSTEM_PROMPT)
    return tokenize_prompt(tok, conv[0]["value"], NV, prompts.SYSTEM_PROMPT), None


def test_batch_layout_sharding_and_tokens(data, mesh):
    tok = data["tok"]
    it = train_iterator.make_train_iterator(config(data["train"]), mesh, tok, seed=3)
    batch = next(it)
    assert sorted(batch) == ["actions", "attention_mask", "input_ids", "labels", "pixel_values"]
    length = batch["input_ids"].shape[1]
    assert length in (192, 256)
    want = {"input_ids": ((8, length), np.int32), "attention_mask": ((8, length), np.int32),
            "labels": ((8, length), np.int32), "pixel_values": ((8, F, S, S, 3), np.uint8),
            "actions": ((8, 3), np.int32)}
    for key, (shape, dtype) in want.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
        assert isinstance(batch[key], jax.Array)
        assert batch[key].sharding.spec == PartitionSpec(("data", "fsdp"))
        # 4 batch shards (data x fsdp) of 2 rows, replicated over 'tensor'.
        assert {s.data.shape[0] for s in batch[key].addressable_shards} == {2}
    b = host(batch)
    assert len(it.last_ids) == 8 and len(set(it.last_ids)) == 8
    for row, sid in enumerate(it.last_ids):
        sample = data["samples"][sid]
        ids, labels = expected_tokens(tok, sample)
        n = len(ids)
        assert b["input_ids"][row, :n].tolist() == ids
        assert b["labels"][row, :n].tolist() == labels
        assert b["attention_mask"][row].tolist() == [1] * n + [0] * (length - n)
        assert (b["input_ids"][row, n:] == 0).all() and (b["labels"][row, n:] == IGNORE_INDEX).all()
        assert (b["input_ids"][row] == 3).sum() == NV
        assert b["actions"][row].tolist() == [sample["verb_class"], sample["noun_class"], sample["action_id"]]


def test_pixels_are_decoded_exactly_and_normalised_on_device(data, mesh):
    """Frames reach the device as the decoded uint8 values; the step's on-device normalisation gives numpy's
    float32 (x/255 - 0.5)/0.5 bit for bit."""
    it = train_iterator.make_train_iterator(config(data["train"]), mesh, data["tok"], seed=0)
    batch = next(it)
    b = host(batch)
    normalised = np.asarray(jax.jit(normalize_pixels)(batch["pixel_values"]))
    assert normalised.dtype == np.float32
    for row, sid in enumerate(it.last_ids):
        index = data["train_jpegs"][sid]
        frames = synthetic_records.sample_frames(index, F, S)
        decoded = np.stack([tf.io.decode_jpeg(encode_jpeg(f, quality=95), dct_method=decode.JPEG_DCT_METHOD).numpy()
                            for f in frames])
        np.testing.assert_array_equal(b["pixel_values"][row], decoded)
        want = (decoded.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
        np.testing.assert_array_equal(normalised[row], want)      # bit-exact
        assert normalised[row].min() >= -1.0 and normalised[row].max() <= 1.0


def test_resize_and_frame_count_errors(tmp_path, data, mesh):
    sample = synthetic_records.make_sample(0, "r")
    flat = np.full((48, 48, 3), 200, np.uint8)      # larger than the config's 32: resized in the pipeline
    path = str(tmp_path / "resize.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(encode_example(sample, [encode_jpeg(flat)] * F, [0.0] * F))
    cfg = config(path, global_batch_size=8)
    b = host(next(train_iterator.make_train_iterator(cfg, mesh, data["tok"])))
    assert b["pixel_values"].shape == (8, F, S, S, 3)
    np.testing.assert_allclose(b["pixel_values"].astype(np.int32), 200, atol=1)
    bad = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(bad) as w:
        w.write(encode_example(synthetic_records.make_sample(1, "bad"), [encode_jpeg(flat)] * 3, [0.0] * 3))
    with pytest.raises(Exception, match="bad000001"):
        next(train_iterator.make_train_iterator(config(bad), mesh, data["tok"]))


def test_text_only_sample_and_thread_cleanup(tmp_path, data, mesh):
    import gc
    import threading
    sample = synthetic_records.make_sample(7, "t")
    sample["conversations"][0]["value"] = "What is a knife for?"     # no <image>, no frames
    path = str(tmp_path / "text.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(encode_example(sample, [], []))
    def stage_threads():
        return sum(t.name == "input-host-stage" for t in threading.enumerate())
    gc.collect()
    before = stage_threads()
    it = train_iterator.make_train_iterator(config(path), mesh, data["tok"])
    b = host(next(it))
    ids, labels = tokenize_conversation(data["tok"], sample["conversations"], 0, prompts.SYSTEM_PROMPT)
    assert b["input_ids"][0, :len(ids)].tolist() == ids and b["labels"][0, :len(labels)].tolist() == labels
    assert not (b["input_ids"] == 3).any() and b["pixel_values"].shape == (8, F, S, S, 3)
    assert stage_threads() == before + 1
    del it, b
    gc.collect()
    assert stage_threads() == before     # dropping the iterator stops its background reader


def test_length_buckets_and_truncation(data, mesh):
    assert batching.pad_length(1, (128, 256), 256) == 128
    assert batching.pad_length(128, (128, 256), 256) == 128
    assert batching.pad_length(129, (256, 128), 256) == 256
    assert batching.pad_length(200, (128, 512), 200) == 200
    with pytest.raises(ValueError, match="exceeds max_length"):
        batching.pad_length(300, (128, 256), 256)
    tok = data["tok"]
    short = train_iterator.make_train_iterator(config(data["short"]), mesh, tok)
    assert [next(short)["input_ids"].shape for _ in range(2)] == [(8, 192)] * 2
    assert short.num_truncated == 0
    # Long prompts (> max_length=256): text cut at 256, counted, video slots intact, never a crash.
    long_it = train_iterator.make_train_iterator(config(data["long"]), mesh, tok)
    b = host(next(long_it))
    assert b["input_ids"].shape == (8, 256) and long_it.num_truncated == 8
    assert (b["attention_mask"] == 1).all() and ((b["input_ids"] == 3).sum(axis=1) == NV).all()
    full, labels = expected_tokens(tok, data["samples"][long_it.last_ids[0]])
    assert len(full) > 256 and b["input_ids"][0].tolist() == full[:256] and b["labels"][0].tolist() == labels[:256]
    # A too-long generation prompt keeps its assistant header: the question's end is cut instead.
    prompts_stage = text_stage.TextStage(config(), tok, with_answer=False)
    sample = data["samples"][long_it.last_ids[0]]
    sid, ids, _, cut = prompts_stage(json.dumps(sample), True)
    prompt, _ = expected_tokens(tok, sample, with_answer=False)
    tail = [2, tok.newline_id, 1] + tok.encode("assistant\n")
    assert cut and len(ids) == 256 and ids == prompt[:256 - len(tail)] + tail


def test_video_slots_are_never_truncated(data):
    cfg = config(add_time_instruction=False, max_length=80)    # the template + video need 73 (tiny BPE)
    text = text_stage.TextStage(cfg, data["tok"])
    sample = synthetic_records.make_sample(5, "v")
    sample["conversations"][0]["value"] = "word " * 60 + sample["conversations"][0]["value"]
    with pytest.raises(ValueError, match="'v000005'.*video tokens end at"):
        text(json.dumps(sample), True)
    with pytest.raises(UserError, match=r"max_length 30 cannot hold the chat template .* \(config.data.max_length\): "
                                        r"at least \d+, plus room for the question and answer text"):
        text_stage.TextStage(config(max_length=30), data["tok"])
    # Bad samples are reported with their id and what was expected.
    timed = text_stage.TextStage(config(), data["tok"])
    sample = synthetic_records.make_sample(6, "q")
    sample["conversations"][0]["value"] = "Question first <image>"
    with pytest.raises(ValueError, match="'q000006'.*must start with '<image>"):
        timed(json.dumps(sample), True)
    del sample["stop_timestamp"]
    sample["conversations"][0]["value"] = "<image>\nok"
    with pytest.raises(ValueError, match="'q000006'.*KeyError"):
        timed(json.dumps(sample), True)
    with pytest.raises(ValueError, match="not valid JSON"):
        timed("{oops", True)


def run_batches(it, n):
    out = []
    for _ in range(n):
        out.append((host(next(it)), list(it.last_ids)))
    return out


def test_epochs_visit_every_sample_once_and_reshuffle(data, mesh):
    cfg = config(data["train"], global_batch_size=4)
    ids = [sid for _, batch_ids in run_batches(train_iterator.make_train_iterator(cfg, mesh, data["tok"], seed=1), 10)
           for sid in batch_ids]
    epoch0, epoch1 = ids[:20], ids[20:]
    assert sorted(epoch0) == sorted(epoch1) == sorted(f"s{i:06d}" for i in range(20))
    assert epoch0 != epoch1                    # a new permutation each epoch
    again = [sid for _, b in run_batches(train_iterator.make_train_iterator(cfg, mesh, data["tok"], seed=1), 5)
             for sid in b]
    assert again == ids[:20]                   # a pure function of (seed, epoch)
    other = [sid for _, b in run_batches(train_iterator.make_train_iterator(cfg, mesh, data["tok"], seed=2), 5)
             for sid in b]
    assert other != ids[:20] and sorted(other) == sorted(epoch0)


def test_exact_resume_across_epoch_boundary(data, mesh):
    tok = data["tok"]
    cfg = config(f"{data['train']},{data['short']}", mixture_weights=(0.7, 0.3))
    reference = run_batches(train_iterator.make_train_iterator(cfg, mesh, tok, seed=5), 7)
    first = train_iterator.make_train_iterator(cfg, mesh, tok, seed=5)
    run_batches(first, 2)
    state = json.loads(json.dumps(first.get_state()))       # must survive a JSON round trip
    assert state["examples"] == 16 and sum(state["draws_per_source"]) == 16
    resumed = train_iterator.make_train_iterator(cfg, mesh, tok, seed=5)
    resumed.set_state(state)
    tail = run_batches(resumed, 5)
    # The source of 20 records wraps into its second epoch within these batches.
    assert train_iterator.TrainIterator.epochs(resumed)[0] >= 1
    for (want, want_ids), (got, got_ids) in zip(reference[2:], tail):
        assert got_ids == want_ids
        for key in want:
            assert want[key].tobytes() == got[key].tobytes() and want[key].shape == got[key].shape, key
    # The same iterator can also be rewound in place.
    resumed.set_state(state)
    assert run_batches(resumed, 1)[0][1] == reference[2][1]
    with pytest.raises(ValueError, match="seed"):
        train_iterator.make_train_iterator(cfg, mesh, tok, seed=6).set_state(state)
    with pytest.raises(ValueError, match="mixture weights"):
        train_iterator.make_train_iterator(config(cfg.data.train_files, mixture_weights=(0.5, 0.5)), mesh, tok,
                                     seed=5).set_state(state)


def test_mixture_proportions_are_exact_and_deterministic(data, mesh):
    assert mixture.block_counts([0.75, 0.25]).tolist() == [768, 256]
    assert mixture.block_counts([0.5, 0.3, 0.2]).tolist() == [512, 307, 205]
    assert mixture.block_counts([1, 0]).tolist() == [1024, 0]
    sched = mixture.MixtureSchedule(mixture.normalise_weights((3, 1), 2), seed=0)
    draws = np.array([sched.source(k) for k in range(3 * mixture.BLOCK)])
    assert np.bincount(draws).tolist() == [3 * 768, 3 * 256]
    assert sched.consumed(1500).tolist() == np.bincount(draws[:1500], minlength=2).tolist()
    assert not (draws[:64] == draws[0]).all()                 # interleaved, not one source after the other
    assert draws.tolist() == [mixture.MixtureSchedule([0.75, 0.25], 0).source(k) for k in range(len(draws))]
    with pytest.raises(ValueError, match="one weight per"):
        mixture.normalise_weights((1, 2, 3), 2)
    # End to end: which source each row came from follows the schedule exactly.
    cfg = config(f"{data['train']},{data['short']}", mixture_weights=(3, 1))
    it = train_iterator.make_train_iterator(cfg, mesh, data["tok"], seed=0)
    ids = [sid for _, b in run_batches(it, 4) for sid in b]
    assert [0 if sid.startswith("s") else 1 for sid in ids] == draws[:32].tolist()


def test_eval_iterator_one_ordered_pass_with_padding(data, mesh):
    tok = data["tok"]
    cfg = config()
    it = eval_iterator.EvalIterator(cfg, mesh, tok, data["eval"], batch_size=8)
    assert len(it) == 3
    seen = []
    # File order then record order: eval-00000 holds samples 300,303,..., eval-00001 301,304,... .
    order = [f"e{i:06d}" for shard in range(3) for i in range(300 + shard, 319, 3)]
    for batch, ids in it:
        b = host(batch)
        assert b["valid"].tolist() == [1 if sid is not None else 0 for sid in ids]
        for row, sid in enumerate(ids):
            if sid is None:   # padding rows repeat the set's first record
                first, _ = expected_tokens(tok, data["samples"]["e000300"], with_answer=False)
                assert b["input_ids"][row, :len(first)].tolist() == first
                continue
            seen.append(sid)
            prompt, _ = expected_tokens(tok, data["samples"][sid], with_answer=False)
            assert b["input_ids"][row, :len(prompt)].tolist() == prompt
            assert b["attention_mask"][row].sum() == len(prompt)
        assert (b["labels"] == IGNORE_INDEX).all()
        assert batch["valid"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert seen == order and b["valid"].sum() == 3
    answers = next(iter(eval_iterator.EvalIterator(cfg, mesh, tok, data["eval"], batch_size=8, with_answer=True)))[0]
    assert (np.asarray(answers["labels"]) != IGNORE_INDEX).any()
