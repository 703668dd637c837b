"""llavaction_jax.data.records + data_prep.to_tfrecord: record layout, sharding, bad input, resume after a kill."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from data_prep import to_tfrecord
from llavaction_jax.data.records import decode_example_py, encode_example, encode_jpeg
from llavaction_jax.data.tfrecord import RecordWriter
from llavaction_jax.input.features import FEATURE_SPEC
from data_prep.synthetic_videos import decode_frame_index, frame_index_video
from llavaction_jax.data.video import VideoReader

FPS = 30
NUM_FRAMES = 4
SIZE = 32
SHARDS = 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_ids(s, e, n):
    return np.convolve(np.linspace(s, e, n + 1), [0.5, 0.5], "valid").astype(int)


def sample(i, video_id="P01_01", start=None, stop=None, **kw):
    start = 0.5 + i if start is None else start
    stop = start + 1.5 if stop is None else stop
    d = {"id": f"s{i:03d}", "video_id": video_id, "participant_id": video_id.split("_")[0],
         "start_timestamp": start, "stop_timestamp": stop,
         "conversations": [{"from": "human", "value": f"<image>\nquestion {i}"},
                           {"from": "gpt", "value": f"A. answer {i}"}],
         "task": "mqa", "verb_class": i % 5, "noun_class": i % 7, "action_id": i, "options": ["A. x", "B. y"],
         "answer": "A"}
    d.update(kw)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Frame-index videos (12 s) + a JSONL with good samples and one of each kind of bad input."""
    base = tmp_path_factory.mktemp("records")
    root = base / "videos"
    frame_index_video(str(root), "original", "P01_01", 12 * FPS, fps=FPS)
    frame_index_video(str(root), "original", "P01_02", 12 * FPS, fps=FPS)
    bad = root / "P01" / "videos" / "P01_02.MP4"                 # corrupt: cut in half (no index)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    samples = [sample(i) for i in range(9)]
    samples.insert(2, sample(90, video_id="P01_02"))                                  # truncated/corrupt MP4
    samples.insert(5, sample(91, video_id="P07_09"))                                  # missing video
    samples.insert(7, sample(92, start=5.0, stop=4.0))                                # stop < start
    samples.insert(9, sample(93, start=10.0, stop=14.5))                              # stop past the end
    samples.append({"id": "text_only", "conversations": [{"from": "human", "value": "hi"},
                                                         {"from": "gpt", "value": "hello"}],
                    "task": "qa", "verb_class": -1, "noun_class": -1, "action_id": -1})
    samples.append(sample(94, start=10.0, stop=12.4))                                 # within tolerance: clipped
    path = base / "samples.jsonl"
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
        f.write("{broken json\n")
        f.write(json.dumps(sample(3)) + "\n")                                        # duplicate id
    return {"base": base, "root": root, "jsonl": path, "samples": samples}


def run(data, out, **kw):
    kw.setdefault("workers", 0)
    return to_tfrecord.convert(str(data["jsonl"]), str(data["root"]), "original", str(out), num_frames=NUM_FRAMES,
                               size=SIZE, num_shards=SHARDS, progress=False, **kw)


def read_shard(path):
    return [decode_example_py(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


def shard_bytes(out):
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "*.tfrecord")))}


@pytest.fixture(scope="module")
def converted(data):
    out = data["base"] / "full"
    manifest = run(data, out)
    return out, manifest


# ----------------------------------------------------------------------------- record layout

