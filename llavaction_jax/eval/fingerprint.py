"""What made an eval's predictions, stored next to them (OUT/fingerprint.json): a rerun into the same --out
resumes only the same evaluation, and refuses any other in one line naming what differs.

The fingerprint holds the checkpoint (path, step, a digest of its files' names / sizes / mtimes, the hash of the
config the run used), every data file with its size and mtime, where the videos come from, the frame count, the
methods and max_new_tokens. Predictions of another checkpoint or data would otherwise be reused as they are and
scored as this one's: a wrong benchmark number with no warning.
"""
import hashlib
import json
import os
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from llavaction_jax import fs
from llavaction_jax.cli import UserError

FILE = "fingerprint.json"
VERSION = 1


def _stat(path: str) -> dict:
    if not fs.is_url(path):              # the OS keeps nanoseconds; tf.io.gfile.stat rounds local mtimes to seconds
        st = os.stat(path)
        return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    st = tf.io.gfile.stat(path)          # gs:// and other fs schemes
    return {"size": int(st.length), "mtime_ns": int(st.mtime_nsec)}


def tree_digest(path: str) -> str:
    """sha256 over the relative name, size and mtime of every file under the local dir `path` (cheap: no file is
    read; a rewritten checkpoint changes mtimes)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            st = os.stat(full)
            h.update(f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def make(checkpoint: str, step: Optional[int], config_json: str, data_files: Sequence[str], video: Mapping,
         num_frames: int, methods: Sequence[str], max_new_tokens: int, benchmark: str) -> dict:
    """The fingerprint of one evaluation. `checkpoint`: the dir the parameters were read from (a training
    workdir's step dir, or the converted checkpoint dir); `video`: where a JSONL's frames come from."""
    return {
        "version": VERSION,
        "benchmark": benchmark,
        "checkpoint": {"path": os.path.abspath(checkpoint), "step": step, "files": tree_digest(checkpoint),
                       "config_sha256": hashlib.sha256(config_json.encode()).hexdigest()},
        "data": {f: _stat(f) for f in sorted(data_files)},
        "video": {k: v for k, v in sorted(video.items())},
        "num_frames": int(num_frames),
        "methods": list(methods),
        "max_new_tokens": int(max_new_tokens),
    }


def read(out_dir: str) -> Optional[dict]:
    path = fs.join(out_dir, FILE)
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.read_text(path))
    except json.JSONDecodeError:
        raise UserError("not valid JSON", path, "a fingerprint.json written by llavaction_jax.eval (or "
                        "--no_resume)") from None


def write(out_dir: str, fingerprint: Mapping) -> None:
    fs.atomic_write(fs.join(out_dir, FILE), json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def differences(stored: Mapping, current: Mapping) -> list:
    """What differs between two fingerprints, in words ("checkpoint.step 10 -> 20", "data file x: size ...")."""
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if a == b:
            continue
        if key == "data" and isinstance(a, dict) and isinstance(b, dict):
            for f in sorted(set(a) | set(b)):
                if f not in a:
                    out.append(f"data file {f} is new")
                elif f not in b:
                    out.append(f"data file {f} is no longer in --data")
                elif a[f] != b[f]:
                    out.append(f"data file {f} changed (size/mtime)")
        elif isinstance(a, dict) and isinstance(b, dict):
            out += [_changed(f"{key}.{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(_changed(key, a, b))
    return out


_DIGESTS = {"checkpoint.files": "the checkpoint's files (names, sizes, mtimes) changed",
            "checkpoint.config_sha256": "the config the checkpoint was evaluated with changed"}


def _changed(key: str, a, b) -> str:
    return _DIGESTS.get(key) or f"{key} {a!r} -> {b!r}"


def resume_problem(out_dir: str, current: Mapping, num_previous: int) -> Optional[str]:
    """None when the `num_previous` predictions in out_dir may be resumed under `current`; else what differs."""
    if not num_previous:
        return None
    stored = read(out_dir)
    if stored is None:
        return f"{num_previous} saved predictions have no {FILE} (an older version wrote them)"
    diff = differences(stored, current)
    if not diff:
        return None
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    return f"{num_previous} saved predictions come from another evaluation: {shown}"


def refuse(out_dir: str, problem: str) -> UserError:
    return UserError(problem, fs.join(out_dir, FILE), "the same checkpoint, data, frames, methods and "
                     "max_new_tokens to resume; or --no_resume to evaluate afresh into this --out, or a new --out")
