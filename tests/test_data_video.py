"""llavaction_jax.data.video: frame ids, the three layouts, timestamps and bad-input errors (tiny synthetic videos)."""
import os
import shutil

import av
import numpy as np
import pytest

from data_prep.synthetic_videos import decode_frame_index, frame_index_video, frame_index_image
from llavaction_jax.data.video_writer import write_mp4
from llavaction_jax.data.video import (VideoError, VideoReader, detect_layout, load_video_fps, read_clip, resize_frame,
                             segment_frame_ids)

FPS = 30
NUM = 33 * FPS          # 33 s: chunks 0, 15 and 30 (a partial last chunk)
LAYOUTS = ("original", "chunks", "frames")


def reference_ids(s, e, n):
    """The reference formula, verbatim semantics: np.convolve(np.linspace(s, e, n+1), [.5, .5], 'valid') -> int."""
    return np.convolve(np.linspace(s, e, n + 1), [0.5, 0.5], "valid").astype(int)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("frame_index")
    for layout in LAYOUTS:
        frame_index_video(str(base / layout), layout, "P01_01", NUM, fps=FPS, size=64, chunk_len=15)
    return base


def reader(roots, layout, **kw):
    kw.setdefault("size", 32)
    if layout == "frames":
        kw.setdefault("fps", FPS)
    return VideoReader(str(roots / layout), layout, **kw)


@pytest.mark.parametrize("s,e,n", [(0, 100, 8), (396, 537, 16), (3, 5, 8), (10, 10, 4), (12345, 99999, 32)])
def test_segment_ids_equal_reference_formula(s, e, n):
    np.testing.assert_array_equal(segment_frame_ids(s, e, n), reference_ids(s, e, n))


