"""data_prep.synthetic_videos: frame-index codes and class-pattern videos that encode verb/noun in pixels."""
import io
import math
import os

import numpy as np
import pytest
from PIL import Image

from data_prep.synthetic_videos import (NOUN_COLOURS, ClassPatternRenderer, decode_frame_index, frame_index_image,
                                 make_synthetic_dataset, noun_appearance, object_offset, row_times, verb_motion)
from llavaction_jax.data.video import VideoReader

FPS = 30


def test_frame_index_code_survives_jpeg_and_resize():
    for g in [0, 1, 2, 255, 256, 1234, 40000, 65535]:
        img = frame_index_image(g, size=64)
        buf = io.BytesIO()
        Image.fromarray(img).resize((384, 384), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=60)
        assert decode_frame_index(np.asarray(Image.open(buf))) == g
    assert decode_frame_index(frame_index_image(2 ** 20 + 5, size=60, grid=5), grid=5) == 2 ** 20 + 5
    with pytest.raises(ValueError, match="does not fit in 16 bits"):
        frame_index_image(2 ** 16)


def test_appearance_and_motion_mappings():
    assert tuple(noun_appearance(3)[0]) == tuple(NOUN_COLOURS[3]) and noun_appearance(3)[1] == "square"
    assert noun_appearance(12 + 3)[1] == "disk" and noun_appearance(24)[1] == "triangle"
    assert verb_motion(2) == (math.pi / 2, "linear") and verb_motion(9)[1] == "back_and_forth"
    # linear verb 0 moves left -> right; verb 2 (90 deg) moves bottom -> top (image y decreases)
    assert object_offset(0, 0.0, 40)[1] == pytest.approx(-20) and object_offset(0, 1.0, 40)[1] == pytest.approx(20)
    assert object_offset(2, 0.0, 40)[0] == pytest.approx(20) and object_offset(2, 1.0, 40)[0] == pytest.approx(-20)
    # back-and-forth returns to where it started
    assert object_offset(8, 0.0, 40) == pytest.approx(object_offset(8, 1.0, 40))


def test_outward_path_gives_each_direction_its_own_ray():
    # "through" (default): opposite directions pass the same places in reverse order.
    assert object_offset(0, 0.25, 40) == pytest.approx(object_offset(4, 0.75, 40), abs=1e-9)
    # "outward": from the centre to the edge, so take (0 deg) and close (180 deg) never share a place after t=0.
    assert object_offset(0, 0.0, 40, "outward") == pytest.approx((0.0, 0.0))
    assert object_offset(0, 1.0, 40, "outward") == pytest.approx((0.0, 20.0), abs=1e-9)
    assert object_offset(2, 1.0, 40, "outward") == pytest.approx((-20.0, 0.0), abs=1e-9)
    for p in (0.1, 0.5, 0.9):
        assert object_offset(0, p, 40, "outward")[1] > 0 > object_offset(4, p, 40, "outward")[1]
    with pytest.raises(ValueError, match="unknown path 'sideways'"):
        object_offset(0, 0.5, 40, "sideways")
    with pytest.raises(ValueError, match="unknown path 'sideways'"):
        ClassPatternRenderer(ROWS[:1], FPS, 64, path="sideways")
    # Rendered: at the end of a verb-0 clip the object is right of the centre, at its start on the centre.
    row = dict(ROWS[0], verb_class=0)
    r = ClassPatternRenderer([row], FPS, 64, seed=5, path="outward")
    start, stop = row_times(row)
    colour = NOUN_COLOURS[row["noun_class"] % len(NOUN_COLOURS)]
    first = np.nonzero(_colour_mask(r(int(math.ceil(start * FPS))), colour))[1].mean()
    last = np.nonzero(_colour_mask(r(int(stop * FPS)), colour))[1].mean()
    assert abs(first - 31.5) < 3 and last > 50


# configs/demo.py's verb_angles (take, put, open, close on the four diagonals).
DEMO_VERB_ANGLES = {0: 45.0, 1: 135.0, 3: 225.0, 4: 315.0}


