"""Eval sample sources -> EvalItems for this host's slice: MQA JSONL (+ videos), MQA TFRecords, generic MC JSONL.

Every host takes the samples whose index i satisfies i % process_count == process_index (TFRecords: Dataset.shard),
and reads frames lazily, only for its own slice.

Generic multiple-choice JSONL (EgoSchema / MVBench / PerceptionTest style), one object per line:
    {"id": "q1" (optional), "video": "path/to/clip.mp4" (relative paths are under --video_root),
     "start": 0.0 (optional), "end": 12.5 (optional; default: the whole video),
     "question": "What does the person do after ...?", "options": ["open the fridge", "cut a tomato", ...],
     "answer": "B" | 1 | "cut a tomato"}
Options may already carry letters ("A. open the fridge"). The prompt is the question, then one "X. text" per line,
then an instruction to answer with the letter; generations are parsed with the reference parser, falling back to a
bare leading letter.
"""
import dataclasses
import json
import os
from typing import Callable, Iterator, List, Mapping, Optional

import jax
import numpy as np
import tensorflow as tf

from llavaction_jax.data import video as video_lib
from llavaction_jax.data.prompts import IMAGE_PLACEHOLDER
from llavaction_jax.cli import UserError
from llavaction_jax.eval.items import EvalItem
from llavaction_jax.eval.scoring import LETTERS
from llavaction_jax.input.decode import decode_jpeg_frames
from llavaction_jax.input.recordio import NoFilesError, expand_pattern


class SampleError(UserError, ValueError):
    """A bad row / record / field in eval data: the one-line user error, naming where it is."""

    def __init__(self, where: str, what: str):
        super().__init__(what, where)


class MissingDataError(UserError, FileNotFoundError):
    """Eval data that is not there (a glob matching nothing): the one-line user error."""


GENERIC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclasses.dataclass
class Source:
    """This host's items (iterate() streams them, frames still unread) and how many there are."""
    iterate: Callable[[], Iterator[EvalItem]]
    num_local: int

    @classmethod
    def from_list(cls, items: List[EvalItem]) -> "Source":
        return cls(lambda: iter(items), len(items))


def _host_slice():
    return jax.process_index(), jax.process_count()


def read_jsonl(path: str) -> List[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"not valid JSON ({e})", f"{path}:{line_no}", "one JSON object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"a {type(row).__name__}, not a JSON object", f"{path}:{line_no}",
                                "one JSON object per line")
            rows.append(row)
    return rows


def check_mqa_sample(sample: dict, where: str) -> None:
    """The fields the evaluator needs from an MQA sample (contract format), with a clear error."""
    for key in ("id", "conversations", "options"):
        if key not in sample:
            raise SampleError(where, f"MQA sample is missing field {key!r}")
    options = sample["options"]
    if not isinstance(options, list) or not options or len(options) > len(LETTERS):
        raise SampleError(where, f"field 'options' must be a list of 1..26 'A. text' strings, got {options!r:.200}")
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.startswith(f"{LETTERS[i]}. "):
            raise SampleError(where, f"option {i} must start with '{LETTERS[i]}. ', got {option!r}")
    answer = sample.get("answer")
    if answer not in (None, "") and answer not in LETTERS[:len(options)]:
        raise SampleError(where, f"field 'answer' must be one of the option letters "
                         f"{list(LETTERS[:len(options)])} (or empty when the truth is not an option), got {answer!r}")


