"""Video files from RGB frames in the three directory layouts the reader supports (llavaction_jax.data.video):
H.264 MP4s through PyAV/libx264, or one JPEG per frame. Used by the synthetic videos and the lmms-eval export's
clip cutting."""
from __future__ import annotations

import fractions
import math
import os
from typing import Callable, Iterable

import av
import numpy as np
from PIL import Image

from llavaction_jax.data.video import VIDEO_DIR_LAYOUTS, participant_of


def _rate(fps: float) -> fractions.Fraction:
    return fractions.Fraction(str(fps)).limit_denominator(100000)


def write_mp4(path: str, frames: Iterable[np.ndarray], fps: float, crf: int = 18, gop_seconds: float = 1.0,
              preset: str = "veryfast") -> int:
    """Encode RGB uint8 frames (even H and W) to an H.264 MP4 with a keyframe every ``gop_seconds``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    n = 0
    with av.open(path, "w") as c:
        s = None
        for img in frames:
            if s is None:
                s = c.add_stream("libx264", rate=_rate(fps))
                s.height, s.width = img.shape[:2]
                s.pix_fmt = "yuv420p"
                s.options = {"g": str(max(1, int(round(gop_seconds * fps)))), "crf": str(crf), "preset": preset}
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
            n += 1
        if s is None:
            raise ValueError(f"{path}: no frames to write")
        for p in s.encode():
            c.mux(p)
    return n


def write_video(frame_fn: Callable[[int], np.ndarray], num_frames: int, root: str, layout: str, video_id: str,
                fps: float, chunk_len: int = 15, ext: str = "MP4", participant_id: str | None = None,
                crf: int = 18, jpeg_quality: int = 95) -> list[str]:
    """Write global frames ``frame_fn(0..num_frames-1)`` of one video in ``layout``; returns written paths.

    Chunk c (named ``<c>.MP4``, c a multiple of chunk_len) holds the frames whose time g/fps lies in
    [c, c + chunk_len), which is how llavaction_jax.data.video maps frames to chunks.
    """
    if layout not in VIDEO_DIR_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {VIDEO_DIR_LAYOUTS}")
    if num_frames <= 0:
        raise ValueError(f"{video_id}: num_frames must be positive, got {num_frames}")
    pid = participant_id or participant_of(video_id)
    if layout == "original":
        path = os.path.join(root, pid, "videos", f"{video_id}.{ext}")
        write_mp4(path, (frame_fn(g) for g in range(num_frames)), fps, crf)
        return [path]
    if layout == "chunks":
        paths = []
        chunk = 0
        while True:
            first = math.ceil(chunk * fps - 1e-9)
            last = min(math.ceil((chunk + chunk_len) * fps - 1e-9), num_frames)
            if first >= num_frames:
                break
            path = os.path.join(root, pid, f"{video_id}.{ext}", f"{chunk}.{ext}")
            write_mp4(path, (frame_fn(g) for g in range(first, last)), fps, crf)
            paths.append(path)
            chunk += chunk_len
        return paths
    frames_dir = os.path.join(root, pid, video_id)
    os.makedirs(frames_dir, exist_ok=True)
    paths = []
    for g in range(num_frames):
        path = os.path.join(frames_dir, f"frame_{g + 1:010d}.jpg")
        Image.fromarray(frame_fn(g)).save(path, format="JPEG", quality=jpeg_quality)
        paths.append(path)
    return paths