def test_encode_decode_roundtrip_py_and_tf():
    frames = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    jpegs = [encode_jpeg(f, 95) for f in frames]
    s = sample(1)
    raw = encode_example(s, jpegs, [0.1, 0.2, 0.3])
    d = decode_example_py(raw)
    assert d["id"] == "s001" and d["video_id"] == "P01_01" and d["sample"] == s
    assert d["num_frames"] == 3 and d["frames"].shape == (3, 16, 16, 3)
    assert (d["verb_class"], d["noun_class"], d["action_id"]) == (1, 1, 1)
    np.testing.assert_allclose(d["frame_times"], [0.1, 0.2, 0.3], rtol=1e-6)
    assert np.abs(d["frames"].astype(int) - frames).mean() < 12           # JPEG q95 of noise is close
    parsed = tf.io.parse_single_example(raw, FEATURE_SPEC)
    assert parsed["frames"].shape == (3,) and parsed["frame_times"].shape == (3,)
    # TF decodes bit-identically to PIL only with the accurate IDCT (the default "INTEGER_FAST" differs by a few).
    np.testing.assert_array_equal(tf.io.decode_jpeg(parsed["frames"][0], dct_method="INTEGER_ACCURATE").numpy(),
                                  d["frames"][0])
    assert json.loads(parsed["sample_json"].numpy()) == s
    # text-only: zero frames parse to empty dense vectors; missing class fields default to -1
    raw0 = encode_example({"id": "t", "conversations": []}, [], [])
    p0 = tf.io.parse_single_example(raw0, FEATURE_SPEC)
    assert p0["frames"].shape == (0,) and int(p0["num_frames"]) == 0 and int(p0["action_id"]) == -1
    assert raw == encode_example(dict(reversed(list(s.items()))), jpegs, [0.1, 0.2, 0.3])   # byte-stable
    with pytest.raises(ValueError, match="2 frames but 1 frame_times"):
        encode_example(s, jpegs[:2], [0.0])
    with pytest.raises(ValueError, match="'verb_class'='x' is not an int"):
        encode_example(dict(s, verb_class="x"), [], [])


def _tf_example(sample_dict, jpegs, times):
    """The record as TensorFlow's protobuf serialises it (deterministic map order), for byte comparison."""
    def feat(kind, values):
        field, cls = {"bytes": ("bytes_list", tf.train.BytesList), "float": ("float_list", tf.train.FloatList),
                      "int": ("int64_list", tf.train.Int64List)}[kind]
        return tf.train.Feature(**{field: cls(value=values)})
    ints = {k: -1 if sample_dict.get(k) is None else int(sample_dict[k])
            for k in ("verb_class", "noun_class", "action_id")}
    feature = {"id": feat("bytes", [str(sample_dict["id"]).encode()]),
               "video_id": feat("bytes", [str(sample_dict.get("video_id") or "").encode()]),
               "start_timestamp": feat("float", [sample_dict.get("start_timestamp") or 0.0]),
               "stop_timestamp": feat("float", [sample_dict.get("stop_timestamp") or 0.0]),
               "frames": feat("bytes", jpegs), "frame_times": feat("float", times),
               "num_frames": feat("int", [len(jpegs)]),
               "sample_json": feat("bytes", [json.dumps(sample_dict, sort_keys=True, ensure_ascii=False).encode()]),
               **{k: feat("int", [v]) for k, v in ints.items()}}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", ["video", "text_only", "negative_ids_unicode"])
def test_records_are_tensorflows_bytes_without_tensorflow(case, tmp_path):
    """The hand-written wire format is byte-for-byte TensorFlow's (so records, shard hashes and resumes are those of
    tf.train.Example), decodes back, and the TF-free TFRecord writer writes what tf.data reads."""
    jpegs = [encode_jpeg(f) for f in np.random.default_rng(1).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)]
    sample_dict, frames, times = {"video": (sample(3), jpegs, [0.5, 1e30]),
                                  "text_only": ({"id": "t", "conversations": []}, [], []),
                                  "negative_ids_unicode": ({"id": 7, "verb_class": -1, "noun_class": None,
                                                            "action_id": -(2 ** 63), "narration": "öffnen"},
                                                           jpegs[:1], [-0.25])}[case]
    raw = encode_example(sample_dict, frames, times)
    assert raw == _tf_example(sample_dict, frames, times)
    decoded = decode_example_py(raw)
    assert decoded["jpeg_frames"] == frames and decoded["sample"] == sample_dict
    assert decoded["action_id"] == int(tf.io.parse_single_example(raw, FEATURE_SPEC)["action_id"])
    path = str(tmp_path / "x.tfrecord")
    with RecordWriter(path) as w:
        w.write(raw)
        w.write(b"")
    assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == [raw, b""]
    with pytest.raises(ValueError, match="not a tf.train.Example: truncated"):
        decode_example_py(raw[:-3])


