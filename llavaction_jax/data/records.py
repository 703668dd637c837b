"""The ``tf.train.Example`` layout of one EK100 MQA / instruction sample, encoded and decoded without TensorFlow.

Features (FEATURES below is the one definition; llavaction_jax.input.features turns it into tf.io's parse spec):
  id, video_id, sample_json: bytes     start_timestamp, stop_timestamp: float
  frames: bytes list (JPEG, S x S x 3 RGB)   frame_times: float list (seconds in the video)
  num_frames, verb_class, noun_class, action_id: int64
A text-only sample has zero frames; ``frames`` / ``frame_times`` are variable-length lists.

The protobuf wire format is written here by hand (Example -> Features -> map<string, Feature> -> Bytes/Float/
Int64List, packed numbers, map entries sorted by key): the bytes are those of TensorFlow's
``SerializeToString(deterministic=True)`` (tests/test_data_tfrecord.py compares them), and TensorFlow, whose
import pulls in JAX, is not needed to write or read a record.
"""
from __future__ import annotations

import io
import json
from typing import Sequence

import numpy as np
from PIL import Image

# name -> (value kind, "scalar" | "list"); kinds: bytes, float (float32), int (int64).
FEATURES = {
    "id": ("bytes", "scalar"),
    "video_id": ("bytes", "scalar"),
    "start_timestamp": ("float", "scalar"),
    "stop_timestamp": ("float", "scalar"),
    "frames": ("bytes", "list"),
    "frame_times": ("float", "list"),
    "num_frames": ("int", "scalar"),
    "sample_json": ("bytes", "scalar"),
    "verb_class": ("int", "scalar"),
    "noun_class": ("int", "scalar"),
    "action_id": ("int", "scalar"),
}
# Feature's oneof field numbers (tensorflow/core/example/feature.proto).
_KIND_FIELD = {"bytes": 1, "float": 2, "int": 3}
_INT64_MOD = 1 << 64


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


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes(values: Sequence[bytes]) -> bytes:
    return _field(_KIND_FIELD["bytes"], b"".join(_field(1, bytes(v)) for v in values))


def _floats(values: Sequence[float]) -> bytes:
    # packed float32 (np.float32 rounds as protobuf's float field does); an empty list is an empty FloatList.
    packed = np.asarray([float(v) for v in values], "<f4").tobytes()
    return _field(_KIND_FIELD["float"], _field(1, packed) if values else b"")


def _ints(values: Sequence[int]) -> bytes:
    # packed int64: negatives as their 64-bit two's complement (ten-byte varints).
    packed = b"".join(_varint(int(v) % _INT64_MOD) for v in values)
    return _field(_KIND_FIELD["int"], _field(1, packed) if values else b"")


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
    # Map entries sorted by key (as deterministic serialisation): equal inputs give byte-identical records.
    entries = b"".join(_field(1, _field(1, name.encode()) + _field(2, feature[name]))
                       for name in sorted(feature, key=str.encode))
    return _field(1, entries)   # Example.features


def _read_varint(buf: bytes, pos: int):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _read_fields(buf: bytes):
    """(field number, wire type, value) of each field of one protobuf message."""
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _read_varint(buf, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _read_varint(buf, pos)
            elif wire == 2:
                size, pos = _read_varint(buf, pos)
                value, pos = buf[pos:pos + size], pos + size
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                value, pos = buf[pos:pos + size], pos + size
            else:
                raise ValueError(f"not a tf.train.Example: wire type {wire} at byte {pos}")
            if pos > len(buf):
                raise IndexError(pos)
            yield number, wire, value
    except IndexError:
        raise ValueError(f"not a tf.train.Example: truncated at byte {pos} of {len(buf)}") from None


def _decode_values(kind: str, buf: bytes) -> list:
    """The values of one Bytes/Float/Int64List message (packed or not)."""
    out = []
    for number, wire, value in _read_fields(buf):
        if number != 1:
            continue
        if kind == "bytes":
            out.append(bytes(value))
        elif kind == "float":
            out.extend(np.frombuffer(value, "<f4").tolist())
        elif wire == 0:
            out.append(value)
        else:
            pos = 0
            while pos < len(value):
                v, pos = _read_varint(value, pos)
                out.append(v)
    if kind == "int":
        out = [v - _INT64_MOD if v >= _INT64_MOD // 2 else v for v in out]
    return out


def _decode_features(raw: bytes) -> dict:
    """Record bytes -> {feature name: list of values} (each feature in whichever kind it was written)."""
    kinds = {field: kind for kind, field in _KIND_FIELD.items()}
    features = {}
    for number, _, features_msg in _read_fields(raw):
        if number != 1:
            continue
        for entry_number, _, entry in _read_fields(features_msg):
            if entry_number != 1:
                continue
            name, values = "", []
            for part, _, value in _read_fields(entry):
                if part == 1:
                    name = bytes(value).decode()
                elif part == 2:
                    for kind_field, _, lst in _read_fields(value):
                        if kind_field in kinds:
                            values = _decode_values(kinds[kind_field], lst)
            features[name] = values
    return features


def decode_example_py(raw: bytes) -> dict:
    """Parse record bytes in plain Python/numpy: frames decoded to uint8 [N,S,S,3], sample_json to a dict."""
    f = _decode_features(raw)
    missing = sorted(set(FEATURES) - set(f))
    if missing:
        raise ValueError(f"record has no {missing} feature(s) (not an MQA record)")

    def one(name):
        return f[name][0]

    jpegs = f["frames"]
    frames = np.stack([decode_jpeg(b) for b in jpegs]) if jpegs else np.zeros((0, 0, 0, 3), np.uint8)
    return {
        "id": one("id").decode(),
        "video_id": one("video_id").decode(),
        "start_timestamp": float(one("start_timestamp")),
        "stop_timestamp": float(one("stop_timestamp")),
        "frames": frames,
        "jpeg_frames": jpegs,
        "frame_times": np.asarray(f["frame_times"], np.float32),
        "num_frames": int(one("num_frames")),
        "sample": json.loads(one("sample_json").decode()),
        "verb_class": int(one("verb_class")),
        "noun_class": int(one("noun_class")),
        "action_id": int(one("action_id")),
    }
