"""Sequence packing (config.data.packing): packed batch structure, equivalence with the same samples unpacked
(LM loss per sample and action heads on the tiny model, and the train step), exact resume."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from configs import tiny
from llavaction_jax.data.records import encode_example, encode_jpeg
from llavaction_jax.input import decode, packing, synthetic_records, text_stage, train_iterator
from llavaction_jax.input.chat import IGNORE_INDEX
from llavaction_jax.input.schema import normalize_pixels
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.model import LlavaActionModel
from llavaction_jax.train import losses, state as state_lib, step as step_lib
from tests.test_input_tokenizer import ek100_texts

F, S, NV, P = 4, 32, 25, 2          # tiny config: frames, image size, video slots per video; videos per row
MAX_LEN = 512


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def _text_only(index):
    s = synthetic_records.make_sample(index, "t")
    s["conversations"][0]["value"] = s["conversations"][0]["value"].replace("<image>\n", "")
    s.update(verb_class=-1, noun_class=-1, action_id=-1)
    return s


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    _, videos = synthetic_records.write_shards(str(root), 24, 2, F, S, prefix="video",
                                       extra_words_fn=lambda i: (i % 5) * 15)
    texts = [_text_only(500 + i) for i in range(10)]
    with tf.io.TFRecordWriter(str(root / "text-00000-of-00001.tfrecord")) as w:
        for s in texts:
            w.write(encode_example(s, [], []))
    words = ek100_texts(300) + [c["value"] for s in videos + texts for c in s["conversations"]]
    tok = train_tiny_tokenizer(words, str(root / "tok"), vocab_size=512)
    return dict(files=f"{root}/video-*,{root}/text-*", tok=tok,
                samples={s["id"]: s for s in videos + texts}, frames={s["id"]: i for i, s in enumerate(videos)})


def config(files, packed=True, **data):
    cfg = tiny.get_config()
    cfg.data.update(train_files=files, max_length=MAX_LEN, length_buckets=(256, 384, MAX_LEN),
                    mixture_weights=(0.75, 0.25), packing=packed, max_videos_per_row=P)
    cfg.data.update(data)
    # One layer each: the model tests compare layouts, not depth, and compile time grows with it.
    cfg.model.vision.num_layers = cfg.model.text.num_layers = 1
    return cfg


def host(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


def segments(seg_row):
    """[(segment id, start, end)] of one row."""
    out = []
    for s in range(1, int(seg_row.max()) + 1):
        where = np.flatnonzero(seg_row == s)
        out.append((s, int(where[0]), int(where[-1]) + 1))
    return out


def test_pack_rows_exact_layout():
    """Hand-made samples: every label supervised (a pretraining-style sample), so the IGNORE at each
    segment's first position can only come from the packer."""
    frames = [np.full((F, S, S, 3), v, np.uint8) for v in (10, 20)]
    a = packing.Sample("a", [5, 6, 7], [5, 6, 7], frames[0], np.array([1, 2, 3], np.int32), True)
    t = packing.Sample("t", [8, 9], [8, 9], np.zeros((F, S, S, 3), np.uint8), np.array([-1] * 3, np.int32), False)
    c = packing.Sample("c", [4, 3, 2, 1], [4, 3, 2, 1], frames[1], np.array([4, 5, 6], np.int32), True)
    d = packing.Sample("d", [7] * 6, [7] * 6, frames[1], np.array([7, 8, 9], np.int32), True)
    packer = packing.RowPacker(2, 10, 2)
    for s in (a, t, c, d):
        assert packer.add(s)
    # a, t, c fill row 0 (9 tokens, 2 videos); d (6 tokens) only fits row 1. A third video fits nowhere.
    assert [[s.sid for s in row] for row in packer.rows] == [["a", "t", "c"], ["d"]]
    assert not packer.add(packing.Sample("e", [1] * 5, [1] * 5, frames[0], np.zeros(3, np.int32), True))
    assert packer.add(packing.Sample("f", [1] * 4, [1] * 4, frames[0], np.zeros(3, np.int32), False))
    out = packing.pack_rows(packer.rows, 12, 0, 2, (F, S, S, 3))
    I = IGNORE_INDEX
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4, 3, 2, 1, 0, 0, 0], [7] * 6 + [1] * 4 + [0, 0]]
    assert out["labels"].tolist() == [[I, 6, 7, I, 9, I, 3, 2, 1, I, I, I], [I] + [7] * 5 + [I, 1, 1, 1, I, I]]
    assert out["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0, 0], [1] * 6 + [2] * 4 + [0, 0]]
    assert out["positions"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0, 0], list(range(6)) + [0, 1, 2, 3, 0, 0]]
    assert out["attention_mask"].tolist() == [[1] * 9 + [0] * 3, [1] * 10 + [0] * 2]
    assert out["actions"].tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [-1, -1, -1]]]
    assert [int(out["frames"][r, p].max()) for r in range(2) for p in range(2)] == [10, 20, 20, 0]
    with pytest.raises(ValueError, match="exceed the packing capacity 10"):
        packer.add(packing.Sample("g", [1] * 11, [1] * 11, frames[0], np.zeros(3, np.int32), False))