# ----------------------------------------------------------------------------- conversion

def test_manifest_counts(data, converted):
    out, m = converted
    lines = len(data["samples"]) + 2
    assert m["complete"] and m["total_samples"] == lines
    assert m["num_records"] == len(data["samples"]) - 4 and m["num_skipped"] == 6
    assert m["num_records"] + m["num_skipped"] == m["total_samples"]
    assert [s["file"] for s in m["shards"]] == [f"train-{k:05d}-of-{SHARDS:05d}.tfrecord" for k in range(SHARDS)]
    assert m["config"]["num_frames"] == NUM_FRAMES and m["config"]["size"] == SIZE
    assert m["config"]["layout"] == "original"
    assert m["source"]["sha256"] == to_tfrecord.sha256_file(str(data["jsonl"]))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == {k: v for k, v in m.items() if k != "run"}
    for s in m["shards"]:
        assert len(read_shard(out / s["file"])) == s["num_records"]
        assert to_tfrecord.sha256_file(str(out / s["file"])) == s["sha256"]


def test_shard_assignment_and_record_contents(data, converted):
    out, m = converted
    good = {s["id"] for s in data["samples"]} - {"s090", "s091", "s092", "s093"}
    for k in range(SHARDS):
        recs = read_shard(out / f"train-{k:05d}-of-{SHARDS:05d}.tfrecord")
        expected = [s for i, s in enumerate(data["samples"]) if i % SHARDS == k and s["id"] in good]
        assert [r["id"] for r in recs] == [s["id"] for s in expected]          # i % N, order kept
        for r, s in zip(recs, expected):
            assert r["sample"] == s
            assert (r["verb_class"], r["noun_class"], r["action_id"]) == (s["verb_class"], s["noun_class"],
                                                                          s["action_id"])
            if s["id"] == "text_only":
                assert r["num_frames"] == 0 and r["video_id"] == ""
                continue
            stop = min(s["stop_timestamp"], (12 * FPS - 1) / FPS)
            ids = reference_ids(round(s["start_timestamp"] * FPS), round(stop * FPS), NUM_FRAMES)
            assert r["frames"].shape == (NUM_FRAMES, SIZE, SIZE, 3)
            assert [decode_frame_index(f) for f in r["frames"]] == ids.tolist()    # right timestamps
            np.testing.assert_allclose(r["frame_times"], ids / FPS, rtol=1e-6)
            assert r["start_timestamp"] == pytest.approx(s["start_timestamp"])
            # the JPEGs are exactly the reader's frames encoded at quality 95
            frames, _ = VideoReader(str(data["root"]), "original", size=SIZE).read_clip(
                s["video_id"], s["start_timestamp"], s["stop_timestamp"], NUM_FRAMES)
            assert r["jpeg_frames"] == [encode_jpeg(f, 95) for f in frames]


def _failure(out, sid):
    failures = [json.loads(l) for l in (out / "failures.jsonl").read_text().splitlines()]
    return {f["id"]: f for f in failures}.get(sid), failures


def test_truncated_mp4_is_reported_and_skipped(converted):
    f, failures = _failure(converted[0], "s090")
    assert f["error"] == "VideoError" and "P01_02.MP4" in f["reason"] and "corrupt" in f["reason"]
    assert f["index"] == 2 and f["shard"] == 2 % SHARDS


def test_missing_video_is_reported_and_skipped(converted):
    f, _ = _failure(converted[0], "s091")
    assert "P07_09.MP4" in f["reason"] and "not found" in f["reason"]


def test_stop_before_start_is_reported_and_skipped(converted):
    f, _ = _failure(converted[0], "s092")
    assert "stop_timestamp 4.000 is before start_timestamp 5.000" in f["reason"]