def test_verb_angles_put_each_verb_in_its_own_quadrant():
    """configs/demo.py's verb_angles: take/put/open/close on the four diagonals, so each verb's object ends in its
    own quadrant of the frame (its own token of a 2x2 pooled grid); other verbs keep their class direction."""
    angles = DEMO_VERB_ANGLES
    assert verb_motion(0, angles)[0] == pytest.approx(math.pi / 4) and verb_motion(2, angles) == verb_motion(2)
    ends = {v: object_offset(v, 1.0, 40, "outward", angles) for v in angles}   # (dy, dx), image y grows downwards
    signs = {v: (math.copysign(1, dy), math.copysign(1, dx)) for v, (dy, dx) in ends.items()}
    assert signs == {0: (-1, 1), 1: (-1, -1), 3: (1, -1), 4: (1, 1)}
    assert all(min(abs(dy), abs(dx)) == pytest.approx(20 / math.sqrt(2)) for dy, dx in ends.values())
    # Rendered: a put (verb 1) clip ends with its object in the top-left quadrant.
    row = dict(ROWS[0], verb_class=1)
    r = ClassPatternRenderer([row], FPS, 64, seed=5, path="outward", verb_angles=angles)
    colour = NOUN_COLOURS[row["noun_class"] % len(NOUN_COLOURS)]
    ys, xs = np.nonzero(_colour_mask(r(int(row_times(row)[1] * FPS)), colour))
    assert ys.mean() < 24 and xs.mean() < 24


def test_quadrant_path_keeps_the_object_in_its_quadrant_in_every_frame():
    """"quadrant": the outer half of the "outward" ray, so the demo's diagonal verbs show their object inside
    their own quadrant from the clip's first frame on (with "outward" the first frame sits on the centre)."""
    assert object_offset(0, 0.0, 40, "quadrant") == pytest.approx((0.0, 10.0), abs=1e-9)
    assert object_offset(0, 1.0, 40, "quadrant") == pytest.approx(object_offset(0, 1.0, 40, "outward"))
    angles = DEMO_VERB_ANGLES
    quadrant = {0: (slice(0, 32), slice(32, 64)), 1: (slice(0, 32), slice(0, 32)), 3: (slice(32, 64), slice(0, 32)),
                4: (slice(32, 64), slice(32, 64))}
    for verb, (rows, cols) in quadrant.items():
        row = dict(ROWS[0], verb_class=verb)
        r = ClassPatternRenderer([row], FPS, 64, seed=5, path="quadrant", verb_angles=angles)
        colour = NOUN_COLOURS[row["noun_class"] % len(NOUN_COLOURS)]
        start, stop = row_times(row)
        for g in range(int(math.ceil(start * FPS)), int(stop * FPS) + 1):
            mask = _colour_mask(r(g), colour)
            assert mask.sum() > 50 and mask[rows, cols].sum() == mask.sum(), (verb, g)


def test_row_times_accepts_seconds_and_ek100_strings():
    assert row_times({"start_timestamp": 1.5, "stop_timestamp": 2}) == (1.5, 2.0)
    assert row_times({"start": "00:01:02.50", "stop": "00:01:04.00"}) == (62.5, 64.0)
    with pytest.raises(ValueError, match="start_timestamp"):
        row_times({"id": "x", "begin": 1})
    with pytest.raises(ValueError, match="hh:mm:ss"):
        row_times({"id": "x", "start": "soon", "stop": 2})


def _colour_mask(frame, colour, tol=40):
    return np.all(np.abs(frame.astype(int) - np.asarray(colour, int)) < tol, axis=2)


