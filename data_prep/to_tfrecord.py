"""Convert MQA / instruction JSONL samples + videos into sharded TFRecords (resumable, parallel; no JAX).

    python -m data_prep.to_tfrecord --samples X.jsonl --video_root DIR --layout {original,chunks,frames} \
        --num_frames 16 --size 384 --num_shards 8 --workers 4 --out DIR [--prefix train] [--fps_csv CSV]

* Sample i (i-th non-blank line) goes to shard i % num_shards; order is preserved within a shard.
* Each shard is one task for a worker process. It is written to ``<shard>.tmp-<pid>`` and moved into place
  with os.replace, then a done marker ``.<shard>.done.json`` (config hash, sample hash, file sha256,
  its failures) is written the same way. A rerun verifies the marker against the shard file and the
  current config/samples and skips shards that match; anything else (no marker, mismatch, leftover
  temp files from a killed run) is redone.
* A sample whose video is missing/corrupt/out of range (or whose JSON line is invalid) is skipped and
  listed in ``failures.jsonl`` with its id and reason; it never stops the job.
  ``manifest.json`` counts records and skips per shard; ``num_skipped == len(failures.jsonl)``.
* Samples without a ``video_id`` (text-only QA) are written with 0 frames.
* A run that writes no record at all (every sample skipped) is an error (exit 2), its manifest says
  ``complete: false``; a --video_root that is not a directory is an error before anything is written.
* With --workers > 1 the worker and manager processes die with the CLI (Linux parent-death signal), and a
  SIGTERM kills them before the CLI exits (143): no process goes on writing into --out.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import errno
from concurrent.futures.process import BrokenProcessPool
import glob
import hashlib
import json
import multiprocessing
from multiprocessing.managers import SyncManager
import os
import signal
import sys
import threading
import time
import types
from collections import OrderedDict

from tqdm import tqdm

from llavaction_jax import argparsing, cli
from llavaction_jax.cli import UserError
from llavaction_jax.data import atomic
from llavaction_jax.data.records import encode_example, encode_jpeg
from llavaction_jax.data.tfrecord import RecordWriter
from llavaction_jax.data.video import INTERPOLATIONS, VIDEO_DIR_LAYOUTS, VideoReader, load_video_fps


MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
# Per worker: the JPEG frames of the clips read last, up to this many bytes. Several questions of one clip (MQA
# draws, instruction tasks) then decode its video once; without jitter the frames are the same for each of them.
CLIP_CACHE_BYTES = 256 * 2 ** 20


# ----------------------------------------------------------------------------- helpers

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shard_name(prefix: str, k: int, n: int) -> str:
    return f"{prefix}-{k:05d}-of-{n:05d}.tfrecord"


def _marker_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f".{name}.done.json")


def read_samples(path: str) -> tuple[list[tuple[int, dict]], list[dict], int]:
    """-> ([(index, sample)], failures for invalid lines, number of non-blank lines).

    ``index`` counts non-blank lines, so shard assignment does not depend on which lines are valid.
    """
    samples, failures, seen = [], [], {}
    index = 0
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            i, index = index, index + 1
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as e:
                failures.append({"index": i, "line": line_no, "id": None, "video_id": None, "shard": None,
                                 "error": "InvalidJSON", "reason": f"{path}:{line_no}: invalid JSON: {e}"})
                continue
            if not isinstance(sample, dict) or "id" not in sample:
                failures.append({"index": i, "line": line_no, "id": None, "video_id": None, "shard": None,
                                 "error": "InvalidSample",
                                 "reason": f"{path}:{line_no}: expected a JSON object with an 'id' field"})
                continue
            sid = str(sample["id"])
            if sid in seen:
                failures.append({"index": i, "line": line_no, "id": sid, "video_id": sample.get("video_id"),
                                 "shard": None, "error": "DuplicateId",
                                 "reason": f"{path}:{line_no}: duplicate id {sid!r} "
                                                          f"(first on line {seen[sid]})"})
                continue
            seen[sid] = line_no
            samples.append((i, sample))
    return samples, failures, index


# ----------------------------------------------------------------------------- worker side

_READERS: dict[str, object] = {}


class _ClipCache:
    """The JPEG frames of the clips read last, least recently used dropped first, at most CLIP_CACHE_BYTES."""

    def __init__(self):
        self._entries: OrderedDict = OrderedDict()   # key -> (jpegs, times, bytes)
        self._bytes = 0

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def get(self, key, read):
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][:2]
        jpegs, times = read()
        size = sum(len(j) for j in jpegs)
        if size <= CLIP_CACHE_BYTES:
            self._entries[key] = (jpegs, times, size)
            self._bytes += size
            while self._bytes > CLIP_CACHE_BYTES:
                self._bytes -= self._entries.popitem(last=False)[1][2]
        return jpegs, times


_CLIPS = _ClipCache()


def _reader(cfg: dict):
    """One VideoReader per worker process and config (keeps its per-video metadata cache across shards)."""
    key = json.dumps(cfg, sort_keys=True)
    if key not in _READERS:
        table = load_video_fps(cfg["fps_csv"]) if cfg.get("fps_csv") else None
        _READERS[key] = VideoReader(cfg["video_root"], cfg["layout"], cfg["size"], cfg["interp"], cfg.get("fps"),
                                    table, cfg["chunk_len"], cfg["ext"], cfg["end_tolerance"])
    return _READERS[key]


def _sample_float(sample: dict, field: str) -> float:
    if field not in sample or sample[field] is None:
        raise ValueError(f"sample {sample['id']!r}: has a video_id but no {field!r}")
    try:
        return float(sample[field])
    except (TypeError, ValueError):
        raise ValueError(f"sample {sample['id']!r}: {field}={sample[field]!r} is not a number") from None


def encode_sample(index: int, sample: dict, cfg: dict) -> bytes:
    """Read the sample's clip, JPEG its frames and serialise one tf.train.Example."""
    video_id = sample.get("video_id")
    if not video_id:
        return encode_example(sample, [], [])
    start = _sample_float(sample, "start_timestamp")
    stop = _sample_float(sample, "stop_timestamp")
    participant = sample.get("participant_id")
    if cfg["jitter"]:   # frame ids drawn per sample index: nothing to share
        jpegs, times = _read_jpegs(cfg, str(video_id), start, stop, participant, index)
    else:
        jpegs, times = _cached_jpegs(cfg, str(video_id), start, stop, participant)
    return encode_example(sample, jpegs, times)