@pytest.fixture(scope="module")
def packed_run(data, mesh):
    """Three packed batches (host numpy), their per-row ids and the iterator state after each."""
    it = train_iterator.make_train_iterator(config(data["files"]), mesh, data["tok"], seed=1)
    out = []
    for _ in range(3):
        batch = next(it)
        out.append(dict(batch=host(batch), ids=it.last_ids, state=it.get_state(), sharding=batch))
    it.close()
    return out


def test_packed_batch_structure(data, mesh, packed_run):
    cfg = config(data["files"])
    text = text_stage.TextStage(cfg, data["tok"])
    first = packed_run[0]
    b, batch = first["batch"], first["sharding"]
    length = b["input_ids"].shape[1]
    assert length in (256, 384, MAX_LEN)
    want = {"input_ids": (8, length), "attention_mask": (8, length), "labels": (8, length),
            "segment_ids": (8, length), "positions": (8, length), "pixel_values": (8, P, F, S, S, 3),
            "actions": (8, P, 3)}
    assert sorted(b) == sorted(want)
    for key, shape in want.items():
        assert b[key].shape == shape, key
        assert batch[key].sharding.spec == PartitionSpec(("data", "fsdp"))
    ids = first["ids"]
    assert len(ids) == 8 and all(ids)
    multi = 0
    for row, row_ids in enumerate(ids):
        segs = segments(b["segment_ids"][row])
        assert [s for s, _, _ in segs] == list(range(1, len(row_ids) + 1))
        multi += len(row_ids) > 1
        end = segs[-1][2]
        assert end <= length and (b["segment_ids"][row, end:] == 0).all()
        assert b["attention_mask"][row].tolist() == [1] * end + [0] * (length - end)
        assert (b["labels"][row, end:] == IGNORE_INDEX).all()
        video = 0
        for (seg, start, stop), sid in zip(segs, row_ids):
            sample = data["samples"][sid]
            has_video = not sid.startswith("t")
            _, tokens, labels, _ = text(json.dumps(sample), has_video)
            assert stop - start == len(tokens)
            assert b["input_ids"][row, start:stop].tolist() == tokens
            assert b["positions"][row, start:stop].tolist() == list(range(len(tokens)))
            # The first token of every segment is never a target (logits[t] predict labels[t+1]).
            assert b["labels"][row, start] == IGNORE_INDEX
            assert b["labels"][row, start + 1:stop].tolist() == labels[1:]
            assert (b["input_ids"][row, start:stop] == 3).sum() == (NV if has_video else 0)
            if has_video:
                frames = synthetic_records.sample_frames(data["frames"][sid], F, S)
                decoded = np.stack([tf.io.decode_jpeg(encode_jpeg(f, quality=95),
                                                      dct_method=decode.JPEG_DCT_METHOD).numpy()
                                        for f in frames])
                np.testing.assert_array_equal(b["pixel_values"][row, video], decoded)     # uint8, as decoded
                assert b["actions"][row, video].tolist() == [sample["verb_class"], sample["noun_class"],
                                                             sample["action_id"]]
                video += 1
        assert video <= P
        assert (b["actions"][row, video:] == -1).all()
        assert b["pixel_values"].dtype == np.uint8
        assert (b["pixel_values"][row, video:] == 0).all()     # unused slot: zero pixels
    assert multi >= 4       # rows really hold several samples


def test_packer_is_first_fit_in_stream_order(data, mesh, packed_run):
    """The packed batches hold the stream's samples in order, as RowPacker's first fit places them."""
    unpacked = train_iterator.make_train_iterator(config(data["files"], packed=False), mesh, data["tok"], seed=1)
    stream = []
    while len(stream) < 80:
        next(unpacked)
        stream += unpacked.last_ids
    unpacked.close()
    cfg = config(data["files"])
    text = text_stage.TextStage(cfg, data["tok"])
    pos = 0
    for got in packed_run:
        packer = packing.RowPacker(8, MAX_LEN, P)
        while True:
            sid = stream[pos]
            _, tokens, labels, _ = text(json.dumps(data["samples"][sid]), not sid.startswith("t"))
            if not packer.add(packing.Sample(sid, tokens, labels, None, None, not sid.startswith("t"))):
                break
            pos += 1
        assert [[s.sid for s in row] for row in packer.rows] == got["ids"]
        assert got["state"]["examples_per_process"] == [pos]


