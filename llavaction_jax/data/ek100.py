"""EPIC-KITCHENS-100 annotations: CSV parsing, the LLaVAction action label space, narration pools.

The annotation files are by the EPIC-KITCHENS authors (Damen et al., "Rescaling Egocentric Vision", IJCV 2022,
https://github.com/epic-kitchens/epic-kitchens-100-annotations), released under CC BY-NC 4.0
(https://creativecommons.org/licenses/by-nc/4.0/); use them only non-commercially and keep this credit.

Label space rules (as `generate_label_map` in llavaction/action/utils.py of LLaVAction):
- an action is the string "{verb_class}:{noun_class}"; every pair seen in the given CSVs (train + validation in
  the original, 3806 actions) is sorted AS STRINGS ("0:10" < "0:2") and the action id is the index in that list;
- verb text is the verb CSV `key`; noun text is the noun CSV `key` with its colon parts rotated ("a:b:c" -> "b c a",
  "pan:frying" -> "frying pan");
- narration pools: every raw narration of an action, in file order, and the unique narrations by frequency.
"""
import collections
import contextlib
import csv
import dataclasses
import importlib.resources
import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

# Columns of EPIC_100_{train,validation}.csv (and EPIC_100_uda_source_train.csv, same header).
SEGMENT_COLUMNS = (
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
    "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
    "all_noun_classes",
)
VERB_CLASSES_CSV = "EPIC_100_verb_classes.csv"
NOUN_CLASSES_CSV = "EPIC_100_noun_classes_v2.csv"
VIDEO_INFO_CSV = "EPIC_100_video_info.csv"
# Files the original label space is built from, in order; the local subset falls back to uda_source_train.
LABEL_SPACE_CSVS = ("EPIC_100_train.csv", "EPIC_100_validation.csv")
LOCAL_LABEL_SPACE_CSVS = ("EPIC_100_uda_source_train.csv", "EPIC_100_validation.csv")