def mqa_jsonl_source(path: str, video_root: Optional[str], num_frames: int, image_size: int,
                     video_layout: str = "original", chunk_len: int = 15, ext: str = "MP4",
                     limit: Optional[int] = None, fps: Optional[float] = None,
                     fps_table: Optional[Mapping[str, float]] = None) -> Source:
    """EK100-MQA JSONL with frames read from `video_root` (layout as llavaction_jax.data.video); the root is required.

    fps / fps_table (video_id -> fps, e.g. EPIC_100_video_info.csv) as llavaction_jax.data.video.VideoReader: the extracted
    `frames` layout has no container to read a rate from and needs one of them.
    """
    if not video_root:
        # Scoring EK100-MQA without its videos would be a silently different (text-only) benchmark.
        raise UserError("MQA JSONL data needs its videos", "--video_root",
                        "the root of the EK100 videos (or evaluate the MQA TFRecords, which hold the frames)")
    if not os.path.isdir(video_root):
        raise UserError(f"video root {video_root!r} is not a directory", "--video_root", "an existing directory")
    rows = read_jsonl(path)[:limit]
    check_unique_ids([str(r.get("id")) for r in rows], path)
    pid, nproc = _host_slice()
    reader = video_lib.VideoReader(video_root, video_layout, size=image_size, chunk_len=chunk_len, ext=ext,
                                   fps=fps, fps_table=fps_table)
    items = []
    for i, sample in enumerate(rows):
        if i % nproc != pid:
            continue
        check_mqa_sample(sample, f"{path}: row {i + 1}")

        def load(sample=sample):
            frames, _ = reader.read_clip(sample["video_id"], float(sample["start_timestamp"]),
                                         float(sample["stop_timestamp"]), num_frames,
                                         participant_id=sample.get("participant_id"))
            return frames
        items.append(EvalItem(sample, load, index=i))
    return Source.from_list(items)


def check_unique_ids(ids: List[str], where: str) -> None:
    """One record per question: a repeated id would be scored twice (and clash on resume)."""
    seen = {}
    for line, sid in enumerate(ids, start=1):
        if sid in seen:
            raise UserError(f"duplicate sample id {sid!r} (rows {seen[sid]} and {line})", where,
                            "unique ids, one row per question")
        seen[sid] = line


def parse_record(raw: bytes) -> dict:
    """MQA record bytes -> {"sample": dict, "jpegs": [bytes]} (frames stay JPEG until used)."""
    f = tf.train.Example.FromString(raw).features.feature
    if "sample_json" not in f or not f["sample_json"].bytes_list.value:
        raise ValueError("record has no 'sample_json' feature (not a llavaction_jax.data.records / ek100_mqa record)")
    return {"sample": json.loads(f["sample_json"].bytes_list.value[0].decode("utf-8")),
            "jpegs": list(f["frames"].bytes_list.value) if "frames" in f else []}


def tfrecord_files(pattern: str) -> List[str]:
    """The files of comma-separated TFRecord globs (local or any fs scheme); EVERY glob must match a file (as
    the trainer's data globs): one that matches nothing is a typo that would silently score fewer samples."""
    globs = [p.strip() for p in pattern.split(",") if p.strip()]
    if not globs:
        raise MissingDataError(f"no TFRecord glob in {pattern!r}", "--data", "a .jsonl file or TFRecord glob(s)")
    files = set()
    for p in globs:
        try:
            files.update(expand_pattern(p))
        except NoFilesError:
            raise MissingDataError(f"no TFRecord files match {p!r}" + (f" (one of the {len(globs)} comma-separated "
                                   "globs)" if len(globs) > 1 else ""), "--data",
                                   "a .jsonl file or TFRecord glob(s), each matching at least one file") from None
    return sorted(files)