def test_exact_resume_with_packing(data, mesh, packed_run):
    cfg = config(data["files"])
    it = train_iterator.make_train_iterator(cfg, mesh, data["tok"], seed=1)
    state = packed_run[0]["state"]
    assert state["packing"] is True and len(state["examples_per_process"]) == 1
    with pytest.raises(ValueError, match="examples_per_process for 2 processes"):
        it.set_state(dict(state, examples_per_process=state["examples_per_process"] * 2))
    it.set_state(json.loads(json.dumps(state)))
    for want in packed_run[1:]:
        got = host(next(it))
        assert it.last_ids == want["ids"]
        for key in want["batch"]:
            np.testing.assert_array_equal(got[key], want["batch"][key], err_msg=key)
        assert it.get_state() == want["state"]
    it.close()
    # A packed state cannot silently resume an unpacked stream whose hosts would disagree; an equal-k one can.
    unpacked = train_iterator.make_train_iterator(config(data["files"], packed=False), mesh, data["tok"], seed=1)
    unpacked.set_state(state)
    assert unpacked.get_state()["examples"] == state["examples_per_process"][0]
    unpacked.close()


def _few_rows(run, count=2):
    """`count` multi-sample rows of the first packed batch (one with a text-only sample when there is one),
    cut to their used length: small shapes keep the model tests fast."""
    b, ids = run[0]["batch"], run[0]["ids"]
    multi = [r for r, row_ids in enumerate(ids) if len(row_ids) > 1]
    with_text = [r for r in multi if any(sid.startswith("t") for sid in ids[r])]
    rows = (with_text[:1] + [r for r in multi if r not in with_text[:1]])[:count]
    assert len(rows) == count
    end = int(max((b["segment_ids"][r] > 0).sum() for r in rows))
    sub = {k: (v[rows, :end] if v.ndim == 2 else v[rows]) for k, v in b.items()}   # all 2-D keys are [B, L]
    return sub, [ids[r] for r in rows]


def _unpacked_equivalent(b, ids):
    """The packed batch's samples one per row (unpacked layout, padded to the packed length), in row order."""
    length = b["input_ids"].shape[1]
    rows = []
    for row, row_ids in enumerate(ids):
        video = 0
        for (seg, start, stop), sid in zip(segments(b["segment_ids"][row]), row_ids):
            ids_ = np.zeros(length, np.int32)
            labels = np.full(length, IGNORE_INDEX, np.int32)
            mask = np.zeros(length, np.int32)
            ids_[:stop - start] = b["input_ids"][row, start:stop]
            labels[:stop - start] = b["labels"][row, start:stop]
            mask[:stop - start] = 1
            has_video = (b["input_ids"][row, start:stop] == 3).any()
            pix = b["pixel_values"][row, video] if has_video else np.zeros((F, S, S, 3), np.uint8)
            act = b["actions"][row, video] if has_video else np.full(3, -1, np.int32)
            rows.append(dict(row=row, seg=seg, video=video if has_video else None, input_ids=ids_,
                             labels=labels, attention_mask=mask, pixel_values=pix, actions=act))
            video += int(has_video)
    stack = {k: np.stack([r[k] for r in rows]) for k in ("input_ids", "labels", "attention_mask",
                                                           "pixel_values", "actions")}
    return rows, stack


def _token_ce(logits, labels):
    """CE of logits[:, t] against labels[:, t+1] (0 where not supervised) -> [B, L-1]."""
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], jnp.where(valid, targets, 0))
    return np.asarray(jnp.where(valid, ce, 0.0))


