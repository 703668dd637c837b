"""EK100 annotation parsing and the LLaVAction label space, on the real CSVs (EPIC-KITCHENS, CC BY-NC 4.0)."""
import collections
import csv
import os

import pytest

from conftest import EK100_DIR
from llavaction_jax.data import ek100

VAL = os.path.join(EK100_DIR, "EPIC_100_validation.csv")
UDA = os.path.join(EK100_DIR, "EPIC_100_uda_source_train.csv")
HEADER = ",".join(ek100.SEGMENT_COLUMNS)
GOOD_ROW = "P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,3,['door'],[3]"


def test_parse_timestamp():
    assert ek100.parse_timestamp("00:00:03.37") == pytest.approx(3.37)
    assert ek100.parse_timestamp("01:02:03.50") == pytest.approx(3723.5)
    assert ek100.parse_timestamp("00:10:00") == 600.0
    for bad in ("3.37", "00:61:00.00", "aa:00:00.00", "", "00:00:-1.0"):
        with pytest.raises(ValueError, match="hh:mm:ss.xx"):
            ek100.parse_timestamp(bad)


def test_rotate_noun_key():
    assert ek100.rotate_noun_key("pan:frying") == "frying pan"
    assert ek100.rotate_noun_key("a:b:c") == "b c a"
    assert ek100.rotate_noun_key("machine:sous:vide") == "sous vide machine"
    assert ek100.rotate_noun_key("tap") == "tap"


def test_class_texts_from_real_csvs():
    verbs = ek100.load_verb_texts(os.path.join(EK100_DIR, ek100.VERB_CLASSES_CSV))
    nouns = ek100.load_noun_texts(os.path.join(EK100_DIR, ek100.NOUN_CLASSES_CSV))
    assert len(verbs) == 97 and verbs[0] == "take" and verbs[1] == "put"
    raw_keys = [r[1] for r in list(csv.reader(open(os.path.join(EK100_DIR, ek100.NOUN_CLASSES_CSV))))[1:]]
    assert len(nouns) == len(raw_keys) == 305     # v2: 300 classes + hands, foot, gloves
    assert nouns[18] == "chopping board" and raw_keys[18] == "board:chopping"
    assert nouns[raw_keys.index("machine:washing")] == "washing machine"
    assert nouns[raw_keys.index("machine:sous:vide")] == "sous vide machine"
    assert nouns[0] == "tap" and nouns[2] == "plate"


def _seg(i, vn, narration="x"):
    v, n = ek100.split_action_key(vn)
    return ek100.Segment(i, f"P01_01_{i}", "P01", "P01_01", 0.0, 1.0, 0, 60, narration, "v", v, "n", n)


def test_label_space_sorts_actions_as_strings():
    segs = [_seg(i, vn) for i, vn in enumerate(["0:2", "10:1", "0:10", "1:0", "0:2", "2:0"])]
    ls = ek100.LabelSpace(["take", "put", "wash"] + ["v"] * 8, ["tap", "spoon", "plate"] + ["n"] * 8, segs)
    # Plain string order: ":" (0x3a) sorts after digits, so "10:1" comes before "1:0".
    assert ls.actions == ["0:10", "0:2", "10:1", "1:0", "2:0"]
    assert ls.action_id("0:10") == 0 and ls.action_id("0:2") == 1 and ls.action_id("10:1") == 2
    assert ls.official_key("0:2") == "take plate"
    with pytest.raises(KeyError, match="not in the label space"):
        ls.action_id("5:5")


def test_narration_pools_and_frequency_order():
    names = ["take cup", "pick up cup", "take cup", "grab cup", "pick up cup", "take cup"]
    segs = [_seg(i, "0:5", t) for i, t in enumerate(names)] + [_seg(9, "1:5", "put cup")]
    ls = ek100.LabelSpace(["take", "put"], ["n"] * 6, segs)
    assert ls.narrations["0:5"] == names
    assert ls.narrations_by_frequency["0:5"] == ["take cup", "pick up cup", "grab cup"]
    assert ls.narrations_by_frequency["1:5"] == ["put cup"]


def _independent_actions(paths):
    pairs = set()
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        pairs |= {f"{int(r[10])}:{int(r[12])}" for r in rows}
    return sorted(pairs)


def test_real_label_space_val_plus_uda_train_matches_independent_count():
    ann = ek100.load_annotations(VAL)          # default label CSVs: uda_source_train + validation locally
    expected = _independent_actions([UDA, VAL])
    assert len(ann.segments) == 9668
    assert ann.label_space.actions == expected
    assert ann.label_space.num_actions == len(expected) == 2179
    assert len(_independent_actions([VAL])) == 1352
    assert len(_independent_actions([UDA])) == 1663
    ls = ann.label_space
    assert ls.action_id("0:10") < ls.action_id("0:2")
    # Pools follow file order: uda train rows first, then validation rows.
    val_rows = list(csv.reader(open(VAL, newline="")))[1:]
    uda_rows = list(csv.reader(open(UDA, newline="")))[1:]
    expected_pool = [r[8] for r in uda_rows + val_rows if (r[10], r[12]) == ("0", "2")]
    assert ls.narrations["0:2"] == expected_pool
    counts = collections.Counter(expected_pool)
    freq = [counts[t] for t in ls.narrations_by_frequency["0:2"]]
    assert freq == sorted(freq, reverse=True) and set(ls.narrations_by_frequency["0:2"]) == set(counts)