def tfrecord_source(pattern: str, num_frames: int, image_size: int, limit: Optional[int] = None) -> Source:
    """MQA TFRecords (llavaction_jax.data.records format; comma-separated globs). Frames stay JPEG until used, then go
    through the training decode (input.decode.decode_jpeg_frames): identical pixels in train and eval.
    `image_size`: the model's; frames of another size are resized as in training."""
    files = tfrecord_files(pattern)
    pid, nproc = _host_slice()
    dataset = tf.data.TFRecordDataset(files)
    if limit is not None:
        dataset = dataset.take(limit)
    dataset = dataset.shard(nproc, pid)
    # One cheap pass to count (no parsing, but CRC-checked), then stream: a host never holds its slice of frames.
    try:
        num_local = int(dataset.reduce(np.int64(0), lambda n, _: n + 1).numpy())
    except tf.errors.DataLossError as e:
        raise UserError(f"corrupt TFRecord data ({e.message.splitlines()[0]})", pattern,
                        "intact records (re-run llavaction-prep tfrecord)") from None

    def iterate():
        seen = set()
        for i, raw in enumerate(dataset.as_numpy_iterator()):
            index = i * nproc + pid
            try:
                example = parse_record(raw)
            except (ValueError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"record {index} is not an MQA record ({e})", pattern,
                                "TFRecords written by llavaction-prep tfrecord or the ek100_mqa TFDS builder") from None
            sample, jpegs = example["sample"], example["jpegs"]
            check_mqa_sample(sample, f"{pattern}: record {index}")
            if str(sample["id"]) in seen:
                raise UserError(f"duplicate sample id {sample['id']!r} (record {index})", pattern,
                                "unique ids, one record per question")
            seen.add(str(sample["id"]))
            if len(jpegs) != num_frames:
                raise UserError(f"record {sample['id']!r} has {len(jpegs)} frames", pattern,
                                f"config.data.num_frames = {num_frames}; re-export the records or change the config")

            def load(jpegs=jpegs):
                return decode_jpeg_frames(jpegs, image_size)
            yield EvalItem(sample, load, index=index)
    return Source(iterate, num_local)


# ---- generic multiple choice ---------------------------------------------------------------------------------------

def generic_to_sample(row: dict, where: str, index: int) -> dict:
    """A generic MC row -> an MQA-format sample dict (+ "video", the clip's file)."""
    for key in ("video", "question", "options", "answer"):
        if key not in row:
            raise SampleError(where, f"generic MC row is missing field {key!r}")
    question, options = row["question"], row["options"]
    if not isinstance(question, str) or not question.strip():
        raise SampleError(where, f"field 'question' must be a non-empty string, got {question!r:.200}")
    if not isinstance(options, list) or not 1 <= len(options) <= len(LETTERS):
        raise SampleError(where, f"field 'options' must be a list of 1..26 strings, got {options!r:.200}")
    texts = []
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise SampleError(where, f"option {i} must be a non-empty string, got {option!r}")
        prefix = f"{LETTERS[i]}. "
        texts.append(option[len(prefix):] if option.startswith(prefix) else option)
    for field, text in [("question", question)] + [(f"options[{i}]", o) for i, o in enumerate(texts)]:
        if IMAGE_PLACEHOLDER in text:
            # The prompt puts the one video placeholder first; a second one would be a second video slot.
            raise SampleError(where, f"field {field!r} contains {IMAGE_PLACEHOLDER!r}, the video's placeholder (the "
                              "prompt adds it once, before the question): remove it from the text")
    answer = row["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(texts):
        letter = LETTERS[answer]
    elif isinstance(answer, str) and answer in LETTERS[:len(texts)]:
        letter = answer
    elif isinstance(answer, str) and answer in texts:
        letter = LETTERS[texts.index(answer)]
    else:
        raise SampleError(where, f"field 'answer' {answer!r} is neither an option index, an option letter "
                         f"{list(LETTERS[:len(texts)])} nor one of the option texts")
    letters_options = [f"{LETTERS[i]}. {t}" for i, t in enumerate(texts)]
    question = IMAGE_PLACEHOLDER + "\n" + question.strip() + "\n" + "\n".join(letters_options) + "\n" + GENERIC_INSTRUCTION
    start, end = row.get("start"), row.get("end")
    return {
        "id": str(row.get("id", index)), "video": row["video"], "video_id": os.path.basename(str(row["video"])),
        "start_timestamp": None if start is None else float(start), "stop_timestamp": None if end is None else float(end),
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": letters_options[
            LETTERS.index(letter)]}],
        "task": "mc_generic", "options": letters_options, "answer": letter,
        "answer_text": texts[LETTERS.index(letter)], "source": str(row.get("source", "generic")),
        "mode": "generic", "verb_class": -1, "noun_class": -1, "action_id": -1,
    }