def test_stop_past_end_is_reported_and_skipped(converted):
    f, _ = _failure(converted[0], "s093")
    assert "past the end of the video (12.000s" in f["reason"]


def test_invalid_lines_reported_and_counts_match(converted):
    out, m = converted
    _, failures = _failure(out, None)
    assert m["num_skipped"] == len(failures) == 6
    errors = sorted(f["error"] for f in failures)
    assert errors == ["DuplicateId", "InvalidJSON", "VideoError", "VideoError", "VideoError", "VideoError"]
    assert sum(s["num_skipped"] for s in m["shards"]) == 4
    assert [f["index"] for f in failures] == sorted(f["index"] for f in failures)


def test_rerun_skips_verified_shards(data, converted):
    out, m = converted
    before = shard_bytes(out)
    again = run(data, out)
    assert again["run"]["shards_resumed"] == SHARDS and again["run"]["shards_written"] == 0
    assert shard_bytes(out) == before
    assert {k: v for k, v in again.items() if k != "run"} == {k: v for k, v in m.items() if k != "run"}


def test_killed_run_resumes_to_identical_result(data, converted, monkeypatch):
    full_out, full = converted
    out = data["base"] / "killed"
    # 1) A worker dies while writing shard 1: shard 0 is finished, shard 1 is a partial temp file.
    real = to_tfrecord.encode_sample
    calls = {"n": 0}

    def dying(index, s, cfg):
        if index % SHARDS == 1:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt   # not an Exception: kills the job like a signal would
        return real(index, s, cfg)

    monkeypatch.setattr(to_tfrecord, "encode_sample", dying)
    with pytest.raises(KeyboardInterrupt):
        run(data, out)
    monkeypatch.setattr(to_tfrecord, "encode_sample", real)
    # An interrupted write removes its own temp file and never leaves a partial shard under the final name; a
    # SIGKILLed worker cannot clean up, so its leftover is made here (the real kill: the SIGKILL test below).
    assert not glob.glob(str(out / "train-00001-of-00003.tfrecord*"))
    (out / "train-00001-of-00003.tfrecord.tmp-99999").write_bytes(b"partial")
    assert (out / ".train-00000-of-00003.tfrecord.done.json").is_file()
    # 2) A crash between the shard rename and its marker: shard 2 exists but has no marker -> redone.
    (out / "train-00002-of-00003.tfrecord").write_bytes(b"partial garbage")
    # 3) Rerun: shard 0 is verified and skipped, 1 and 2 are written; the result equals an uninterrupted run.
    m = run(data, out)
    assert m["run"]["shards_resumed"] == 1 and m["run"]["shards_written"] == 2
    assert not glob.glob(str(out / "*.tmp-*"))
    assert shard_bytes(out) == shard_bytes(full_out)
    assert {k: v for k, v in m.items() if k != "run"} == {k: v for k, v in full.items() if k != "run"}
    assert (out / "failures.jsonl").read_text() == (full_out / "failures.jsonl").read_text()


def test_max_shards_and_tampered_shard(data, converted):
    full_out, full = converted
    out = data["base"] / "partial"
    m = run(data, out, max_shards=1)
    assert not m["complete"] and m["pending_shards"] == ["train-00001-of-00003.tfrecord",
                                                         "train-00002-of-00003.tfrecord"]
    assert m["num_skipped"] == len((out / "failures.jsonl").read_text().splitlines())
    (out / "train-00000-of-00003.tfrecord").write_bytes(b"tampered")           # marker hash no longer matches
    m = run(data, out)
    assert m["complete"] and m["run"]["shards_written"] == 3 and m["run"]["shards_resumed"] == 0
    assert shard_bytes(out) == shard_bytes(full_out)


