"""Read EK100 clips as uniformly sampled, resized RGB frames (PyAV / PIL; no JAX).

Three on-disk layouts are supported:

* ``original``: the EPIC-KITCHENS originals, ``<root>/P01/videos/P01_01.MP4``.
* ``chunks``:   the AVION re-encoding in fixed-length chunks,
                ``<root>/P01/P01_01.MP4/0.MP4``, ``15.MP4``, ... (chunk length configurable, default 15 s).
                A clip may span several chunks.
* ``frames``:   extracted JPEG frames, ``<root>/P01/P01_01/frame_0000000001.jpg`` (1-based frame numbers).

Frame sampling follows the reference (LLaVAction ``utils.get_frame_ids``): the clip
``[round(start*fps), round(stop*fps)]`` is cut into N equal segments and the midpoint of each
segment, truncated to an int, is the frame id (0-based, counted from the start of the video).
Optional jitter shifts each id by U(-0.5, 0.5) * (end - start - 1) / N (seeded).

End-of-video rule (the reference silently clips ``stop`` to the last frame's time; we do the same
but only within a tolerance, so that wrong annotations or truncated videos are caught):
  * ``stop < start``                                   -> VideoError
  * ``start`` after the last frame's time               -> VideoError
  * last_frame_time < stop <= duration + end_tolerance  -> stop is clipped to the last frame's time
  * ``stop > duration + end_tolerance``                 -> VideoError
  where ``duration = num_frames / fps`` and ``last_frame_time = (num_frames - 1) / fps``.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
import re
from typing import Iterable, Sequence

import av
import numpy as np
from PIL import Image

VIDEO_DIR_LAYOUTS = ("original", "chunks", "frames")

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

_FRAME_FILE_RE = re.compile(r"^frame_(\d+)\.jpg$")


class VideoError(Exception):
    """A clip could not be read. ``path`` names the file/dir, ``reason`` says what was wrong."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# ----------------------------------------------------------------------------- frame ids

