"""Synthetic EK100-style videos for tests and the demo (real H.264 via PyAV/libx264; no JAX).

Two kinds of content:

* Class-pattern videos (``make_synthetic_dataset``): for each annotation row, the frames inside the row's
  [start, stop] show an object whose look encodes the noun and whose motion encodes the verb, over a
  static noise texture:
    noun -> colour ``NOUN_COLOURS[noun % 12]`` and shape ``SHAPES[(noun // 12) % 3]``  (36 distinct nouns)
    verb -> direction ``(verb % 8) * 45 deg`` and pattern ``MOTIONS[(verb // 8) % 3]`` (24 distinct verbs)
  Outside every row's clip only the background is shown. The path (``PATHS``) either crosses the frame centre
  ("through": opposite directions pass the same places in reverse order, so only the order of the frames tells
  them apart), starts there ("outward": each direction sweeps its own ray, so one late frame tells it) or starts a
  quarter of the way out ("quadrant": the outer half of that ray, so with diagonal directions the object sits in
  its direction's quadrant of the frame in every frame, the first included).
* Frame-index videos (``frame_index_video``): every frame carries its own global 0-based frame index as a
  grid of bright/dark blocks (robust to H.264 and resizing), read back with ``decode_frame_index``.

All videos can be written in the three layouts the reader supports (see llavaction_jax/data/video.py):
``original`` (``<root>/P01/videos/P01_01.MP4``), ``chunks`` (``<root>/P01/P01_01.MP4/<sec>.MP4``) and
``frames`` (``<root>/P01/P01_01/frame_0000000001.jpg``). Everything is deterministic given the seed.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from llavaction_jax import argparsing, cli
from llavaction_jax.data.ek100 import AnnotationError
from llavaction_jax.data.video import VIDEO_DIR_LAYOUTS, participant_of
from llavaction_jax.data.video_writer import write_video

NOUN_COLOURS = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (255, 255, 255),
], np.uint8)
SHAPES = ("square", "disk", "triangle")
MOTIONS = ("linear", "back_and_forth", "zigzag")
PATHS = ("through", "outward", "quadrant")


# ----------------------------------------------------------------------------- frame-index videos

def frame_index_image(index: int, size: int = 64, grid: int = 4) -> np.ndarray:
    """An image whose grid x grid blocks spell ``index`` in binary (row-major, MSB first)."""
    bits = grid * grid
    if not 0 <= index < 2 ** bits:
        raise ValueError(f"frame index {index} does not fit in {bits} bits (use a larger grid)")
    values = np.array([(index >> (bits - 1 - b)) & 1 for b in range(bits)], np.uint8).reshape(grid, grid)
    cell = -(-size // grid)
    img = np.kron(np.where(values == 1, 230, 25).astype(np.uint8), np.ones((cell, cell), np.uint8))[:size, :size]
    return np.repeat(img[:, :, None], 3, axis=2)


def decode_frame_index(img: np.ndarray, grid: int = 4) -> int:
    """Read back the index drawn by :func:`frame_index_image` (any resolution; uses block-centre means)."""
    h, w = img.shape[:2]
    gray = np.asarray(img, np.float32).mean(axis=2)
    value = 0
    for r in range(grid):
        for c in range(grid):
            # Centre half of each block: away from edges blurred by the codec or the resize.
            y0, y1 = int((r + 0.25) * h / grid), int((r + 0.75) * h / grid)
            x0, x1 = int((c + 0.25) * w / grid), int((c + 0.75) * w / grid)
            value = (value << 1) | int(gray[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].mean() > 127.5)
    return value


def frame_index_video(root: str, layout: str, video_id: str, num_frames: int, fps: float = 30.0,
                      size: int = 64, grid: int = 4, chunk_len: int = 15, ext: str = "MP4",
                      crf: int = 12) -> list[str]:
    """Write a video whose global frame g shows g (see :func:`frame_index_image`)."""
    return write_video(lambda g: frame_index_image(g, size, grid), num_frames, root, layout, video_id, fps,
                       chunk_len, ext, crf=crf)


# ----------------------------------------------------------------------------- class-pattern videos

def _shape_mask(shape: str, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "disk":
        return (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (side / 2) ** 2
    # Upward triangle: apex at the top centre, base on the bottom row.
    return np.abs(xx - side / 2) <= yy / 2


def noun_appearance(noun_class: int) -> tuple[np.ndarray, str]:
    return NOUN_COLOURS[noun_class % len(NOUN_COLOURS)], SHAPES[(noun_class // len(NOUN_COLOURS)) % len(SHAPES)]


def verb_motion(verb_class: int, verb_angles: Mapping[int, float] | None = None) -> tuple[float, str]:
    """(direction in radians, motion kind) of a verb: class % 8 eighths of a turn, or ``verb_angles[verb]``
    degrees where given (a dataset of a few verbs can spread them a quarter turn apart)."""
    angle = (verb_class % 8) * math.pi / 4
    if verb_angles and verb_class in verb_angles:
        angle = math.radians(float(verb_angles[verb_class]))
    return angle, MOTIONS[(verb_class // 8) % len(MOTIONS)]


def _check_path(path: str) -> None:
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")


def object_offset(verb_class: int, progress: float, path_len: float, path: str = "through",
                  verb_angles: Mapping[int, float] | None = None) -> tuple[float, float]:
    """(dy, dx) of the object from the frame centre at clip progress in [0, 1] (``path``: see PATHS)."""
    _check_path(path)
    angle, motion = verb_motion(verb_class, verb_angles)
    if motion == "linear":
        along, across = progress, 0.0
    elif motion == "back_and_forth":
        along, across = 1.0 - abs(2.0 * progress - 1.0), 0.0
    else:
        along, across = progress, 0.25 * math.sin(4.0 * math.pi * progress)
    # "through" runs along [-1/2, 1/2] of the path, "outward" along [0, 1/2] (from the centre to the edge),
    # "quadrant" along [1/4, 1/2] (the outer half of "outward").
    along = {"through": along - 0.5, "outward": 0.5 * along, "quadrant": 0.25 + 0.25 * along}[path]
    ux, uy = math.cos(angle), -math.sin(angle)    # image y grows downwards
    return (along * uy + across * ux) * path_len, (along * ux - across * uy) * path_len


def background_texture(seed: int, size: int) -> np.ndarray:
    """Static, smooth, seeded noise (upsampled 8x8 grid + fine noise) in the mid-grey range."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(50, 150, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), np.int16)
    fine = rng.integers(-12, 13, (size, size, 3))
    return np.clip(smooth + fine, 0, 255).astype(np.uint8)