def test_cli_killed_with_sigkill_then_rerun_matches_in_process(data, converted):
    """Real kill: SIGKILL the CLI alone once the first shard is done (its workers are writing the others): no
    worker or manager survives it, nothing more is written, and a rerun of the CLI resumes to the same bytes."""
    full_out, _ = converted
    out = data["base"] / "cli"
    cmd = [sys.executable, "-m", "data_prep.to_tfrecord", "--samples", str(data["jsonl"]), "--video_root",
           str(data["root"]), "--layout", "original", "--num_frames", str(NUM_FRAMES), "--size", str(SIZE),
           "--num_shards", str(SHARDS), "--workers", "2", "--out", str(out), "--no_progress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    children = []
    try:
        deadline = time.time() + 240
        while not glob.glob(str(out / ".*.done.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        children = _children(proc.pid)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)        # the CLI only: its children must die by themselves
        proc.wait()
        assert len(children) >= 3                   # manager + 2 workers were running
        deadline = time.time() + 10
        while any(_alive(c) for c in children) and time.time() < deadline:
            time.sleep(0.05)
        assert not [c for c in children if _alive(c)], "orphaned worker/manager processes"
    finally:
        if proc.poll() is None or any(_alive(c) for c in children):
            os.killpg(proc.pid, signal.SIGKILL)     # clean up whatever is left of the session
        proc.wait()
    files = sorted(os.listdir(out))
    time.sleep(0.5)
    assert sorted(os.listdir(out)) == files         # nobody writes into --out any more
    finished = len(glob.glob(str(out / ".*.done.json")))
    assert finished >= 1 and not (out / "manifest.json").exists()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{finished} resumed" in res.stdout
    assert shard_bytes(out) == shard_bytes(full_out)
    assert not glob.glob(str(out / "*.tmp-*"))
    assert json.loads((out / "manifest.json").read_text())["num_skipped"] == 6
    bad = subprocess.run(cmd[:-1] + ["--layout", "frames"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "needs --fps or --fps_csv" in bad.stderr


def test_jitter_is_seeded_per_sample(data, converted):
    out_a, out_b = data["base"] / "jit_a", data["base"] / "jit_b"
    a = run(data, out_a, jitter=True, seed=1)
    run(data, out_b, jitter=True, seed=1)
    assert shard_bytes(out_a) == shard_bytes(out_b)                        # reproducible
    assert a["config_hash"] != converted[1]["config_hash"]                 # jitter is part of the config
    recs = {r["id"]: r for k in range(SHARDS) for r in read_shard(out_a / f"train-{k:05d}-of-{SHARDS:05d}.tfrecord")}
    s = data["samples"][0]
    start, stop = round(s["start_timestamp"] * FPS), round(s["stop_timestamp"] * FPS)
    ids = [decode_frame_index(f) for f in recs[s["id"]]["frames"]]
    mids = np.convolve(np.linspace(start, stop, NUM_FRAMES + 1), [0.5, 0.5], "valid")
    assert ids != mids.astype(int).tolist()
    assert np.all(np.abs(np.array(ids) - mids) <= (stop - start - 1) / NUM_FRAMES / 2 + 1)
    np.testing.assert_allclose(recs[s["id"]]["frame_times"], np.array(ids) / FPS, rtol=1e-6)


def test_questions_of_one_clip_decode_it_once_with_the_same_bytes(data, tmp_path, monkeypatch):
    """Three questions on one clip (MQA draws) read its video once; the records equal an uncached conversion's."""
    jsonl = tmp_path / "draws.jsonl"
    rows = [sample(i, start=1.0, stop=2.5, id=f"draw{i}") for i in range(3)] + [sample(7)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []
    read_clip = VideoReader.read_clip

    def counting(self, video_id, start, stop, *args, **kwargs):
        calls.append((video_id, start, stop))
        return read_clip(self, video_id, start, stop, *args, **kwargs)

    monkeypatch.setattr(VideoReader, "read_clip", counting)

    def convert(out):
        to_tfrecord.convert(str(jsonl), str(data["root"]), "original", str(out), num_frames=NUM_FRAMES, size=SIZE,
                            num_shards=1, workers=0, progress=False)
        return shard_bytes(out)

    to_tfrecord._CLIPS.clear()
    cached = convert(tmp_path / "cached")
    assert sorted(set(calls)) == [("P01_01", 1.0, 2.5), ("P01_01", 7.5, 9.0)] and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(to_tfrecord, "CLIP_CACHE_BYTES", 0)
    to_tfrecord._CLIPS.clear()
    assert convert(tmp_path / "uncached") == cached and len(calls) == 4
    recs = read_shard(tmp_path / "cached" / "train-00000-of-00001.tfrecord")
    assert [r["id"] for r in recs] == ["draw0", "draw1", "draw2", "s007"]
    ids = [decode_frame_index(f) for f in recs[1]["frames"]]
    assert ids == reference_ids(1.0 * FPS, 2.5 * FPS, NUM_FRAMES).tolist()


@pytest.mark.parametrize("layout", ["chunks", "frames"])
def test_other_layouts_convert_with_right_frames(tmp_path, layout):
    root = tmp_path / "videos"
    frame_index_video(str(root), layout, "P03_04", 20 * FPS, fps=FPS, chunk_len=15)
    csv = tmp_path / "EPIC_100_video_info.csv"
    csv.write_text("video_id,duration,fps,resolution\nP03_04,20.0,30.0,64x64\n")
    samples = [sample(i, video_id="P03_04", start=4.0 * i + 1.0, stop=4.0 * i + 3.5) for i in range(4)]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in samples))
    m = to_tfrecord.convert(str(jsonl), str(root), layout, str(tmp_path / "out"), num_frames=NUM_FRAMES, size=SIZE,
                            num_shards=2, workers=0, fps_csv=str(csv), progress=False)
    assert m["num_records"] == 4 and m["num_skipped"] == 0
    recs = read_shard(tmp_path / "out" / "train-00000-of-00002.tfrecord") + \
        read_shard(tmp_path / "out" / "train-00001-of-00002.tfrecord")
    for r in recs:
        s = r["sample"]
        ids = reference_ids(round(s["start_timestamp"] * FPS), round(s["stop_timestamp"] * FPS), NUM_FRAMES)
        assert [decode_frame_index(f) for f in r["frames"]] == ids.tolist()   # sample 3 spans chunks 0 and 15


def test_mqa_jsonl_from_annotations_converts(tmp_path):
    """EK100 CSV rows -> synthetic videos + re-timed CSV -> data_prep.mqa questions -> TFRecords."""
    from llavaction_jax.data import ek100
    from data_prep import mqa
    from data_prep.synthetic_videos import NOUN_COLOURS, synthesize_from_csv
    from tests.conftest import EK100_DIR
    synthesize_from_csv(os.path.join(EK100_DIR, "EPIC_100_validation.csv"), str(tmp_path), "original", max_rows=8)
    ann = ek100.load_annotations(str(tmp_path / "annotations" / "EPIC_100_validation.csv"), with_video_info=False)
    questions = mqa.generate_questions(ann, None, mode="random", k=5, source="random", seed=0)
    jsonl = tmp_path / "mqa.jsonl"
    jsonl.write_text("".join(json.dumps(q) + "\n" for q in questions))
    m = to_tfrecord.convert(str(jsonl), str(tmp_path / "videos"), "original", str(tmp_path / "out"),
                            num_frames=NUM_FRAMES, size=SIZE, num_shards=2, workers=0, progress=False)
    assert m["num_records"] == len(questions) == 8 and m["num_skipped"] == 0
    recs = {r["id"]: r for k in range(2) for r in read_shard(tmp_path / "out" / f"train-{k:05d}-of-00002.tfrecord")}
    for q in questions:
        r = recs[q["id"]]
        assert r["sample"] == q and r["action_id"] == q["action_id"]
        colour = NOUN_COLOURS[q["noun_class"] % len(NOUN_COLOURS)].astype(int)
        assert all((np.abs(f.astype(int) - colour).max(axis=2) < 50).sum() > 4 for f in r["frames"])


def _children(pid):
    """pids whose parent is `pid` (from /proc; Linux)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = open(stat).read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.split("/")[2]))
    return out


def _alive(pid):
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux-only")
def test_sigterm_stops_the_workers_and_exits_143(data, tmp_path):
    """SIGTERM to the CLI alone as soon as its manager and 2 workers exist: it kills them itself, exits 143, and
    nothing more is written into --out (SIGKILL: test_cli_killed_with_sigkill_then_rerun_matches_in_process)."""
    sig = signal.SIGTERM
    samples = tmp_path / "many.jsonl"
    with open(samples, "w") as f:
        for i in range(90):
            f.write(json.dumps(sample(i, start=0.2 + (i % 9), stop=1.7 + (i % 9))) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep.to_tfrecord", "--samples", str(samples), "--video_root",
           str(data["root"]), "--layout", "original", "--num_frames", str(NUM_FRAMES), "--size", str(SIZE),
           "--num_shards", "6", "--workers", "2", "--out", str(out), "--no_progress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60

        while len(_children(proc.pid)) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        children = _children(proc.pid)
        assert proc.poll() is None and len(children) >= 3, "expected a manager and 2 workers at work"
        os.kill(proc.pid, sig)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.05)
    assert not [c for c in children if _alive(c)], "orphaned worker/manager processes"
    files = sorted(os.listdir(out))
    time.sleep(0.5)
    assert sorted(os.listdir(out)) == files and not (out / "manifest.json").exists()
    assert rc == 143 and "terminated (SIGTERM)" in proc.stderr.read()


def test_zero_records_and_missing_video_root_are_errors(data, tmp_path, capsys):
    out = tmp_path / "out"
    jsonl = tmp_path / "videos_only.jsonl"
    jsonl.write_text("".join(json.dumps(sample(i)) + "\n" for i in range(3)))
    args = ["--samples", str(jsonl), "--layout", "original", "--num_frames", str(NUM_FRAMES), "--size",
            str(SIZE), "--num_shards", "2", "--workers", "0", "--no_progress", "--out", str(out)]
    from llavaction_jax import cli
    # A mistyped --video_root: refused before anything is written.
    assert cli.run(to_tfrecord.main, args + ["--video_root", str(data["root"]) + "_typo"]) == 2
    assert capsys.readouterr().err == (f"error: not a directory (--video_root {data['root']}_typo): the root of "
                                       "the 'original' video layout\n")
    assert not out.exists()
    # A root that exists but holds none of the videos: every sample skipped -> error, manifest not complete.
    empty = tmp_path / "empty_root"
    empty.mkdir()
    assert cli.run(to_tfrecord.main, args + ["--video-root", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: no records written: all 3 sample(s) skipped ({out}/failures.jsonl): samples whose videos exist")
    assert json.loads((out / "manifest.json").read_text())["complete"] is False


def _mount_tmpfs(path, size):
    import subprocess
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return proc.returncode == 0


def test_disk_full_is_one_error_and_a_rerun_with_space_completes(data, converted, tmp_path, capsys):
    """to_tfrecord into a tmpfs half the output's size: one error line naming the file being written, exit 2, the manifest not
    complete; after the filesystem grows, the same command finishes and writes the bytes of a run that never
    ran out of space (finished shards kept, the torn one redone)."""
    import subprocess
    mnt = tmp_path / "small"
    full = sum(os.path.getsize(p) for p in glob.glob(os.path.join(converted[0], "*")))
    if not _mount_tmpfs(mnt, f"{max(2, full // 2 // 4096) * 4}k"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        out = mnt / "out"
        args = ["--samples", str(data["jsonl"]), "--video_root", str(data["root"]), "--layout", "original",
                "--num_frames", str(NUM_FRAMES), "--size", str(SIZE), "--num_shards", str(SHARDS), "--workers", "0",
                "--no_progress", "--out", str(out)]
        from llavaction_jax import cli
        assert cli.run(to_tfrecord.main, args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: no space left on device") and str(out) in err[0], err
        manifest = out / "manifest.json"
        assert not manifest.exists() or json.loads(manifest.read_text())["complete"] is False
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        assert cli.run(to_tfrecord.main, args) == 0
        capsys.readouterr()
        assert shard_bytes(out) == shard_bytes(converted[0])
        assert json.loads(manifest.read_text())["complete"] is True
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
