"""Lazy safetensors reading (single file or sharded with an index) and size-capped sharded writing.

Reading never loads a whole checkpoint: `CheckpointReader.read(key, index)` opens the file that holds
`key` and reads only the requested slice (safetensors `get_slice`), so a 7B checkpoint is streamed one
tensor (or one device shard of a tensor) at a time. bf16 stays bf16 (numpy framework + ml_dtypes).
"""
import json
import os
from typing import Dict, Iterable, List, Optional, Tuple

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from llavaction_jax import fs
from llavaction_jax.cli import UserError
from llavaction_jax.convert.errors import MissingFileError, ConvertError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors header dtype strings -> numpy dtypes (bf16 via ml_dtypes, which numpy-framework reads use).
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


class SafetensorsFileError(UserError, ValueError):
    """A safetensors file (or its index) that cannot be read: truncated, not safetensors, bad JSON."""


def _safe_open(fname: str):
    try:
        return safe_open(fname, framework="numpy")
    except SafetensorError as e:
        raise SafetensorsFileError(f"not a readable safetensors file ({e})", fname,
                                   "an intact .safetensors file (truncated download?)") from None


def _np_dtype(st_dtype: str) -> np.dtype:
    if st_dtype not in _ST_DTYPES:
        raise ConvertError(f"unsupported safetensors dtype {st_dtype!r}")
    name = _ST_DTYPES[st_dtype]
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def has_safetensors(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INDEX_NAME)) or os.path.isfile(os.path.join(path, SINGLE_NAME))


class CheckpointReader:
    """Key -> (file, shape, dtype) table of a safetensors checkpoint (directory or one file); lazy reads."""

    def __init__(self, path: str):
        self.path = path
        index_path = os.path.join(path, INDEX_NAME)
        if os.path.isfile(path):          # one arbitrary .safetensors file
            with _safe_open(path) as f:
                self._file_of = {k: path for k in f.keys()}
        elif os.path.isfile(index_path):
            with open(index_path) as f:
                try:
                    index = json.load(f)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise SafetensorsFileError(f"invalid JSON ({e})", index_path, "a safetensors index") from None
            if not isinstance(index, dict) or "weight_map" not in index:
                raise SafetensorsFileError("no 'weight_map' entry", index_path, "a safetensors index")
            self._file_of = {k: os.path.join(path, v) for k, v in index["weight_map"].items()}
        elif os.path.isfile(os.path.join(path, SINGLE_NAME)):
            single = os.path.join(path, SINGLE_NAME)
            with _safe_open(single) as f:
                self._file_of = {k: single for k in f.keys()}
        else:
            raise MissingFileError(
                f"{path}: no {SINGLE_NAME} or {INDEX_NAME} (expected a safetensors checkpoint directory)")
        self._shape: Dict[str, Tuple[int, ...]] = {}
        self._dtype: Dict[str, np.dtype] = {}
        for fname in sorted(set(self._file_of.values())):
            if not os.path.isfile(fname):
                raise MissingFileError(f"{fname}: listed in {INDEX_NAME} but missing")
            with _safe_open(fname) as f:
                for k in f.keys():
                    if self._file_of.get(k) != fname:
                        continue
                    s = f.get_slice(k)
                    self._shape[k] = tuple(s.get_shape())
                    self._dtype[k] = _np_dtype(s.get_dtype())
        missing = [k for k in self._file_of if k not in self._shape]
        if missing:
            raise ConvertError(f"{path}: index lists keys absent from their shard files: {missing[:10]}")
        self._handles: Dict[str, object] = {}

    def keys(self) -> List[str]:
        return sorted(self._shape)

    def __contains__(self, key: str) -> bool:
        return key in self._shape

    def shape(self, key: str) -> Tuple[int, ...]:
        return self._shape[key]

    def dtype(self, key: str) -> np.dtype:
        return self._dtype[key]

    def _handle(self, fname: str):
        # Keep each shard open (memory-mapped by safetensors): reopening per tensor is slow for many keys.
        if fname not in self._handles:
            self._handles[fname] = _safe_open(fname).__enter__()
        return self._handles[fname]

    def file_of(self, key: str) -> str:
        return self._file_of[key]

    def read(self, key: str, index: Optional[Tuple[slice, ...]] = None) -> np.ndarray:
        """The tensor `key`, or only `index` of it (a tuple of slices), as a numpy array."""
        fname = self._file_of[key]
        try:
            sl = self._handle(fname).get_slice(key)
            if index is None or len(self._shape[key]) == 0:
                return np.asarray(sl[...] if self._shape[key] else sl[:])
            return np.asarray(sl[tuple(index)])
        except SafetensorError as e:
            raise SafetensorsFileError(f"cannot read tensor {key!r}: {e}", fname,
                                       "an intact safetensors file") from None

    def close(self):
        """Unmaps the open shards: mapped pages that were read count as resident memory until then."""
        for h in self._handles.values():
            h.__exit__(None, None, None)
        self._handles = {}

    release = close     # readers stay usable after close: the next read reopens the shard

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_sharded(tensors: Iterable[Tuple[str, np.ndarray]], out_dir: str, max_shard_bytes: int = 2 << 30,
                  metadata: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Writes (key, array) pairs into size-capped safetensors shards + index; returns the weight map.

    Only the current shard is held in host memory, so the peak is ~max_shard_bytes + one tensor.
    A single shard is written as model.safetensors (no index), like transformers does.
    """
    os.makedirs(out_dir, exist_ok=True)
    metadata = dict(metadata or {"format": "pt"})
    shards: List[List[str]] = []
    weight_map: Dict[str, str] = {}
    pending: Dict[str, np.ndarray] = {}
    pending_bytes = 0
    total = 0
    tmp_names: List[str] = []

    def flush():
        nonlocal pending, pending_bytes
        if not pending:
            return
        name = f"model-{len(tmp_names) + 1:05d}.safetensors.tmp"
        save_file(pending, os.path.join(out_dir, name), metadata=metadata)
        tmp_names.append(name)
        shards.append(list(pending))
        pending, pending_bytes = {}, 0

    for key, arr in tensors:
        if key in weight_map or key in pending:
            raise ValueError(f"duplicate tensor key {key!r} while writing {out_dir}")
        arr = np.ascontiguousarray(arr)
        if pending and pending_bytes + arr.nbytes > max_shard_bytes:
            flush()
        pending[key] = arr
        pending_bytes += arr.nbytes
        total += arr.nbytes
    flush()

    n = len(tmp_names)
    for i, (tmp, keys) in enumerate(zip(tmp_names, shards)):
        final = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        fs.publish(os.path.join(out_dir, tmp), os.path.join(out_dir, final))
        for k in keys:
            weight_map[k] = final
    if n > 1:
        with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                      f, indent=2)
    return weight_map