def _timestamp(value, field: str, row: dict) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", value.strip())
        if m:
            return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"row {row.get('id', row.get('narration_id', '?'))}: field {field!r}={value!r} is not "
                     f"seconds or hh:mm:ss.xx")


def row_times(row: dict) -> tuple[float, float]:
    """(start, stop) seconds of an annotation row (JSONL 'start_timestamp' or CSV-style 'start'/'stop')."""
    for a, b in (("start_timestamp", "stop_timestamp"), ("start", "stop"), ("start_sec", "stop_sec")):
        if a in row and b in row:
            return _timestamp(row[a], a, row), _timestamp(row[b], b, row)
    raise ValueError(f"row {row.get('id', row.get('narration_id', '?'))}: needs start_timestamp/stop_timestamp "
                     f"(or start/stop) fields, has {sorted(row)}")


class ClassPatternRenderer:
    """Renders the frames of one synthetic video from its annotation rows."""

    def __init__(self, rows: Sequence[dict], fps: float, size: int = 64, seed: int = 0, object_frac: float = 0.25,
                 path: str = "through", verb_angles: Mapping[int, float] | None = None):
        _check_path(path)
        self.fps, self.size, self.path = fps, size, path
        self.verb_angles = dict(verb_angles or {})
        self.background = background_texture(seed, size)
        self.side = max(4, int(size * object_frac))
        self.path_len = size - self.side - 4
        self.clips = []
        for row in rows:
            start, stop = row_times(row)
            colour, shape = noun_appearance(int(row["noun_class"]))
            self.clips.append((start, stop, int(row["verb_class"]), colour, _shape_mask(shape, self.side)))

    def __call__(self, g: int) -> np.ndarray:
        t = g / self.fps
        img = self.background.copy()
        for start, stop, verb, colour, mask in self.clips:
            if not start <= t <= stop:
                continue
            progress = 0.5 if stop <= start else (t - start) / (stop - start)
            dy, dx = object_offset(verb, progress, self.path_len, self.path, self.verb_angles)
            y = int(round(self.size / 2 + dy - self.side / 2))
            x = int(round(self.size / 2 + dx - self.side / 2))
            y0, x0 = max(y, 0), max(x, 0)
            y1, x1 = min(y + self.side, self.size), min(x + self.side, self.size)
            if y1 <= y0 or x1 <= x0:
                continue
            region = img[y0:y1, x0:x1]
            region[mask[y0 - y:y1 - y, x0 - x:x1 - x]] = colour
        return img