def test_jitter_is_seeded_and_stays_near_midpoints():
    a = segment_frame_ids(100, 400, 16, jitter=True, rng=np.random.default_rng(7))
    b = segment_frame_ids(100, 400, 16, jitter=True, rng=np.random.default_rng(7))
    c = segment_frame_ids(100, 400, 16, jitter=True, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    mids = np.convolve(np.linspace(100, 400, 17), [0.5, 0.5], "valid")
    seg = (400 - 100 - 1) / 16
    assert np.all(np.abs(a - mids) <= seg / 2 + 1)
    with pytest.raises(ValueError, match="rng"):
        segment_frame_ids(0, 10, 4, jitter=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_metadata(roots, layout):
    assert reader(roots, layout).metadata("P01_01") == (FPS, NUM)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("start,stop,n", [(13.2, 17.9, 16), (0.0, 2.0, 8), (29.5, 31.0, 4), (5.0, 5.0, 3)])
def test_frames_decoded_at_reference_ids(roots, layout, start, stop, n):
    frames, times = reader(roots, layout).read_clip("P01_01", start, stop, n)
    ids = reference_ids(round(start * FPS), round(stop * FPS), n)
    assert frames.shape == (n, 32, 32, 3) and frames.dtype == np.uint8
    assert [decode_frame_index(f) for f in frames] == ids.tolist()
    np.testing.assert_allclose(times, ids / FPS)


def test_chunk_clip_spans_two_chunks(roots):
    # 14.0-16.5 s crosses the 15 s chunk boundary: ids below and above frame 450 come from 0.MP4 and 15.MP4.
    frames, _ = reader(roots, "chunks").read_clip("P01_01", 14.0, 16.5, 8)
    got = [decode_frame_index(f) for f in frames]
    assert got == reference_ids(420, 495, 8).tolist()
    assert min(got) < 450 <= max(got)


def test_seek_and_sequential_decoding_agree(roots):
    seek = reader(roots, "original", seek_gap=0).read_clip("P01_01", 1.0, 30.0, 12)[0]
    seq = reader(roots, "original", seek_gap=10 ** 9).read_clip("P01_01", 1.0, 30.0, 12)[0]
    np.testing.assert_array_equal(seek, seq)


def test_jittered_clip_is_reproducible(roots):
    r = reader(roots, "original")
    a, ta = r.read_clip("P01_01", 2.0, 12.0, 8, jitter=True, seed=3)
    b, tb = r.read_clip("P01_01", 2.0, 12.0, 8, jitter=True, seed=3)
    np.testing.assert_array_equal(a, b)
    expected = segment_frame_ids(60, 360, 8, jitter=True, rng=np.random.default_rng(3))
    assert [decode_frame_index(f) for f in a] == expected.tolist()


def test_resize_is_pil_bicubic_squash_of_native_frame(roots):
    native, _ = reader(roots, "original", size=None).read_clip("P01_01", 3.0, 4.0, 2)
    assert native.shape == (2, 64, 64, 3)
    small, _ = reader(roots, "original", size=40, interp="bilinear").read_clip("P01_01", 3.0, 4.0, 2)
    np.testing.assert_array_equal(small[1], resize_frame(native[1], 40, "bilinear"))
    with pytest.raises(ValueError, match="interpolation"):
        VideoReader(str(roots / "original"), "original", interp="cubic-ish")


def test_functional_read_clip_and_zero_frames(roots):
    frames, times = read_clip(str(roots / "original"), "original", "P01_01", 1.0, 2.0, 4, size=16)
    assert frames.shape == (4, 16, 16, 3)
    empty, t = read_clip(str(roots / "original"), "original", "P01_01", 1.0, 2.0, 0, size=16)
    assert empty.shape == (0, 16, 16, 3) and t.shape == (0,)


def test_frames_layout_fps_from_video_info_csv(roots, tmp_path):
    csv = tmp_path / "EPIC_100_video_info.csv"
    csv.write_text("video_id,duration,fps,resolution\nP01_01,33.0,30.0,64x64\n")
    table = load_video_fps(str(csv))
    r = VideoReader(str(roots / "frames"), "frames", size=32, fps_table=table)
    frames, _ = r.read_clip("P01_01", 10.0, 11.0, 2)
    assert [decode_frame_index(f) for f in frames] == reference_ids(300, 330, 2).tolist()
    with pytest.raises(VideoError, match="needs an fps"):
        VideoReader(str(roots / "frames"), "frames").read_clip("P01_01", 1.0, 2.0, 2)


# ----------------------------------------------------------------------------- end-of-video rule

@pytest.mark.parametrize("layout", LAYOUTS)
def test_stop_past_end_within_tolerance_is_clipped_to_last_frame(roots, layout):
    frames, times = reader(roots, layout).read_clip("P01_01", 30.0, 33.5, 4)   # video is 33.0 s long
    ids = reference_ids(900, NUM - 1, 4)                                      # end clipped to the last frame
    assert [decode_frame_index(f) for f in frames] == ids.tolist()
    assert times[-1] <= (NUM - 1) / FPS


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stop_past_end_beyond_tolerance_raises(roots, layout):
    with pytest.raises(VideoError, match=r"past the end of the video \(33.000s") as e:
        reader(roots, layout).read_clip("P01_01", 30.0, 34.5, 4)
    assert "P01_01" in e.value.path


def test_start_after_end_raises(roots):
    with pytest.raises(VideoError, match="after the last frame"):
        reader(roots, "original").read_clip("P01_01", 33.5, 33.9, 4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stop_before_start_raises(roots, layout):
    with pytest.raises(VideoError, match="stop_timestamp 4.000 is before start_timestamp 5.000"):
        reader(roots, layout).read_clip("P01_01", 5.0, 4.0, 4)


# ----------------------------------------------------------------------------- missing / corrupt input

@pytest.mark.parametrize("layout,expected", [("original", "video file not found"),
                                             ("chunks", "chunk directory not found"),
                                             ("frames", "frame directory not found")])
def test_missing_video_raises_with_path(roots, layout, expected):
    with pytest.raises(VideoError, match=expected) as e:
        reader(roots, layout).read_clip("P02_07", 1.0, 2.0, 4)
    assert e.value.path.endswith(os.path.join("P02", "videos", "P02_07.MP4") if layout == "original"
                                 else os.path.join("P02", "P02_07.MP4") if layout == "chunks"
                                 else os.path.join("P02", "P02_07"))


def test_garbage_file_raises(tmp_path):
    path = tmp_path / "P01" / "videos" / "P01_02.MP4"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(VideoError, match="cannot open video") as e:
        VideoReader(str(tmp_path), "original").read_clip("P01_02", 0.0, 1.0, 2)
    assert e.value.path == str(path)


def test_truncated_mp4_without_index_raises(roots, tmp_path):
    # PyAV writes the moov index at the end: a cut file has no index and cannot be opened.
    src = roots / "original" / "P01" / "videos" / "P01_01.MP4"
    dst = tmp_path / "P01" / "videos" / "P01_01.MP4"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(VideoError, match="corrupt"):
        VideoReader(str(tmp_path), "original").read_clip("P01_01", 1.0, 2.0, 2)


def test_truncated_faststart_mp4_raises_truncated(tmp_path):
    # With the index in front ("faststart"), a cut file opens and reports all frames, but the data ends early.
    path = tmp_path / "P01" / "videos" / "P01_03.MP4"
    path.parent.mkdir(parents=True)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        s.options = {"g": "30", "crf": "12"}
        rng = np.random.default_rng(0)
        for g in range(300):
            # Per-frame noise makes the frame data (not the index) dominate the file size.
            img = np.clip(frame_index_image(g).astype(int) + rng.integers(-20, 21, (64, 64, 3)), 0, 255)
            for p in s.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])
    r = VideoReader(str(tmp_path), "original", size=None)
    assert r.metadata("P01_03") == (FPS, 300)       # header still claims 300 frames
    frames, _ = r.read_clip("P01_03", 0.0, 1.0, 2)  # early frames are intact
    assert [decode_frame_index(f) for f in frames] == reference_ids(0, 30, 2).tolist()
    with pytest.raises(VideoError, match="truncated or corrupt"):
        r.read_clip("P01_03", 8.0, 9.5, 4)


def test_truncated_or_missing_chunk_raises(roots, tmp_path):
    root = tmp_path / "chunks"
    shutil.copytree(roots / "chunks", root)
    chunk = root / "P01" / "P01_01.MP4" / "15.MP4"
    chunk.write_bytes(chunk.read_bytes()[:500])
    r = VideoReader(str(root), "chunks", size=32)
    r.read_clip("P01_01", 1.0, 14.0, 4)                  # clips inside chunk 0 are still readable
    with pytest.raises(VideoError, match="15.MP4"):
        r.read_clip("P01_01", 14.0, 16.0, 4)
    chunk.unlink()
    with pytest.raises(VideoError, match=r"not contiguous.*missing \[15\]"):
        VideoReader(str(root), "chunks").read_clip("P01_01", 1.0, 2.0, 4)


def test_missing_frame_file_raises(roots, tmp_path):
    root = tmp_path / "frames"
    shutil.copytree(roots / "frames", root)
    (root / "P01" / "P01_01" / "frame_0000000301.jpg").unlink()       # 0-based frame 300
    r = VideoReader(str(root), "frames", size=32, fps=FPS)
    with pytest.raises(VideoError, match="frame_0000000301.jpg"):
        r.read_clip("P01_01", 9.0, 11.0, 1)                           # midpoint of [270, 330] = 300


def test_write_mp4_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(str(tmp_path / "x.mp4"), [], FPS)


def test_detect_layout(roots, tmp_path):
    for layout in LAYOUTS:
        assert detect_layout(str(roots / layout)) == layout
    (tmp_path / "P01").mkdir()
    with pytest.raises(VideoError, match="cannot detect the layout"):
        detect_layout(str(tmp_path))
    with pytest.raises(VideoError, match="video root directory not found"):
        detect_layout(str(tmp_path / "nope"))