def test_packed_equals_unpacked_on_the_tiny_model(data, packed_run):
    b, ids = _few_rows(packed_run, 3)
    rows, single = _unpacked_equivalent(b, ids)
    model = LlavaActionModel(config(data["files"]).model, rngs=nnx.Rngs(0))
    graph, params = nnx.split(model)
    # The model takes normalised frames; the batch carries uint8 ones (the train step normalises them).
    run = jax.jit(lambda p, ids, pix, *args: nnx.merge(graph, p)(ids, normalize_pixels(pix), *args))
    packed = run(params, b["input_ids"], b["pixel_values"], b["attention_mask"], b["segment_ids"],
                 b["positions"])
    alone = run(params, single["input_ids"], single["pixel_values"], single["attention_mask"], None, None)
    assert packed.verb_logits.shape == (3, P, 97) and alone.verb_logits.shape == (len(rows), 97)
    ce_packed = _token_ce(packed.logits, b["labels"])
    ce_alone = _token_ce(alone.logits, single["labels"])
    seg_of_target = b["segment_ids"][:, 1:]
    for i, r in enumerate(rows):
        got = ce_packed[r["row"]][seg_of_target[r["row"]] == r["seg"]].sum()
        want = ce_alone[i].sum()
        assert want > 0
        np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=f"row {r['row']} segment {r['seg']}")
        if r["video"] is not None:
            for name in ("verb", "noun", "action"):
                np.testing.assert_allclose(getattr(packed, f"{name}_logits")[r["row"], r["video"]],
                                           getattr(alone, f"{name}_logits")[i], rtol=1e-5, atol=1e-5)
    # The training losses: the same sums and counts from the packed rows as from the samples alone.
    for got, want in zip(losses.lm_loss_sums(packed.logits, b["labels"]),
                         losses.lm_loss_sums(alone.logits, single["labels"])):
        np.testing.assert_allclose(got, want, rtol=2e-5)
    (s_p, c_p, n_p), (s_a, c_a, n_a) = (losses.action_loss_sums(packed, b["actions"]),
                                        losses.action_loss_sums(alone, single["actions"]))
    assert float(n_p) == float(n_a) == float((single["actions"] >= 0).all(-1).sum()) > 0
    for name in losses.ACTION_PARTS:
        np.testing.assert_allclose(s_p[name], s_a[name], rtol=2e-5)
        assert float(c_p[name]) == float(c_a[name])


FILL = dict(input_ids=0, attention_mask=0, labels=IGNORE_INDEX, segment_ids=0, positions=0, pixel_values=0,
            actions=-1)


def _pad_rows(batch, rows):
    """Empty rows (all padding, segment 0, no video) appended up to `rows`."""
    return {k: np.concatenate([v, np.full((rows - len(v),) + v.shape[1:], FILL[k], v.dtype)])
            for k, v in batch.items()}


def _one_per_row(single):
    """The samples alone, one per row, in the packed schema (video in slot 0)."""
    n, length = single["input_ids"].shape
    has_video = (single["input_ids"] == 3).any(1)
    pix = np.zeros((n, P, F, S, S, 3), np.uint8)
    pix[:, 0] = single["pixel_values"]
    actions = np.full((n, P, 3), -1, np.int32)
    actions[has_video, 0] = single["actions"][has_video]
    return dict(input_ids=single["input_ids"], attention_mask=single["attention_mask"], labels=single["labels"],
                segment_ids=single["attention_mask"], positions=np.arange(length)[None] * single["attention_mask"],
                pixel_values=pix, actions=actions)


def test_train_step_on_packed_batch_matches_unpacked(data, packed_run):
    """The jitted train step passes segment_ids / positions and the per-video actions: loss, metrics and
    gradients of the packed rows equal those of the same samples one per row. Both batches have the same
    shapes (the packed one padded with empty rows) so the step compiles once; the model test above compares
    packed rows with the plain unpacked layout."""
    from llavaction_jax import sharding as shd
    b, ids = _few_rows(packed_run, 2)
    _, single = _unpacked_equivalent(b, ids)
    alone = _one_per_row(single)
    b = _pad_rows(b, len(alone["input_ids"]))
    cfg = config(data["files"])
    cfg.train.action_loss_weight = 0.5
    mesh = shd.make_mesh(cfg.mesh, devices=jax.devices()[:1])
    setup = state_lib.build_setup(cfg, mesh)
    step = step_lib.jit_train_step(setup, cfg)
    assert sorted(step_lib.batch_shardings(mesh, cfg)) == sorted(b)
    results = []
    for batch in (b, alone):
        state = state_lib.init_state(setup, cfg)
        _, m = step(state, {k: jax.device_put(v, shd.batch_sharding(mesh)) for k, v in batch.items()})
        results.append({k: float(v) for k, v in m.items()})
    packed_m, alone_m = results
    for key in ("loss", "lm_loss", "action_loss", "ce_verb", "grad_norm", "update_norm", "supervised_tokens",
                "action_samples", "tokens"):
        np.testing.assert_allclose(packed_m[key], alone_m[key], rtol=1e-4, err_msg=key)