def make_synthetic_dataset(rows: Sequence[dict], root: str, layout: str = "original", fps: float = 30.0,
                           size: int = 64, chunk_len: int = 15, seed: int = 0, compact: bool = False,
                           gap: float = 0.5, max_clip_seconds: float | None = None, tail: float = 1.0,
                           ext: str = "MP4", crf: int = 18, path: str = "through",
                           verb_angles: Mapping[int, float] | None = None) -> dict:
    """Write one class-pattern video per video_id covering all its rows; returns a summary.

    ``compact=True`` re-times each video's rows back to back (``gap`` seconds apart, each at most
    ``max_clip_seconds`` long) so that rows from late in a long EK100 video do not force writing
    the whole video; the returned ``rows`` carry the timestamps actually used (in both the
    'start_timestamp'/'stop_timestamp' and, when present in the input, 'start'/'stop' fields).
    ``path``: the object's path (PATHS). ``verb_angles``: {verb class: degrees} of the motion direction, for the
    verbs that should not take the default eighth of a turn of their class (``verb_motion``).
    """
    if layout not in VIDEO_DIR_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {VIDEO_DIR_LAYOUTS}")
    _check_path(path)
    by_video: dict[str, list[dict]] = {}
    all_rows = []
    for i, row in enumerate(rows):
        for field in ("video_id", "verb_class", "noun_class"):
            if field not in row:
                raise ValueError(f"row {i} ({row.get('id', '?')}): missing field {field!r}")
        start, stop = row_times(row)
        if stop < start:
            raise ValueError(f"row {i} ({row.get('id', '?')}): stop {stop} is before start {start}")
        out = dict(row)
        out["start_timestamp"], out["stop_timestamp"] = start, stop
        out.setdefault("participant_id", participant_of(row["video_id"]))
        by_video.setdefault(row["video_id"], []).append(out)
        all_rows.append(out)

    summary = {"root": root, "layout": layout, "fps": fps, "size": size, "chunk_len": chunk_len, "path": path,
               "videos": {}, "rows": []}
    for v_index, (video_id, vrows) in enumerate(sorted(by_video.items())):
        if compact:
            t = gap
            for r in sorted(vrows, key=lambda r: (r["start_timestamp"], r["stop_timestamp"])):
                dur = r["stop_timestamp"] - r["start_timestamp"]
                if max_clip_seconds is not None:
                    dur = min(dur, max_clip_seconds)
                r["start_timestamp"], r["stop_timestamp"] = round(t, 3), round(t + dur, 3)
                t += dur + gap
        for r in vrows:
            if "start" in r and "stop" in r:
                r["start"], r["stop"] = r["start_timestamp"], r["stop_timestamp"]
        end = max(r["stop_timestamp"] for r in vrows) + tail
        num_frames = int(math.ceil(end * fps))
        renderer = ClassPatternRenderer(vrows, fps, size, seed=seed * 100003 + v_index, path=path,
                                        verb_angles=verb_angles)
        paths = write_video(renderer, num_frames, root, layout, video_id, fps, chunk_len, ext,
                            vrows[0]["participant_id"], crf)
        summary["videos"][video_id] = {"num_frames": num_frames, "duration": num_frames / fps,
                                       "num_rows": len(vrows), "num_files": len(paths)}
    summary["rows"] = all_rows   # input order, with the timestamps actually drawn
    return summary


# ----------------------------------------------------------------------------- CLI: synthetic EK100 subset

EK100_HEADER_PREFIX = ("narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                       "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                       "noun_class")
CLASS_CSVS = ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes_v2.csv")