ROWS = [
    {"id": "a", "video_id": "P01_01", "start_timestamp": 1.0, "stop_timestamp": 3.0, "verb_class": 0, "noun_class": 0},
    {"id": "b", "video_id": "P01_01", "start_timestamp": 4.0, "stop_timestamp": 6.0, "verb_class": 4, "noun_class": 3},
    {"id": "c", "video_id": "P02_05", "start_timestamp": 0.5, "stop_timestamp": 1.5, "verb_class": 6, "noun_class": 1},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    out = {}
    for layout in ("original", "chunks", "frames"):
        out[layout] = (root / layout, make_synthetic_dataset(ROWS, str(root / layout), layout, fps=FPS, size=64,
                                                             chunk_len=2, seed=1))
    return out


def test_dataset_summary_and_files(dataset):
    root, summary = dataset["original"]
    assert summary["videos"]["P01_01"] == {"num_frames": 7 * FPS, "duration": 7.0, "num_rows": 2, "num_files": 1}
    assert summary["videos"]["P02_05"]["num_frames"] == int(math.ceil(2.5 * FPS))
    assert [r["id"] for r in summary["rows"]] == ["a", "b", "c"]
    assert (root / "P02" / "videos" / "P02_05.MP4").is_file()
    croot, csummary = dataset["chunks"]
    assert sorted(p.name for p in (croot / "P01" / "P01_01.MP4").iterdir()) == ["0.MP4", "2.MP4", "4.MP4", "6.MP4"]
    froot, _ = dataset["frames"]
    assert len(list((froot / "P01" / "P01_01").glob("frame_*.jpg"))) == 7 * FPS


@pytest.mark.parametrize("layout", ["original", "chunks", "frames"])
def test_clip_pixels_encode_noun_colour_and_verb_direction(dataset, layout):
    root, summary = dataset[layout]
    r = VideoReader(str(root), layout, size=None, fps=FPS if layout == "frames" else None, chunk_len=2)
    for row in ROWS:
        frames, _ = r.read_clip(row["video_id"], row["start_timestamp"], row["stop_timestamp"], 8)
        colour = NOUN_COLOURS[row["noun_class"]]
        masks = [_colour_mask(f, colour) for f in frames]
        assert all(m.sum() > 60 for m in masks), f"noun colour missing in {row['id']}"
        cy = [np.nonzero(m)[0].mean() for m in masks]
        cx = [np.nonzero(m)[1].mean() for m in masks]
        angle = math.atan2(-(cy[-1] - cy[0]), cx[-1] - cx[0])     # image y points down
        expected = verb_motion(row["verb_class"])[0]
        assert abs((angle - expected + math.pi) % (2 * math.pi) - math.pi) < 0.2, row["id"]


def test_background_only_outside_clips(dataset):
    root, _ = dataset["original"]
    frames, _ = VideoReader(str(root), "original", size=None).read_clip("P01_01", 3.3, 3.8, 4)
    for colour in (NOUN_COLOURS[0], NOUN_COLOURS[3]):
        assert all(_colour_mask(f, colour).sum() < 10 for f in frames)


def test_rendering_is_deterministic_and_seeded():
    a = ClassPatternRenderer(ROWS[:2], FPS, 64, seed=5)
    b = ClassPatternRenderer(ROWS[:2], FPS, 64, seed=5)
    c = ClassPatternRenderer(ROWS[:2], FPS, 64, seed=6)
    np.testing.assert_array_equal(a(45), b(45))
    assert not np.array_equal(a(45), c(45))
    # the same frame with a different noun colours the object differently
    other = ClassPatternRenderer([dict(ROWS[0], noun_class=5)], FPS, 64, seed=5)
    assert not np.array_equal(a(45), other(45))


def test_compact_retimes_late_rows(tmp_path):
    rows = [{"id": "x", "video_id": "P03_01", "start": "00:20:00.00", "stop": "00:20:03.00", "verb_class": 1,
             "noun_class": 2},
            {"id": "y", "video_id": "P03_01", "start": "00:10:00.00", "stop": "00:10:01.50", "verb_class": 2,
             "noun_class": 4}]
    summary = make_synthetic_dataset(rows, str(tmp_path), "original", compact=True, gap=0.5, max_clip_seconds=2.0)
    times = {r["id"]: (r["start_timestamp"], r["stop_timestamp"]) for r in summary["rows"]}
    assert times == {"y": (0.5, 2.0), "x": (2.5, 4.5)}
    assert summary["rows"][0]["start"] == 2.5
    assert summary["videos"]["P03_01"]["duration"] == pytest.approx(5.5)
    with pytest.raises(ValueError, match="missing field 'noun_class'"):
        make_synthetic_dataset([{"video_id": "P01_01", "start": 0, "stop": 1, "verb_class": 0}], str(tmp_path))


def test_synthesize_from_ek100_csv_writes_matching_annotations(tmp_path):
    import csv
    from data_prep.synthetic_videos import synthesize_from_csv
    from tests.conftest import EK100_DIR
    src = os.path.join(EK100_DIR, "EPIC_100_validation.csv")
    summary = synthesize_from_csv(src, str(tmp_path), "chunks", max_rows=5, chunk_len=15, max_clip_seconds=3.0)
    with open(tmp_path / "annotations" / "EPIC_100_validation.csv", newline="") as f:
        lines = list(csv.reader(f))
    with open(src, newline="") as f:
        original = list(csv.reader(f))[:6]
    assert lines[0] == original[0] and len(lines) == 6
    assert [l[0] for l in lines[1:]] == [l[0] for l in original[1:]]
    assert [l[8:] for l in lines[1:]] == [l[8:] for l in original[1:]]           # labels untouched
    assert (tmp_path / "annotations" / "EPIC_100_verb_classes.csv").is_file()
    r = VideoReader(str(tmp_path / "videos"), "chunks", size=None)
    for line, row in zip(lines[1:], summary["rows"]):
        start = row_times({"start": line[4], "stop": line[5]})
        assert start == pytest.approx((row["start_timestamp"], row["stop_timestamp"]), abs=0.006)
        frames, _ = r.read_clip(line[2], start[0], start[1], 4)
        colour = NOUN_COLOURS[int(line[12]) % len(NOUN_COLOURS)]
        assert all(_colour_mask(f, colour).sum() > 30 for f in frames)
    with pytest.raises(ValueError, match="no rows selected"):
        synthesize_from_csv(src, str(tmp_path / "none"), video_ids=["P99_99"])