def read_video_file(path: str, start: Optional[float], end: Optional[float], num_frames: int,
                    size: int) -> np.ndarray:
    """Uniform midpoint frames of [start, end] (seconds; None = the whole video) from a plain video file."""
    info = video_lib.probe_container(path)
    if not info.fps or info.num_frames <= 0:
        raise video_lib.VideoError(path, "container reports no frame rate or no frames")
    last = info.num_frames - 1
    first_id = 0 if start is None else int(round(float(start) * info.fps))
    last_id = last if end is None else min(int(round(float(end) * info.fps)), last)
    if first_id > last_id:
        raise video_lib.VideoError(path, f"clip [{start}, {end}] s is empty or starts after the last frame "
                                         f"({last / info.fps:.3f} s)")
    ids = video_lib.segment_frame_ids(first_id, last_id, num_frames)
    decoded = video_lib.decode_container_frames(path, ids, info.fps)
    return np.stack([video_lib.resize_frame(decoded[int(i)], size) for i in ids])


def resolve_video_path(video: str, video_root: Optional[str], allow_absolute: bool, where: str) -> str:
    """A generic MC row's video file, confined to `video_root` unless absolute paths were explicitly allowed."""
    if os.path.isabs(video):
        if not allow_absolute:
            raise UserError(f"video path {video!r} is absolute", where,
                            "a path relative to --video_root (or pass --allow_absolute_paths)")
        return video
    if not video_root:
        raise UserError(f"video path {video!r} is relative but no video root was given", where,
                        "--video_root DIR (relative paths are resolved under it)")
    root = os.path.realpath(video_root)
    full = os.path.realpath(os.path.join(root, video))
    if os.path.commonpath([root, full]) != root:
        raise UserError(f"video path {video!r} leaves the video root {video_root!r}", where,
                        "a path inside --video_root (or an absolute path with --allow_absolute_paths)")
    return full


def generic_mc_source(path: str, video_root: Optional[str], num_frames: int, image_size: int,
                      limit: Optional[int] = None, allow_absolute: bool = False) -> Source:
    rows = read_jsonl(path)[:limit]
    pid, nproc = _host_slice()
    samples_all = [generic_to_sample(row, f"{path}: row {i + 1}", i) for i, row in enumerate(rows)]
    check_unique_ids([s["id"] for s in samples_all], path)
    items = []
    for i, sample in enumerate(samples_all):
        if i % nproc != pid:
            continue
        video_path = resolve_video_path(str(sample["video"]), video_root, allow_absolute, f"{path}: row {i + 1}")

        def load(sample=sample, video_path=video_path):
            frames = read_video_file(video_path, sample["start_timestamp"], sample["stop_timestamp"],
                                     num_frames, image_size)
            if sample["start_timestamp"] is None or sample["stop_timestamp"] is None:
                # The time instruction needs the clip's duration: fill it from the container.
                info = video_lib.probe_container(video_path)
                sample["start_timestamp"] = sample["start_timestamp"] or 0.0
                if sample["stop_timestamp"] is None:
                    sample["stop_timestamp"] = (info.num_frames - 1) / info.fps
            return frames
        items.append(EvalItem(sample, load, parser="letter_or_text", index=i))
    return Source.from_list(items)


def is_generic_jsonl(path: str) -> bool:
    """Generic MC rows have "question" and "video" fields; MQA samples have "conversations"."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"not valid JSON ({e})", f"{path}:{line_no}", "one JSON object per line") from None
                return isinstance(row, dict) and "conversations" not in row and "question" in row and "video" in row
    return False