def _hms(seconds: float) -> str:
    cs = int(round(seconds * 100))
    return f"{cs // 360000:02d}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def synthesize_from_csv(csv_path: str, out_dir: str, layout: str = "original", max_rows: int | None = 32,
                        video_ids: Sequence[str] | None = None, fps: float = 30.0, size: int = 64,
                        chunk_len: int = 15, seed: int = 0, max_clip_seconds: float | None = 4.0,
                        copy_class_csvs: bool = True, path: str = "through") -> dict:
    """Synthetic videos for (a subset of) an EK100 segment CSV, plus that CSV re-timed to match them.

    Writes ``out_dir/videos/`` (``layout``), ``out_dir/annotations/<csv name>`` (same columns; timestamps and
    frames rewritten to the compact timeline the videos use) and, with ``copy_class_csvs``, the verb/noun class
    CSVs found next to ``csv_path`` -- i.e. a ready ``manual_dir`` for the ek100_mqa TFDS builder and input for
    data_prep.make_mqa.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"annotation file not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None or tuple(header[:13]) != EK100_HEADER_PREFIX:
                raise AnnotationError(f"{csv_path}: line 1: expected an EK100 segment CSV header starting with "
                                      f"{','.join(EK100_HEADER_PREFIX)}, got {header}")
            wanted = set(video_ids) if video_ids else None
            lines = []
            for line in reader:
                if len(line) < 13:
                    raise AnnotationError(f"{csv_path}: line {reader.line_num}: expected 15 fields, got {len(line)}")
                if wanted is not None and line[2] not in wanted:
                    continue
                lines.append(line)
                if max_rows is not None and len(lines) >= max_rows:
                    break
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{csv_path}: line {reader.line_num + 1}: not UTF-8 text ({e.reason}); EK100 CSVs "
                                  "are UTF-8") from None
    if not lines:
        raise AnnotationError(f"{csv_path}: no rows selected (video_ids={video_ids})")
    rows = []
    for n, line in enumerate(lines, start=2):
        try:
            rows.append({"id": line[0], "participant_id": line[1], "video_id": line[2], "start": line[4],
                         "stop": line[5], "verb_class": int(line[10]), "noun_class": int(line[12])})
        except (IndexError, ValueError):
            raise AnnotationError(f"{csv_path}: selected row {n - 1} ({line[:1]}): malformed verb/noun class") from None
    summary = make_synthetic_dataset(rows, os.path.join(out_dir, "videos"), layout, fps=fps, size=size,
                                     chunk_len=chunk_len, seed=seed, compact=True,
                                     max_clip_seconds=max_clip_seconds, path=path)
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    with open(os.path.join(ann_dir, os.path.basename(csv_path)), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for line, row in zip(lines, summary["rows"]):
            start, stop = row["start_timestamp"], row["stop_timestamp"]
            line = list(line)
            line[3], line[4], line[5] = _hms(start), _hms(start), _hms(stop)
            line[6], line[7] = str(int(round(start * fps)) + 1), str(int(round(stop * fps)) + 1)
            writer.writerow(line)
    if copy_class_csvs:
        for name in CLASS_CSVS:
            src = os.path.join(os.path.dirname(os.path.abspath(csv_path)), name)
            if os.path.isfile(src):
                shutil.copy(src, os.path.join(ann_dir, name))
    with open(os.path.join(out_dir, "synthetic_summary.json"), "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "rows"} | {"num_rows": len(rows),
                                                                       "source_csv": os.path.basename(csv_path)},
                  f, indent=1)
    return summary


def main(argv=None) -> int:
    p = argparsing.ArgumentParser(prog="python -m data_prep.synthetic_videos",
                                description="Write synthetic EK100-style videos for rows of an EK100 CSV and the "
                                            "CSV re-timed to match (a manual_dir for the ek100_mqa builder).")
    p.add_argument("--csv", required=True, help="EK100 segment CSV, e.g. EPIC_100_validation.csv")
    p.add_argument("--out", required=True, help="output dir for the videos")
    p.add_argument("--layout", default="original", choices=list(VIDEO_DIR_LAYOUTS), help="video layout to write")
    p.add_argument("--max_rows", type=int, default=32, help="CSV rows to make clips for")
    p.add_argument("--video_ids", default="", help="comma-separated video ids to keep (default: all)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the videos")
    p.add_argument("--size", type=int, default=64, help="square frame side (pixels)")
    p.add_argument("--chunk_len", type=int, default=15, help="seconds per chunk (chunks layout)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--max_clip_seconds", type=float, default=4.0, help="longest synthetic clip (s)")
    p.add_argument("--path", default="through", choices=list(PATHS), help="the object's path (PATHS)")
    args = p.parse_args(argv)
    summary = synthesize_from_csv(args.csv, args.out, args.layout, args.max_rows,
                                  [v for v in args.video_ids.split(",") if v] or None, args.fps, args.size,
                                  args.chunk_len, args.seed, args.max_clip_seconds, path=args.path)
    print(f"wrote {len(summary['videos'])} videos ({args.layout}) for {len(summary['rows'])} rows to {args.out}")
    return 0


# Library errors that mean bad input (each names its file).
USER_ERRORS = (AnnotationError, FileNotFoundError)

if __name__ == "__main__":
    sys.exit(cli.run(main, user_errors=USER_ERRORS))