def segment_frame_ids(start_frame: int, end_frame: int, num_segments: int, jitter: bool = False,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Midpoints of ``num_segments`` equal segments of [start_frame, end_frame], as int64.

    Equals the reference ``np.convolve(np.linspace(s, e, n + 1), [0.5, 0.5], 'valid').astype(int)``.
    """
    if num_segments <= 0:
        return np.zeros((0,), np.int64)
    mids = np.convolve(np.linspace(start_frame, end_frame, num_segments + 1), [0.5, 0.5], "valid")
    if jitter:
        if rng is None:
            raise ValueError("segment_frame_ids: jitter=True needs a seeded rng (np.random.Generator)")
        seg_size = float(end_frame - start_frame - 1) / num_segments
        mids = mids + (rng.random(num_segments) - 0.5) * seg_size
        # Jitter must not leave the clip (the reference can go one frame below start for tiny clips).
        mids = np.clip(mids, start_frame, max(end_frame, start_frame))
    return mids.astype(np.int64)


def load_video_fps(csv_path: str) -> dict[str, float]:
    """video_id -> fps from EPIC_100_video_info.csv (columns video_id,duration,fps,resolution)."""
    table = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "video_id" not in reader.fieldnames or "fps" not in reader.fieldnames:
            raise ValueError(f"{csv_path}: expected a header with 'video_id' and 'fps' columns, "
                             f"got {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            try:
                table[row["video_id"]] = float(row["fps"])
            except (TypeError, ValueError):
                raise ValueError(f"{csv_path}:{line_no}: fps {row.get('fps')!r} is not a number") from None
    return table


def participant_of(video_id: str) -> str:
    """EK100 video ids are '<participant>_<index>' (e.g. P01_01 -> P01)."""
    return video_id.split("_")[0]


def detect_layout(root: str, ext: str = "MP4") -> str:
    """Guess the layout of a video root from its first participant folder that holds videos."""
    if not os.path.isdir(root):
        raise VideoError(root, "video root directory not found")
    for pid in sorted(os.listdir(root)):
        pdir = os.path.join(root, pid)
        if not os.path.isdir(pdir):
            continue
        if os.path.isdir(os.path.join(pdir, "videos")):
            return "original"
        for name in sorted(os.listdir(pdir)):
            path = os.path.join(pdir, name)
            if not os.path.isdir(path):
                continue
            if name.endswith(f".{ext}"):
                return "chunks"
            if any(_FRAME_FILE_RE.match(f) for f in os.listdir(path)):
                return "frames"
    raise VideoError(root, f"cannot detect the layout: expected <pid>/videos/<vid>.{ext}, "
                           f"<pid>/<vid>.{ext}/<sec>.{ext} or <pid>/<vid>/frame_XXXXXXXXXX.jpg under the root")


# ----------------------------------------------------------------------------- image helpers

def resize_frame(img: np.ndarray, size: int | None, interp: str = "bicubic") -> np.ndarray:
    """Squash (no aspect preservation, no crop) an HxWx3 uint8 frame to size x size, like SigLIP."""
    if size is None or (img.shape[0] == size and img.shape[1] == size):
        return np.ascontiguousarray(img)
    if interp not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interp!r}; expected one of {sorted(INTERPOLATIONS)}")
    return np.asarray(Image.fromarray(img).resize((size, size), INTERPOLATIONS[interp]))


# ----------------------------------------------------------------------------- container decoding

@dataclasses.dataclass(frozen=True)
class ContainerInfo:
    path: str
    fps: float | None       # container average rate (None when the container has none)
    num_frames: int          # frames according to the container metadata (0 when unknown)


def probe_container(path: str) -> ContainerInfo:
    """fps and frame count from the container header (cheap: no decoding)."""
    if not os.path.isfile(path):
        raise VideoError(path, "video file not found")
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoError(path, "container has no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate) if s.average_rate else None
            n = int(s.frames or 0)
            if n == 0 and s.duration is not None and fps:
                n = int(round(float(s.duration * s.time_base) * fps))
            return ContainerInfo(path, fps, n)
    except av.error.FFmpegError as e:
        raise VideoError(path, f"cannot open video (corrupt or not a video): {e}") from None


def decode_container_frames(path: str, indices: Sequence[int], fps: float,
                            seek_gap: int = 64) -> dict[int, np.ndarray]:
    """Decode the given 0-based frame indices of one container -> {index: HxWx3 uint8 RGB}.

    Seeks to the keyframe preceding the first wanted frame and decodes forward; when the next wanted
    frame is more than ``seek_gap`` frames ahead it seeks again (cheaper than decoding everything in
    between), otherwise it keeps decoding sequentially. A frame's index is its presentation time * fps.
    """
    wanted = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    if not os.path.isfile(path):
        raise VideoError(path, "video file not found")
    last_seen = -1
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoError(path, "container has no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            tb = float(s.time_base)
            t0 = s.start_time or 0
            k = 0
            from_start = False
            while k < len(wanted):
                target = wanted[k]
                seek_ts = t0 if (from_start or target == 0) else t0 + int((target / fps) / tb)
                c.seek(seek_ts, stream=s, backward=True, any_frame=False)
                first = True
                outcome = "eof"
                for frame in c.decode(s):
                    if frame.pts is None:
                        continue
                    idx = int(round((frame.pts - t0) * tb * fps))
                    if first and idx > target and seek_ts != t0:
                        # The demuxer landed after the target (no usable keyframe index): decode from the start.
                        from_start, outcome = True, "retry"
                        break
                    first = False
                    last_seen = max(last_seen, idx)
                    if idx < wanted[k]:
                        continue
                    img = None
                    # A frame serves every wanted index up to its own (covers dropped/duplicated pts).
                    while k < len(wanted) and wanted[k] <= idx:
                        if img is None:
                            img = frame.to_ndarray(format="rgb24")
                        out[wanted[k]] = img
                        k += 1
                    if k >= len(wanted):
                        outcome = "done"
                        break
                    if wanted[k] - idx > seek_gap:
                        from_start, outcome = False, "seek"
                        break
                if outcome in ("eof", "done"):
                    break
    except av.error.FFmpegError as e:
        raise VideoError(path, f"decoding failed (corrupt or truncated video): {e}") from None
    missing = [i for i in wanted if i not in out]
    if missing:
        raise VideoError(path, f"video is truncated or corrupt: frame {missing[0]} was requested but decoding "
                               f"ended at frame {last_seen} ({len(missing)} of {len(wanted)} frames missing)")
    return out


# ----------------------------------------------------------------------------- reader

class VideoReader:
    """Reads clips from one video root in one layout; caches per-video metadata.

    Args:
      root: dataset root directory.
      layout: "original" | "chunks" | "frames".
      size: output side (square squash resize); None keeps the native resolution.
      interp: PIL interpolation name (bicubic, bilinear, nearest, lanczos, box).
      fps: force this fps for every video (overrides container / csv).
      fps_table: video_id -> fps (e.g. from EPIC_100_video_info.csv); used for the frames layout and as a
        fallback when a container reports no rate. Note AVION chunks are re-encoded (30 fps), so for the
        chunk layout the container rate is preferred over the table.
      chunk_len: chunk length in seconds (chunks layout).
      ext: video file extension ("MP4").
      end_tolerance: seconds past the end of the video that ``stop`` may be before it is an error.
    """

    def __init__(self, root: str, layout: str = "original", size: int | None = 384, interp: str = "bicubic",
                 fps: float | None = None, fps_table: dict[str, float] | None = None, chunk_len: int = 15,
                 ext: str = "MP4", end_tolerance: float = 1.0, seek_gap: int = 64):
        if layout not in VIDEO_DIR_LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {VIDEO_DIR_LAYOUTS}")
        if interp not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interp!r}; expected one of {sorted(INTERPOLATIONS)}")
        if chunk_len <= 0:
            raise ValueError(f"chunk_len must be positive, got {chunk_len}")
        self.root, self.layout, self.size, self.interp = root, layout, size, interp
        self.fps, self.fps_table = fps, dict(fps_table or {})
        self.chunk_len, self.ext, self.end_tolerance, self.seek_gap = chunk_len, ext, end_tolerance, seek_gap
        self._meta_cache: dict[str, tuple[float, int]] = {}

    # -- paths

    def video_path(self, video_id: str, participant_id: str | None = None) -> str:
        pid = participant_id or participant_of(video_id)
        if self.layout == "original":
            return os.path.join(self.root, pid, "videos", f"{video_id}.{self.ext}")
        if self.layout == "chunks":
            return os.path.join(self.root, pid, f"{video_id}.{self.ext}")
        return os.path.join(self.root, pid, video_id)

    def chunk_path(self, video_id: str, chunk_start_sec: int, participant_id: str | None = None) -> str:
        return os.path.join(self.video_path(video_id, participant_id), f"{chunk_start_sec}.{self.ext}")

    @staticmethod
    def frame_file(frames_dir: str, frame_id: int) -> str:
        return os.path.join(frames_dir, f"frame_{frame_id + 1:010d}.jpg")

    # -- metadata

    def _table_fps(self, video_id: str) -> float | None:
        return self.fps if self.fps is not None else self.fps_table.get(video_id)

    def metadata(self, video_id: str, participant_id: str | None = None) -> tuple[float, int]:
        """(fps, total number of frames) of a video, for any layout."""
        if video_id in self._meta_cache:
            return self._meta_cache[video_id]
        path = self.video_path(video_id, participant_id)
        if self.layout == "original":
            info = probe_container(path)
            fps = self.fps or info.fps or self.fps_table.get(video_id)
            if not fps:
                raise VideoError(path, "no fps: container has no frame rate and no fps was given")
            n = info.num_frames
        elif self.layout == "chunks":
            if not os.path.isdir(path):
                raise VideoError(path, "chunk directory not found")
            starts = sorted(int(m.group(1)) for m in (re.match(rf"^(\d+)\.{re.escape(self.ext)}$", f)
                                                      for f in os.listdir(path)) if m)
            if not starts:
                raise VideoError(path, f"no chunk files '<sec>.{self.ext}' in the chunk directory")
            expected = list(range(0, starts[-1] + 1, self.chunk_len))
            if starts != expected:
                gaps = sorted(set(expected) - set(starts))
                extra = sorted(set(starts) - set(expected))
                raise VideoError(path, f"chunks are not contiguous multiples of chunk_len={self.chunk_len}: "
                                       f"missing {gaps[:5]}, unexpected {extra[:5]}")
            first = probe_container(os.path.join(path, f"0.{self.ext}"))
            fps = self.fps or first.fps or self.fps_table.get(video_id)
            if not fps:
                raise VideoError(path, "no fps: chunk 0 has no frame rate and no fps was given")
            last = probe_container(os.path.join(path, f"{starts[-1]}.{self.ext}"))
            # The last chunk's first frame is the first frame whose time g/fps >= its start second.
            n = int(np.ceil(starts[-1] * fps - 1e-9)) + last.num_frames
        else:
            if not os.path.isdir(path):
                raise VideoError(path, "frame directory not found")
            fps = self._table_fps(video_id)
            if not fps:
                raise VideoError(path, "frames layout needs an fps (pass fps= or an EPIC_100_video_info.csv table)")
            numbers = [int(m.group(1)) for m in (_FRAME_FILE_RE.match(f) for f in os.listdir(path)) if m]
            if not numbers:
                raise VideoError(path, "no frame_XXXXXXXXXX.jpg files in the frame directory")
            n = max(numbers)   # 1-based numbering: the highest number is the frame count
        if n <= 0:
            raise VideoError(path, "video has no frames")
        self._meta_cache[video_id] = (float(fps), int(n))
        return self._meta_cache[video_id]

    # -- sampling

    def frame_ids(self, video_id: str, start: float, stop: float, num_frames: int, jitter: bool = False,
                  rng: np.random.Generator | None = None,
                  participant_id: str | None = None) -> tuple[np.ndarray, float]:
        """Validated global 0-based frame ids for a clip (see the module docstring for the end rule)."""
        path = self.video_path(video_id, participant_id)
        if not (np.isfinite(start) and np.isfinite(stop)):
            raise VideoError(path, f"start/stop must be finite numbers, got start={start} stop={stop}")
        if stop < start:
            raise VideoError(path, f"stop_timestamp {stop:.3f} is before start_timestamp {start:.3f}")
        if start < 0:
            raise VideoError(path, f"start_timestamp {start:.3f} is negative")
        fps, total = self.metadata(video_id, participant_id)
        duration = total / fps
        last_time = (total - 1) / fps
        if stop > duration + self.end_tolerance:
            raise VideoError(path, f"stop_timestamp {stop:.3f}s is past the end of the video ({duration:.3f}s, "
                                   f"{total} frames at {fps:.3f} fps; tolerance {self.end_tolerance}s)")
        if start > last_time:
            raise VideoError(path, f"start_timestamp {start:.3f}s is after the last frame ({last_time:.3f}s)")
        stop = min(stop, last_time)
        ids = segment_frame_ids(int(round(start * fps)), int(round(stop * fps)), num_frames, jitter, rng)
        return np.clip(ids, 0, total - 1), fps

    def read_clip(self, video_id: str, start: float, stop: float, num_frames: int, jitter: bool = False,
                  seed: int | Sequence[int] | None = None,
                  participant_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (frames uint8 [N, S, S, 3], frame_times float64 [N] in seconds from the video start)."""
        if num_frames == 0:
            side = self.size or 0
            return np.zeros((0, side, side, 3), np.uint8), np.zeros((0,), np.float64)
        rng = np.random.default_rng(seed) if jitter else None
        ids, fps = self.frame_ids(video_id, start, stop, num_frames, jitter, rng, participant_id)
        images = self._decode(video_id, ids, fps, participant_id)
        frames = np.stack([resize_frame(images[int(i)], self.size, self.interp) for i in ids])
        return frames, ids.astype(np.float64) / fps

    def _decode(self, video_id: str, ids: np.ndarray, fps: float,
                participant_id: str | None) -> dict[int, np.ndarray]:
        if self.layout == "original":
            return decode_container_frames(self.video_path(video_id, participant_id), ids, fps, self.seek_gap)
        if self.layout == "chunks":
            # Chunk c starts at c*chunk_len seconds; a frame's time decides its chunk and in-chunk index.
            by_chunk: dict[int, list[tuple[int, int]]] = {}
            for g in sorted(set(int(i) for i in ids)):
                t = g / fps
                chunk = int(np.floor(t / self.chunk_len + 1e-9)) * self.chunk_len
                rel = int(round((t - chunk) * fps))
                by_chunk.setdefault(chunk, []).append((g, rel))
            out = {}
            for chunk, pairs in sorted(by_chunk.items()):
                decoded = decode_container_frames(self.chunk_path(video_id, chunk, participant_id),
                                                  [r for _, r in pairs], fps, self.seek_gap)
                for g, rel in pairs:
                    out[g] = decoded[rel]
            return out
        frames_dir = self.video_path(video_id, participant_id)
        out = {}
        for g in sorted(set(int(i) for i in ids)):
            path = self.frame_file(frames_dir, g)
            if not os.path.isfile(path):
                raise VideoError(path, f"frame file for frame {g} (1-based number {g + 1}) not found")
            try:
                with Image.open(path) as im:
                    out[g] = np.asarray(im.convert("RGB"))
            except (OSError, SyntaxError) as e:
                raise VideoError(path, f"cannot decode JPEG frame: {e}") from None
        return out


@functools.lru_cache(maxsize=8)
def _cached_reader(root, layout, size, interp, fps, chunk_len, ext, end_tolerance, fps_items) -> VideoReader:
    return VideoReader(root, layout, size, interp, fps, dict(fps_items) if fps_items else None, chunk_len, ext,
                       end_tolerance)


def read_clip(root: str, layout: str, video_id: str, start: float, stop: float, num_frames: int,
              size: int | None = 384, interp: str = "bicubic", fps: float | None = None,
              fps_table: dict[str, float] | None = None, chunk_len: int = 15, ext: str = "MP4",
              end_tolerance: float = 1.0, jitter: bool = False, seed: int | Iterable[int] | None = None,
              participant_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Functional form of :meth:`VideoReader.read_clip` -> (frames uint8 [N,S,S,3], frame_times [N])."""
    fps_items = tuple(sorted(fps_table.items())) if fps_table else None
    reader = _cached_reader(root, layout, size, interp, fps, chunk_len, ext, end_tolerance, fps_items)
    return reader.read_clip(video_id, start, stop, num_frames, jitter, seed, participant_id)