def _read_jpegs(cfg: dict, video_id: str, start: float, stop: float, participant, index: int):
    frames, times = _reader(cfg).read_clip(video_id, start, stop, cfg["num_frames"], jitter=cfg["jitter"],
                                           seed=[cfg["seed"], index], participant_id=participant)
    return [encode_jpeg(f, cfg["jpeg_quality"]) for f in frames], [float(t) for t in times]


def _cached_jpegs(cfg: dict, video_id: str, start: float, stop: float, participant):
    key = (json.dumps(cfg, sort_keys=True), video_id, start, stop, participant)
    return _CLIPS.get(key, lambda: _read_jpegs(cfg, video_id, start, stop, participant, 0))


def convert_shard(task: dict, progress=None) -> dict:
    """Write one shard (whole or not at all: data/atomic.py) and its done marker; returns the marker dict.

    ``progress``: anything with ``put(n)`` (a manager queue across processes); told about every finished sample.
    """
    cfg, out_dir, name, k = task["cfg"], task["out_dir"], task["name"], task["shard"]
    path = os.path.join(out_dir, name)
    failures, count = [], 0
    t0 = time.perf_counter()
    with atomic.atomic_path(path) as tmp, RecordWriter(tmp) as writer:
        for index, sample in task["samples"]:
            try:
                record = encode_sample(index, sample, cfg)
            except Exception as e:   # noqa: BLE001 - any per-sample failure is reported, never fatal
                failures.append({"index": index, "id": str(sample.get("id")), "video_id": sample.get("video_id"),
                                 "shard": k, "error": type(e).__name__, "reason": str(e)})
            else:
                writer.write(record)
                count += 1
            if progress is not None:
                progress.put(1)
    marker = {"shard": k, "file": name, "num_records": count, "num_skipped": len(failures),
              "sha256": sha256_file(path), "config_hash": task["config_hash"],
              "samples_hash": task["samples_hash"], "failures": failures,
              # Worker-side time for this shard (excludes process start-up); not part of the manifest.
              "seconds": round(time.perf_counter() - t0, 4)}
    atomic.atomic_write(_marker_path(out_dir, name), json.dumps(marker, sort_keys=True))
    return marker


