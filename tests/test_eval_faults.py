"""Eval fault tolerance and input identity: an unreadable clip is a counted skip, a killed eval resumes to the same
predictions, bad numbers and ids are errors, and train and eval see the same pixels and token ids."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from llavaction_jax.data import records
from data_prep import synthetic_videos
from llavaction_jax.cli import UserError
from llavaction_jax.eval import run as run_lib, samples as samples_lib
from llavaction_jax.eval.evaluator import Evaluator, _normalize_on_device
from llavaction_jax.eval.items import EvalItem
from llavaction_jax.input import eval_iterator
from tests.test_eval_evaluator import _frames, _options, _sample, setup  # noqa: F401  (setup is a fixture)


def _items(config, n, broken=()):
    def load(i):
        if i in broken:
            raise OSError(f"clip {i}: moov atom not found")
        return _frames(i, config)
    return [EvalItem(_sample(i, _options(i), "B"), lambda i=i: load(i), index=i) for i in range(n)]


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def test_corrupt_clip_in_the_middle_is_skipped_and_listed(setup, tmp_path):
    config, tok, mesh, model = setup
    root = str(tmp_path / "videos")
    paths = [synthetic_videos.frame_index_video(root, "original", f"P0{k}_01", num_frames=30, fps=30.0, size=32)[0]
             for k in range(3)]
    with open(paths[1], "r+b") as f:           # the middle clip: a truncated container
        f.truncate(200)
    rows = [{"id": f"g{k}", "video": os.path.relpath(p, root), "question": "Which?", "options": ["one", "two"],
             "answer": k % 2} for k, p in enumerate(paths)]
    jsonl = tmp_path / "mc.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = samples_lib.generic_mc_source(str(jsonl), root, config.data.num_frames, config.model.vision.image_size)
    out = tmp_path / "out"
    recs, summary, paths_out = run_lib.evaluate_source(model, tok, config, mesh, source, out_dir=str(out),
                                                       methods=("letters",))
    assert [r["id"] for r in recs] == ["g0", "g2"] == [r["id"] for r in _lines(out / "predictions.jsonl")]
    failures = _lines(out / "failures.jsonl")
    assert len(failures) == 1 and failures[0]["id"] == "g1" and failures[0]["index"] == 1
    assert failures[0]["reason"]
    assert summary["num_failures"] == 1 and summary["num_samples"] == 2
    assert "g1" in open(paths_out["report.html"]).read()          # the report lists the failure


def test_killed_eval_resumes_to_the_same_predictions(setup, tmp_path, monkeypatch):
    config, tok, mesh, model = setup
    items = _items(config, 18)
    kwargs = dict(methods=("letters",), batch_size=8)
    clean = tmp_path / "clean"
    run_lib.evaluate_source(model, tok, config, mesh, samples_lib.Source.from_list(items), out_dir=str(clean),
                            **kwargs)
    # Kill after the first batch's records are on disk (the exception stands in for SIGKILL / preemption).
    real_call, calls = run_lib.PredictionWriter.__call__, []

    def dying(self, recs, fails):
        real_call(self, recs, fails)
        calls.append(len(recs))
        if len(calls) == 1:
            raise KeyboardInterrupt("killed")
    monkeypatch.setattr(run_lib.PredictionWriter, "__call__", dying)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_lib.evaluate_source(model, tok, config, mesh, samples_lib.Source.from_list(items), out_dir=str(out),
                                **kwargs)
    assert len(_lines(out / "predictions.jsonl")) == 8
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"id": "s9", "torn')                                  # a record half-written when killed
    _, summary, _ = run_lib.evaluate_source(model, tok, config, mesh, samples_lib.Source.from_list(items),
                                            out_dir=str(out), **kwargs)
    assert calls == [8, 8, 2]                                          # only the 10 missing ones were evaluated
    assert summary["num_resumed"] == 8 and summary["num_samples"] == 18
    a, b = _lines(clean / "predictions.jsonl"), _lines(out / "predictions.jsonl")
    assert [r["id"] for r in b] == [f"s{i}" for i in range(18)]
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(ra.pop("letter_scores"), rb.pop("letter_scores"), atol=1e-3)
        assert ra == rb


def test_bad_numbers_and_ids_are_errors(setup):
    config, tok, mesh, model = setup
    broken = nnx.clone(model)
    head = nnx.state(broken, nnx.Param)
    pure = nnx.to_pure_dict(head)
    pure["lm_head"]["kernel"] = jnp.full_like(pure["lm_head"]["kernel"], jnp.nan)
    nnx.replace_by_pure_dict(head, pure)
    nnx.update(broken, head)
    with pytest.raises(FloatingPointError, match="non-finite letter scores"):
        Evaluator(broken, tok, config, mesh, methods=("letters",)).evaluate(_items(config, 1), 1)
    # A tokenizer whose letters lie past the model's vocabulary: refused before anything runs.
    small = config.copy_and_resolve_references()
    from llavaction_jax.eval import scoring
    small.model.text.vocab_size = int(scoring.letter_token_ids(tok).max())
    with pytest.raises(UserError, match="option-letter ids"):
        Evaluator(model, tok, small, mesh, methods=("letters",))
    with pytest.raises(UserError, match="no samples"):
        run_lib.evaluate_source(model, tok, config, mesh, samples_lib.Source.from_list([]))
    with pytest.raises(UserError, match="all 2 failed"):
        run_lib.evaluate_source(model, tok, config, mesh, samples_lib.Source.from_list(
            _items(config, 2, broken={0, 1})), methods=("letters",))


def test_train_and_eval_inputs_are_identical(setup, tmp_path):
    config, tok, mesh, model = setup
    side = config.model.vision.image_size
    rng = np.random.default_rng(0)
    # Smooth-ish frames at a different size than the model's: JPEG decode AND resize both on the path.
    frames = [np.clip(rng.normal(128, 40, (48, 48, 3)), 0, 255).astype(np.uint8) for _ in range(config.data.num_frames)]
    sample = _sample(0, _options(0), "B", extra="Is <video> or <|im_end|> here? ")
    path = str(tmp_path / "eval-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(records.encode_example(sample, [records.encode_jpeg(f) for f in frames],
                                       [0.1 * i for i in range(len(frames))]))
    config = config.copy_and_resolve_references()
    train_batch, _ = next(iter(eval_iterator.EvalIterator(config, mesh, tok, files=path)))
    item = next(samples_lib.tfrecord_source(path, config.data.num_frames, side).iterate())
    ev = Evaluator(model, tok, config, mesh, methods=("letters",))
    eval_pixels = np.asarray(_normalize_on_device(jnp.asarray(item.load_frames()[None])))
    # Both paths normalise the same uint8 frames on device with the same table.
    np.testing.assert_array_equal(np.asarray(_normalize_on_device(train_batch["pixel_values"]))[:1], eval_pixels)
    ids = ev.prompt_ids(item.sample, True)
    mask = np.asarray(train_batch["attention_mask"])[0].astype(bool)
    assert np.asarray(train_batch["input_ids"])[0][mask].tolist() == ids
    assert ids.count(tok.video_token_id) == ev.n_video_tokens and tok.im_end_id not in ids[-6:-3]


def test_tfds_builder_records_are_evaluable(tmp_path):
    """Records in the ek100_mqa TFDS builder's encoding (tfds Video of JPEGs, no num_frames field) parse."""
    import tensorflow_datasets as tfds
    f, s = 4, 16
    feats = tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "frames": tfds.features.Video(shape=(f, s, s, 3), encoding_format="jpeg"),
        "sample_json": tfds.features.Text(), "verb_class": tfds.features.Scalar(np.int64)})
    sample = _sample(0, _options(0), "B")
    path = str(tmp_path / "ek100_mqa-validation.tfrecord-00000-of-00001")
    with tf.io.TFRecordWriter(path) as w:
        w.write(feats.serialize_example({"id": "s0", "frames": np.full((f, s, s, 3), 100, np.uint8),
                                         "sample_json": json.dumps(sample), "verb_class": 0}))
    item = next(samples_lib.tfrecord_source(path, f, 32).iterate())
    assert item.sample == sample and item.index == 0
    frames = item.load_frames()
    assert frames.shape == (f, 32, 32, 3) and abs(int(frames.astype(int).mean()) - 100) <= 2


def test_tfrecord_duplicates_and_corrupt_bytes_are_user_errors(tmp_path):
    sample = _sample(0, _options(0), "B")
    jpegs = [records.encode_jpeg(np.zeros((32, 32, 3), np.uint8))] * 4
    path = str(tmp_path / "eval-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for _ in range(2):
            w.write(records.encode_example(sample, jpegs, [0.0] * 4))
    with pytest.raises(UserError, match="duplicate sample id 's0'"):
        list(samples_lib.tfrecord_source(path, 4, 32).iterate())
    data = bytearray(open(path, "rb").read())
    data[40] ^= 0xFF                                          # inside the first record's payload: CRC mismatch
    open(path, "wb").write(bytes(data))
    with pytest.raises(UserError, match="corrupt TFRecord data"):
        samples_lib.tfrecord_source(path, 4, 32)