_TIMESTAMP_RE = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file, line and field."""


def parse_timestamp(text: str) -> float:
    """"hh:mm:ss.xx" -> seconds (float)."""
    m = _TIMESTAMP_RE.match(text.strip())
    if not m:
        raise ValueError(f"expected a timestamp like 'hh:mm:ss.xx', got {text!r}")
    hours, minutes, seconds = m.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def rotate_noun_key(key: str) -> str:
    """"a:b:c" -> "b c a" (the reference's noun text), e.g. "pan:frying" -> "frying pan"."""
    parts = key.split(":")
    return " ".join(parts[1:] + parts[:1])


def action_key(verb_class: int, noun_class: int) -> str:
    return f"{verb_class}:{noun_class}"


def split_action_key(vn: str):
    v, sep, n = vn.partition(":")
    if not sep or not v.isdigit() or not n.isdigit():
        raise ValueError(f"action {vn!r} is not of the form 'verb_class:noun_class'")
    return int(v), int(n)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One annotated action segment (one CSV row)."""
    row_index: int            # 0-based data row in its file (the key of action-model prediction files)
    narration_id: str
    participant_id: str
    video_id: str
    start: float              # seconds
    stop: float               # seconds
    start_frame: int
    stop_frame: int
    narration: str
    verb: str
    verb_class: int
    noun: str
    noun_class: int

    @property
    def vn(self) -> str:
        return action_key(self.verb_class, self.noun_class)


@contextlib.contextmanager
def _open_csv(path: str):
    """The file's lines decoded one by one, so a byte that is not UTF-8 (e.g. a latin-1 export) is an
    AnnotationError naming the file and line instead of a UnicodeDecodeError from inside the csv reader."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, "rb") as f:
        yield _utf8_lines(f, path)


def _utf8_lines(f, path: str):
    for line_no, raw in enumerate(f, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: line {line_no}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                  f"{e.start + 1}); EK100 CSVs are UTF-8: re-save the file as UTF-8") from None


def _read_class_csv(path: str) -> List[str]:
    """Class `key`s indexed by id; ids must be 0..N-1 in order."""
    keys: List[str] = []
    with _open_csv(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[:2] != ["id", "key"]:
            raise AnnotationError(f"{path}: line 1: expected header starting with 'id,key', got {header}")
        for row in reader:
            line = reader.line_num
            if len(row) < 2:
                raise AnnotationError(f"{path}: line {line}: expected at least 2 fields (id,key), got {len(row)}")
            if row[0] != str(len(keys)):
                raise AnnotationError(f"{path}: line {line}: field 'id': expected {len(keys)}, got {row[0]!r}")
            if not row[1]:
                raise AnnotationError(f"{path}: line {line}: field 'key': empty")
            keys.append(row[1])
    if not keys:
        raise AnnotationError(f"{path}: no class rows")
    return keys


def load_verb_texts(path: str) -> List[str]:
    return _read_class_csv(path)


def load_noun_texts(path: str) -> List[str]:
    return [rotate_noun_key(k) for k in _read_class_csv(path)]


def read_segments(path: str, num_verbs: Optional[int] = None, num_nouns: Optional[int] = None) -> List[Segment]:
    """Parse and validate an EK100 segment CSV; errors name the file, line and field."""
    segments: List[Segment] = []
    seen_ids: Dict[str, int] = {}
    with _open_csv(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:13]) != SEGMENT_COLUMNS[:13]:
            raise AnnotationError(f"{path}: line 1: expected header {','.join(SEGMENT_COLUMNS)}, got {header}")
        for row in reader:
            line = reader.line_num

            def fail(field, msg):
                raise AnnotationError(f"{path}: line {line}: field '{field}': {msg}")

            if len(row) != len(header):
                raise AnnotationError(f"{path}: line {line}: expected {len(header)} fields, got {len(row)}")
            values = dict(zip(SEGMENT_COLUMNS, row))
            for field in ("narration_id", "participant_id", "video_id", "narration"):
                if not values[field].strip():
                    fail(field, "empty")
            times = {}
            for field in ("start_timestamp", "stop_timestamp"):
                try:
                    times[field] = parse_timestamp(values[field])
                except ValueError as e:
                    fail(field, str(e))
            ints = {}
            for field in ("start_frame", "stop_frame", "verb_class", "noun_class"):
                text = values[field]
                if not text.isdigit():
                    fail(field, f"expected a non-negative integer, got {text!r}")
                ints[field] = int(text)
            if times["stop_timestamp"] < times["start_timestamp"]:
                fail("stop_timestamp", f"{values['stop_timestamp']} is before start_timestamp "
                                       f"{values['start_timestamp']}")
            if ints["stop_frame"] < ints["start_frame"]:
                fail("stop_frame", f"{ints['stop_frame']} is before start_frame {ints['start_frame']}")
            if num_verbs is not None and ints["verb_class"] >= num_verbs:
                fail("verb_class", f"unknown verb class {ints['verb_class']} (the verb CSV has {num_verbs} classes)")
            if num_nouns is not None and ints["noun_class"] >= num_nouns:
                fail("noun_class", f"unknown noun class {ints['noun_class']} (the noun CSV has {num_nouns} classes)")
            if values["narration_id"] in seen_ids:
                fail("narration_id", f"duplicate of line {seen_ids[values['narration_id']]}")
            seen_ids[values["narration_id"]] = line
            segments.append(Segment(
                row_index=len(segments), narration_id=values["narration_id"],
                participant_id=values["participant_id"], video_id=values["video_id"],
                start=times["start_timestamp"], stop=times["stop_timestamp"],
                start_frame=ints["start_frame"], stop_frame=ints["stop_frame"], narration=values["narration"],
                verb=values["verb"], verb_class=ints["verb_class"], noun=values["noun"],
                noun_class=ints["noun_class"]))
    return segments


def load_video_info(path: str) -> Dict[str, dict]:
    """video_id -> {"duration": s, "fps": float, "resolution": "WxH"}."""
    info: Dict[str, dict] = {}
    with _open_csv(path) as f:
        reader = csv.DictReader(f)
        for field in ("video_id", "duration", "fps"):
            if field not in (reader.fieldnames or []):
                raise AnnotationError(f"{path}: line 1: missing column '{field}'")
        for row in reader:
            line = reader.line_num
            for field in ("duration", "fps"):
                try:
                    value = float(row[field])
                except (TypeError, ValueError):
                    raise AnnotationError(f"{path}: line {line}: field '{field}': expected a number, "
                                          f"got {row[field]!r}") from None
                if not value > 0:
                    raise AnnotationError(f"{path}: line {line}: field '{field}': expected > 0, got {value}")
            info[row["video_id"]] = {"duration": float(row["duration"]), "fps": float(row["fps"]),
                                     "resolution": row.get("resolution", "")}
    return info


class LabelSpace:
    """String-sorted action list, class texts and narration pools built from a set of segments."""

    def __init__(self, verb_texts: Sequence[str], noun_texts: Sequence[str], segments: Iterable[Segment]):
        self.verb_texts = list(verb_texts)
        self.noun_texts = list(noun_texts)
        pools: Dict[str, List[str]] = {}
        for seg in segments:
            pools.setdefault(seg.vn, []).append(seg.narration)
        # Sorted as strings, exactly like the reference's sorted(vn_list).
        self.actions: List[str] = sorted(pools)
        self.action_to_id: Dict[str, int] = {vn: i for i, vn in enumerate(self.actions)}
        self.narrations: Dict[str, List[str]] = pools
        # Unique narrations, most frequent first (ties: first seen first, as Counter.most_common).
        self.narrations_by_frequency: Dict[str, List[str]] = {
            vn: [t for t, _ in collections.Counter(p).most_common()] for vn, p in pools.items()}

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    def action_id(self, vn: str) -> int:
        try:
            return self.action_to_id[vn]
        except KeyError:
            raise KeyError(f"action {vn!r} is not in the label space ({self.num_actions} actions)") from None

    def official_key(self, vn: str) -> str:
        """"{verb text} {noun text}", e.g. "0:2" -> "take plate"."""
        v, n = split_action_key(vn)
        if v >= len(self.verb_texts) or n >= len(self.noun_texts):
            raise KeyError(f"action {vn!r} has an unknown verb or noun class")
        return f"{self.verb_texts[v]} {self.noun_texts[n]}"

    def is_known_class_pair(self, vn: str) -> bool:
        try:
            v, n = split_action_key(vn)
        except ValueError:
            return False
        return v < len(self.verb_texts) and n < len(self.noun_texts)


@dataclasses.dataclass
class Annotations:
    """The segments of one split plus the label space they are labelled in."""
    path: str
    segments: List[Segment]
    label_space: LabelSpace
    video_info: Optional[Mapping[str, dict]] = None

    def __len__(self) -> int:
        return len(self.segments)


def default_label_csvs(annotation_dir: str) -> List[str]:
    """The original's train+val files when present, else the local uda_source_train+val subset."""
    for names in (LABEL_SPACE_CSVS, LOCAL_LABEL_SPACE_CSVS):
        paths = [os.path.join(annotation_dir, n) for n in names]
        if all(os.path.isfile(p) for p in paths):
            return paths
    return []


def load_annotations(csv_path: str, label_csvs: Optional[Sequence[str]] = None,
                     class_dir: Optional[str] = None, with_video_info: bool = True) -> Annotations:
    """Read one split and build the label space from `label_csvs` (default: see default_label_csvs; the split
    itself is always included). Class CSVs and video info are read from `class_dir` (default: the CSV's folder)."""
    if not os.path.isfile(csv_path):        # before the class CSVs looked for next to it
        raise FileNotFoundError(f"annotation file not found: {csv_path}")
    class_dir = class_dir or os.path.dirname(os.path.abspath(csv_path))
    verb_texts = load_verb_texts(os.path.join(class_dir, VERB_CLASSES_CSV))
    noun_texts = load_noun_texts(os.path.join(class_dir, NOUN_CLASSES_CSV))
    segments = read_segments(csv_path, len(verb_texts), len(noun_texts))
    if label_csvs is None:
        label_csvs = default_label_csvs(class_dir)
    pool_segments: List[Segment] = []
    used_self = False
    for path in label_csvs:
        if os.path.abspath(path) == os.path.abspath(csv_path):
            pool_segments.extend(segments)
            used_self = True
        else:
            pool_segments.extend(read_segments(path, len(verb_texts), len(noun_texts)))
    if not used_self:
        pool_segments.extend(segments)
    info_path = os.path.join(class_dir, VIDEO_INFO_CSV)
    video_info = load_video_info(info_path) if with_video_info and os.path.isfile(info_path) else None
    return Annotations(csv_path, segments, LabelSpace(verb_texts, noun_texts, pool_segments), video_info)


# A small subset of the official files shipped with the package (demo, tests); see its README for the credit.
SAMPLE_DIR = str(importlib.resources.files("llavaction_jax.data").joinpath("assets", "ek100_sample"))
SAMPLE_VALIDATION_CSV = os.path.join(SAMPLE_DIR, "EPIC_100_validation.csv")