def _die_with_parent(parent_pid: int) -> None:
    """Process initializer: on Linux, the kernel sends SIGKILL to this process when its parent dies (even of
    SIGKILL), so a killed CLI leaves no worker or manager writing into --out. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:       # the parent died before prctl took effect
        os._exit(1)


def _kill_children() -> None:
    for child in multiprocessing.active_children():
        child.kill()
    for child in multiprocessing.active_children():
        child.join(5)


class Terminated(Exception):
    """SIGTERM reached the CLI."""


def _verified_marker(out_dir: str, name: str, config_hash: str, samples_hash: str) -> dict | None:
    """The shard's done marker if it matches the current job and the file on disk, else None."""
    mpath = _marker_path(out_dir, name)
    path = os.path.join(out_dir, name)
    if not (os.path.isfile(mpath) and os.path.isfile(path)):
        return None
    try:
        with open(mpath) as f:
            marker = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if marker.get("config_hash") != config_hash or marker.get("samples_hash") != samples_hash:
        return None
    if marker.get("sha256") != sha256_file(path):
        return None
    return marker


# ----------------------------------------------------------------------------- driver

def convert(samples: str, video_root: str, layout: str, out: str, num_frames: int = 16, size: int = 384,
            num_shards: int = 8, workers: int = 4, prefix: str = "train", fps_csv: str | None = None,
            fps: float | None = None, chunk_len: int = 15, ext: str = "MP4", interp: str = "bicubic",
            jpeg_quality: int = 95, jitter: bool = False, seed: int = 0, end_tolerance: float = 1.0,
            max_shards: int | None = None, progress: bool = True, summary: bool = True) -> dict:
    """Convert; returns the manifest dict (``complete`` is False when ``max_shards`` left shards pending)."""
    if layout not in VIDEO_DIR_LAYOUTS:
        raise UserError("unknown layout", f"--layout {layout!r}", f"one of {VIDEO_DIR_LAYOUTS}")
    if interp not in INTERPOLATIONS:
        raise UserError("unknown interpolation", f"--interp {interp!r}", f"one of {sorted(INTERPOLATIONS)}")
    if num_shards <= 0 or num_frames < 0 or (size is not None and size <= 0):
        raise UserError("bad sizes", f"--num_shards {num_shards} --num_frames {num_frames} --size {size}",
                        "num_shards > 0, num_frames >= 0, size > 0")
    if not os.path.isfile(samples):
        raise UserError("file not found", f"--samples {samples}", "a JSONL file of samples")
    if not os.path.isdir(video_root):
        raise UserError("not a directory", f"--video_root {video_root}", f"the root of the {layout!r} video layout")
    if fps_csv is not None and not os.path.isfile(fps_csv):
        raise UserError("file not found", f"--fps_csv {fps_csv}", "EPIC_100_video_info.csv")
    if layout == "frames" and fps is None and fps_csv is None:
        raise UserError("--layout frames needs --fps or --fps_csv", "--layout frames",
                        "a frame rate (JPEG frames carry none)")
    t_start = time.time()
    os.makedirs(out, exist_ok=True)

    cfg = {"video_root": os.path.abspath(video_root), "layout": layout, "num_frames": num_frames, "size": size,
           "interp": interp, "fps": fps, "fps_csv": os.path.abspath(fps_csv) if fps_csv else None,
           "chunk_len": chunk_len, "ext": ext, "jpeg_quality": jpeg_quality, "jitter": jitter, "seed": seed,
           "end_tolerance": end_tolerance}
    # The hash covers what changes record bytes (not the paths, so a moved dataset still resumes; the fps table
    # by content). Video files are assumed immutable: replace a video -> delete the affected shards' markers.
    hashed = {k: v for k, v in cfg.items() if k not in ("video_root", "fps_csv")}
    hashed["fps_csv_sha256"] = sha256_file(fps_csv) if fps_csv else None
    config_hash = _sha256_text(json.dumps(hashed, sort_keys=True))

    items, parse_failures, total_lines = read_samples(samples)
    per_shard: list[list[tuple[int, dict]]] = [[] for _ in range(num_shards)]
    for index, sample in items:
        per_shard[index % num_shards].append((index, sample))

    # Temp files of a killed run are never valid: remove them before anything else.
    for stale in glob.glob(os.path.join(out, f"{prefix}-*.tmp-*")) + glob.glob(os.path.join(out, f".{prefix}-*.tmp-*")):
        os.remove(stale)

    markers: dict[int, dict] = {}
    tasks = []
    for k in range(num_shards):
        name = shard_name(prefix, k, num_shards)
        samples_hash = _sha256_text("\n".join(json.dumps([i, s], sort_keys=True) for i, s in per_shard[k]))
        marker = _verified_marker(out, name, config_hash, samples_hash)
        if marker is not None:
            markers[k] = marker
        else:
            tasks.append({"cfg": cfg, "out_dir": out, "name": name, "shard": k, "samples": per_shard[k],
                          "config_hash": config_hash, "samples_hash": samples_hash})
    resumed = sorted(markers)
    pending = tasks[max_shards:] if max_shards is not None else []
    tasks = tasks[:max_shards] if max_shards is not None else tasks

    bar = tqdm(total=sum(len(t["samples"]) for t in tasks), unit="clip", desc=f"{prefix}",
               disable=not progress, file=sys.stderr)
    if workers <= 1:
        for task in tasks:
            marker = convert_shard(task, types.SimpleNamespace(put=bar.update))
            markers[marker["shard"]] = marker
    else:
        # spawn: workers start clean (no inherited TF/FFmpeg threads); a killed worker raises BrokenProcessPool
        # instead of hanging, and every shard finished before that stays valid for the rerun.
        # Every child (manager, workers) gets the parent-death signal; any exception here (a SIGTERM, Ctrl-C, a
        # dead worker) kills them before it propagates, instead of waiting for the running shards.
        ctx = multiprocessing.get_context("spawn")
        manager = SyncManager(ctx=ctx)
        manager.start(_die_with_parent, (os.getpid(),))
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                      initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            queue = manager.Queue()

            def drain():
                while not queue.empty():
                    bar.update(queue.get())

            waiting = {pool.submit(convert_shard, t, queue) for t in tasks}
            while waiting:
                finished, waiting = concurrent.futures.wait(waiting, timeout=0.5,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                drain()
                for fut in finished:
                    marker = fut.result()
                    markers[marker["shard"]] = marker
            drain()
        except BaseException:
            _kill_children()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown()
        finally:
            manager.shutdown()
    bar.close()

    done = sorted(markers)
    failures = sorted(parse_failures + [f for k in done for f in markers[k]["failures"]], key=lambda f: f["index"])
    atomic.atomic_write(os.path.join(out, FAILURES),
                        "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in failures))

    shards = [{"file": markers[k]["file"], "num_records": markers[k]["num_records"],
               "num_skipped": markers[k]["num_skipped"], "sha256": markers[k]["sha256"]} for k in done]
    num_records = sum(s["num_records"] for s in shards)
    manifest = {
        "prefix": prefix,
        # Zero records is never a finished dataset (a wrong --video_root / --layout skips every sample).
        "complete": len(done) == num_shards and num_records > 0,
        "num_shards": num_shards,
        "shards": shards,
        "pending_shards": [shard_name(prefix, k, num_shards) for k in range(num_shards) if k not in markers],
        "total_samples": total_lines,
        "num_records": num_records,
        "num_skipped": len(failures),
        "config": {k: v for k, v in cfg.items() if k != "video_root"} | {"num_shards": num_shards},
        "config_hash": config_hash,
        "source": {"path": os.path.basename(samples), "sha256": sha256_file(samples)},
    }
    atomic.atomic_write(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    elapsed = time.time() - t_start
    converted = sum(markers[t["shard"]]["num_records"] for t in tasks)
    worker_s = sum(markers[t["shard"]]["seconds"] for t in tasks)
    manifest_summary = {
        "shards_written": len(tasks), "shards_resumed": len(resumed), "shards_pending": len(pending),
        "records": manifest["num_records"], "skipped": manifest["num_skipped"], "seconds": round(elapsed, 2),
        "clips_per_s": round(converted / elapsed, 2) if elapsed > 0 else None,
        # Steady-state rate of one worker: records / summed shard times (no start-up, no waiting).
        "clips_per_s_per_worker": round(converted / worker_s, 2) if worker_s > 0 else None,
    }
    if summary:
        print(f"[to_tfrecord] {out}: {manifest_summary['records']} records in {num_shards} shards, "
              f"{manifest_summary['skipped']} skipped (see {FAILURES}), {len(tasks)} shards written, "
              f"{len(resumed)} resumed, {len(pending)} pending; {elapsed:.1f}s "
              f"({manifest_summary['clips_per_s']} clips/s)")
        reasons: dict[str, int] = {}
        for entry in failures:
            key = entry["error"]
            reasons[key] = reasons.get(key, 0) + 1
        for key, n in sorted(reasons.items()):
            print(f"[to_tfrecord]   skipped {n}: {key}")
    if len(done) == num_shards and num_records == 0:
        first = failures[0]["reason"] if failures else "the samples file has no samples"
        raise UserError(f"no records written: all {total_lines} sample(s) skipped", os.path.join(out, FAILURES),
                        f"samples whose videos exist under --video_root in the {layout!r} layout (first reason: "
                        f"{first})")
    return manifest | {"run": manifest_summary}


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    p = argparsing.ArgumentParser(prog="python -m data_prep.to_tfrecord", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", required=True,
                   help="JSONL samples (one dict per line: id, video_id, start/stop timestamps, conversations)")
    p.add_argument("--video_root", required=True, help="root of the videos the samples name")
    p.add_argument("--layout", required=True, choices=VIDEO_DIR_LAYOUTS,
                   help="how the videos are stored: whole MP4s, fixed-length chunks, or JPEG frames")
    p.add_argument("--out", required=True, help="output dir for the shards")
    p.add_argument("--num_frames", type=int, default=16, help="frames stored per clip")
    p.add_argument("--size", type=int, default=384, help="square output side (squash resize)")
    p.add_argument("--num_shards", type=int, default=8, help="TFRecord shards to write")
    p.add_argument("--workers", type=int, default=4, help="worker processes (<=1: in-process)")
    p.add_argument("--prefix", default="train", help="shard file name prefix (PREFIX-00000-of-N.tfrecord)")
    p.add_argument("--fps_csv", default=None, help="EPIC_100_video_info.csv (fps for the frames layout / fallback)")
    p.add_argument("--fps", type=float, default=None, help="force this fps for every video")
    p.add_argument("--chunk_len", type=int, default=15, help="seconds per chunk (chunks layout)")
    p.add_argument("--ext", default="MP4", help="video file extension")
    p.add_argument("--interp", default="bicubic", help="resize interpolation")
    p.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality of the stored frames")
    p.add_argument("--jitter", action="store_true", help="jitter frame ids (seeded by --seed and sample index)")
    p.add_argument("--seed", type=int, default=0, help="random seed (frame jitter)")
    p.add_argument("--end_tolerance", type=float, default=1.0,
                   help="seconds a clip's stop may exceed the video end (then clipped) before it is an error")
    p.add_argument("--max_shards", type=int, default=None, help="write at most this many pending shards this run")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (the summary is still printed)")
    args = p.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        manifest = convert(args.samples, args.video_root, args.layout, args.out, args.num_frames, args.size,
                           args.num_shards, args.workers, args.prefix, args.fps_csv, args.fps, args.chunk_len,
                           args.ext, args.interp, args.jpeg_quality, args.jitter, args.seed, args.end_tolerance,
                           args.max_shards, progress=not args.no_progress)
    except BrokenProcessPool as e:
        print(f"[to_tfrecord] a worker process died ({e}); finished shards are kept, rerun to resume",
              file=sys.stderr)
        return 1
    except Terminated:
        print("[to_tfrecord] terminated (SIGTERM); workers stopped, finished shards are kept, rerun to resume",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as e:   # ENOSPC from Python (OSError) or from TF's writer (ResourceExhaustedError)
        if not _disk_full(e):
            raise
        raise UserError("no space left on device", f"--out {args.out}: {_first_line(e)}",
                        "free space there and rerun the same command (finished shards are kept; the shard "
                        "being written is redone)") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0 if manifest["complete"] else 3


def _disk_full(err: BaseException) -> bool:
    return ((isinstance(err, OSError) and err.errno == errno.ENOSPC)
            or "No space left on device" in str(err))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


if __name__ == "__main__":
    sys.exit(cli.run(main))