def test_real_segments_fields():
    segs = ek100.read_segments(VAL, 97, 305)
    first = segs[0]
    assert (first.narration_id, first.video_id, first.participant_id) == ("P01_11_0", "P01_11", "P01")
    assert first.start == 0.0 and first.stop == pytest.approx(1.89) and first.vn == "0:2"
    assert [s.row_index for s in segs[:3]] == [0, 1, 2]
    assert all(s.stop >= s.start for s in segs)


def test_video_info():
    info = ek100.load_video_info(os.path.join(EK100_DIR, ek100.VIDEO_INFO_CSV))
    assert len(info) == 700
    assert info["P01_01"]["duration"] == pytest.approx(1652.152817)
    assert info["P01_01"]["fps"] == pytest.approx(59.94, abs=1e-2)


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize("row,field,msg", [
    (GOOD_ROW.replace("00:00:00.14", "0:0:0.14"), "start_timestamp", "hh:mm:ss.xx"),
    (GOOD_ROW.replace("00:00:03.37", "00:00:00.10"), "stop_timestamp", "before start_timestamp"),
    (GOOD_ROW.replace(",8,202,", ",8,x2,"), "stop_frame", "non-negative integer"),
    (GOOD_ROW.replace(",open,3,", ",open,three,"), "verb_class", "non-negative integer"),
    (GOOD_ROW.replace(",open,3,", ",open,97,"), "verb_class", "unknown verb class 97"),
    (GOOD_ROW.replace(",door,3,", ",door,305,"), "noun_class", "unknown noun class 305"),
    (GOOD_ROW.replace("P01_01_0,P01,P01_01", ",P01,P01_01"), "narration_id", "empty"),
    (GOOD_ROW.replace(",open door,", ", ,"), "narration", "empty"),
])
def test_malformed_row_error_names_file_line_field(tmp_path, row, field, msg):
    path = _write(tmp_path, "bad.csv", [HEADER, GOOD_ROW.replace("P01_01_0", "P01_01_9"), row])
    with pytest.raises(ek100.AnnotationError, match=rf"bad\.csv: line 3: field '{field}': .*{msg}"):
        ek100.read_segments(path, 97, 305)


def test_malformed_structure_errors(tmp_path):
    path = _write(tmp_path, "short.csv", [HEADER, "P01_01_0,P01,P01_01"])
    with pytest.raises(ek100.AnnotationError, match=r"short\.csv: line 2: expected 15 fields, got 3"):
        ek100.read_segments(path)
    path = _write(tmp_path, "hdr.csv", ["a,b,c", GOOD_ROW])
    with pytest.raises(ek100.AnnotationError, match=r"hdr\.csv: line 1: expected header"):
        ek100.read_segments(path)
    path = _write(tmp_path, "dup.csv", [HEADER, GOOD_ROW, GOOD_ROW])
    with pytest.raises(ek100.AnnotationError, match=r"dup\.csv: line 3: field 'narration_id': duplicate of line 2"):
        ek100.read_segments(path)
    path = _write(tmp_path, "classes.csv", ["id,key,instances,category", "0,take,[],x", "2,put,[],x"])
    with pytest.raises(ek100.AnnotationError, match=r"classes\.csv: line 3: field 'id': expected 1, got '2'"):
        ek100.load_verb_texts(path)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        ek100.read_segments(str(tmp_path / "missing.csv"))


def test_embedded_sample_is_an_unmodified_subset():
    ann = ek100.load_annotations(ek100.SAMPLE_VALIDATION_CSV)
    assert len(ann.segments) == 279 and len(ann.video_info) == 9
    sample_uda = os.path.join(ek100.SAMPLE_DIR, "EPIC_100_uda_source_train.csv")
    assert ann.label_space.actions == _independent_actions([sample_uda, ek100.SAMPLE_VALIDATION_CSV])
    for name in ("EPIC_100_validation.csv", "EPIC_100_uda_source_train.csv"):
        full = set(open(os.path.join(EK100_DIR, name)).read().splitlines())
        assert set(open(os.path.join(ek100.SAMPLE_DIR, name)).read().splitlines()) <= full
    for name in (ek100.VERB_CLASSES_CSV, ek100.NOUN_CLASSES_CSV):
        assert open(os.path.join(ek100.SAMPLE_DIR, name)).read() == open(os.path.join(EK100_DIR, name)).read()
    total = sum(os.path.getsize(os.path.join(ek100.SAMPLE_DIR, f)) for f in os.listdir(ek100.SAMPLE_DIR))
    assert total < 200_000


def test_extra_field_is_an_error(tmp_path):
    path = _write(tmp_path, "extra.csv", [HEADER, GOOD_ROW + ",oops"])
    with pytest.raises(ek100.AnnotationError, match=r"extra\.csv: line 2: expected 15 fields, got 16"):
        ek100.read_segments(path)
