"""TFRecord ``tf.train.Example`` layout for one EK100 MQA / instruction sample (no JAX).

Features (FEATURE_SPEC below is the one definition):
  id, video_id, sample_json: bytes     start_timestamp, stop_timestamp: float
  frames: bytes list (JPEG, S x S x 3 RGB)   frame_times: float list (seconds in the video)
  num_frames, verb_class, noun_class, action_id: int64
A text-only sample has zero frames. ``FEATURE_SPEC`` parses ``frames``/``frame_times`` as dense
variable-length vectors (FixedLenSequenceFeature with allow_missing=True), so no sparse tensors appear.
"""
from __future__ import annotations

import io
import json
from typing import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

FEATURE_SPEC = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "video_id": tf.io.FixedLenFeature([], tf.string),
    "start_timestamp": tf.io.FixedLenFeature([], tf.float32),
    "stop_timestamp": tf.io.FixedLenFeature([], tf.float32),
    "frames": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
    "frame_times": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "sample_json": tf.io.FixedLenFeature([], tf.string),
    "verb_class": tf.io.FixedLenFeature([], tf.int64),
    "noun_class": tf.io.FixedLenFeature([], tf.int64),
    "action_id": tf.io.FixedLenFeature([], tf.int64),
}


def encode_jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 HxWx3 -> JPEG bytes (PIL; deterministic for a given input and quality).

    4:4:4 (no chroma subsampling): the reference feeds decoded video frames straight to the model, so we keep
    colour detail (small objects' colours matter for nouns) at a modest size cost.
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"encode_jpeg expects uint8 HxWx3 RGB, got {frame.dtype} {frame.shape}")
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _int_field(sample: dict, name: str) -> int:
    value = sample.get(name, -1)
    if value is None:
        return -1
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"sample {sample.get('id')!r}: field {name!r}={value!r} is not an int") from None


def encode_example(sample: dict, jpeg_frames: list[bytes], frame_times: list[float]) -> bytes:
    """Serialise one JSONL sample dict plus its JPEG frames into ``tf.train.Example`` bytes."""
    if "id" not in sample:
        raise ValueError(f"sample has no 'id' field (keys: {sorted(sample)})")
    if len(jpeg_frames) != len(frame_times):
        raise ValueError(f"sample {sample['id']!r}: {len(jpeg_frames)} frames but {len(frame_times)} frame_times")
    feature = {
        "id": _bytes([str(sample["id"]).encode()]),
        "video_id": _bytes([str(sample.get("video_id") or "").encode()]),
        "start_timestamp": _floats([sample.get("start_timestamp") or 0.0]),
        "stop_timestamp": _floats([sample.get("stop_timestamp") or 0.0]),
        "frames": _bytes(jpeg_frames),
        "frame_times": _floats(frame_times),
        "num_frames": _ints([len(jpeg_frames)]),
        # sort_keys: byte-identical records for equal samples (resume / reproducibility checks).
        "sample_json": _bytes([json.dumps(sample, sort_keys=True, ensure_ascii=False).encode()]),
        "verb_class": _ints([_int_field(sample, "verb_class")]),
        "noun_class": _ints([_int_field(sample, "noun_class")]),
        "action_id": _ints([_int_field(sample, "action_id")]),
    }
    # deterministic=True sorts the feature map: equal inputs give byte-identical records.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def decode_example_py(raw: bytes) -> dict:
    """Parse record bytes in plain Python/numpy: frames decoded to uint8 [N,S,S,3], sample_json to a dict."""
    ex = tf.train.Example.FromString(raw)
    f = ex.features.feature

    def one_bytes(name):
        return f[name].bytes_list.value[0]

    jpegs = list(f["frames"].bytes_list.value)
    frames = np.stack([decode_jpeg(b) for b in jpegs]) if jpegs else np.zeros((0, 0, 0, 3), np.uint8)
    return {
        "id": one_bytes("id").decode(),
        "video_id": one_bytes("video_id").decode(),
        "start_timestamp": float(f["start_timestamp"].float_list.value[0]),
        "stop_timestamp": float(f["stop_timestamp"].float_list.value[0]),
        "frames": frames,
        "jpeg_frames": jpegs,
        "frame_times": np.asarray(f["frame_times"].float_list.value, np.float32),
        "num_frames": int(f["num_frames"].int64_list.value[0]),
        "sample": json.loads(one_bytes("sample_json").decode()),
        "verb_class": int(f["verb_class"].int64_list.value[0]),
        "noun_class": int(f["noun_class"].int64_list.value[0]),
        "action_id": int(f["action_id"].int64_list.value[0]),
    }
