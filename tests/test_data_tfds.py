"""TFDS builder ek100_mqa: builds offline from a tiny synthetic manual_dir and loads with tfds.load."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_prep.tfds_ek100_mqa  # noqa: F401  (registers ek100_mqa)
from llavaction_jax.data import ek100
from data_prep import predictions
from data_prep.synthetic_videos import NOUN_COLOURS, make_synthetic_dataset
from data_prep.tfds_ek100_mqa import Ek100Mqa
from tests.conftest import EK100_DIR

FPS = 30


def _hms(t):
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:05.2f}"


def _pick_rows(path, n, video_prefix):
    """The first n rows of one video with pairwise distinct actions, re-timed to 1.5 s clips 0.5 s apart."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows, seen, video = [], set(), None
        for row in reader:
            vid, vn = row[2], (row[10], row[12])
            if not vid.startswith(video_prefix) or (video is not None and vid != video) or vn in seen:
                continue
            video = vid
            seen.add(vn)
            start = 0.5 + 2.0 * len(rows)
            row[4], row[5] = _hms(start), _hms(start + 1.5)
            row[6], row[7] = str(int(start * FPS) + 1), str(int((start + 1.5) * FPS) + 1)
            rows.append(row)
            if len(rows) == n:
                return header, rows
    raise AssertionError(f"{path}: not enough distinct rows")


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    manual = tmp_path_factory.mktemp("ek100_mqa_manual")
    ann = manual / "annotations"
    ann.mkdir()
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes_v2.csv"):
        shutil.copy(os.path.join(EK100_DIR, name), ann / name)
    splits = {"EPIC_100_validation.csv": _pick_rows(os.path.join(EK100_DIR, "EPIC_100_validation.csv"), 8, "P01"),
              "EPIC_100_train.csv": _pick_rows(os.path.join(EK100_DIR, "EPIC_100_uda_source_train.csv"), 8, "P02")}
    synth_rows = []
    for name, (header, rows) in splits.items():
        with open(ann / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        synth_rows += [{"video_id": r[2], "participant_id": r[1], "start": r[4], "stop": r[5],
                        "verb_class": int(r[10]), "noun_class": int(r[12])} for r in rows]
    make_synthetic_dataset(synth_rows, str(manual / "videos"), "original", fps=FPS, size=64, seed=0)
    # Synthetic AVION-style predictions (tiny_avion config): top-5 for validation, top-10 for train.
    (manual / "predictions").mkdir()
    for split, name, k in (("validation", "avion_pred_ids_val.json", 5), ("train", "avion_pred_ids_train.json", 10)):
        a = ek100.load_annotations(str(ann / f"EPIC_100_{split}.csv"), with_video_info=False)
        preds = predictions.make_synthetic_predictions(a, k, seed=0)
        predictions.write_predictions(str(manual / "predictions" / name), preds, a)
    return manual, splits


def test_configs_registered():
    names = {c.name for c in Ek100Mqa.BUILDER_CONFIGS}
    assert {"8f_avion", "16f_tim", "32f_random", "tiny_random"} <= names
    assert "ek100_mqa" in tfds.list_builders()


def test_build_offline_and_load(manual_dir, tmp_path):
    manual, splits = manual_dir
    dl = tfds.download.DownloadConfig(manual_dir=str(manual))
    ds = tfds.load("ek100_mqa/tiny_random", split="validation", data_dir=str(tmp_path),
                   download_and_prepare_kwargs={"download_config": dl})
    examples = list(tfds.as_numpy(ds))
    header, rows = splits["EPIC_100_validation.csv"]
    by_id = {r[0]: r for r in rows}
    assert sorted(e["id"].decode() for e in examples) == sorted(by_id)
    for e in examples:
        row = by_id[e["id"].decode()]
        assert e["frames"].shape == (4, 32, 32, 3) and e["frames"].dtype == np.uint8
        start = ek100.parse_timestamp(row[4])
        ids = np.convolve(np.linspace(round(start * FPS), round((start + 1.5) * FPS), 5), [.5, .5], "valid")
        np.testing.assert_allclose(e["frame_times"], ids.astype(int) / FPS, rtol=1e-6)
        # the object's noun colour is visible in every frame of the clip
        colour = NOUN_COLOURS[int(row[12]) % len(NOUN_COLOURS)].astype(int)
        assert all((np.abs(f.astype(int) - colour).max(axis=2) < 50).sum() > 4 for f in e["frames"])
        assert (e["verb_class"], e["noun_class"]) == (int(row[10]), int(row[12]))
        sample = json.loads(e["sample_json"])
        assert sample["source"] == "random" and len(e["options"]) == 5
        letter = e["answer_letter"].decode()
        assert e["answer"].decode() == f"{letter}. {row[8]}"            # GT option is the clip's narration
        assert e["question"].decode().startswith("<image>\n")
    # train split exists too, and the built dataset reloads from disk without the builder code path
    train = tfds.load("ek100_mqa/tiny_random", split="train", data_dir=str(tmp_path), download=False)
    assert len(list(train)) == len(splits["EPIC_100_train.csv"][1])
    builder = tfds.builder_from_directory(os.path.join(str(tmp_path), "ek100_mqa", "tiny_random", "1.0.0"))
    assert builder.info.splits["validation"].num_examples == len(rows)
    assert builder.info.metadata["skipped"] == {"train": [], "validation": []}


def test_avion_config_uses_predictions_and_reports_bad_videos(manual_dir, tmp_path):
    manual, splits = manual_dir
    broken = tmp_path / "manual"
    shutil.copytree(manual, broken)
    # Two train clips point at a video that does not exist: they are skipped and recorded, not fatal.
    header, rows = splits["EPIC_100_train.csv"]
    rows = [r[:2] + ["P02_99"] + r[3:] if i in (1, 4) else r for i, r in enumerate(rows)]
    with open(broken / "annotations" / "EPIC_100_train.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    builder = Ek100Mqa(config="tiny_avion", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(broken)))
    val = list(tfds.as_numpy(builder.as_dataset(split="validation")))
    assert len(val) == len(splits["EPIC_100_validation.csv"][1])
    for e in val:
        s = json.loads(e["sample_json"])
        assert s["source"] == "avion" and s["mode"] == "benchmark" and len(s["options"]) == 5
    train = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert sorted(e["id"].decode() for e in train) == sorted(r[0] for i, r in enumerate(rows) if i not in (1, 4))
    assert all(json.loads(e["sample_json"])["mode"] == "train" for e in train)
    skipped = builder.info.metadata["skipped"]
    assert skipped["validation"] == []
    assert sorted(x["id"] for x in skipped["train"]) == sorted([rows[1][0], rows[4][0]])
    assert all("P02_99.MP4: video file not found" in x["reason"] for x in skipped["train"])
    # reloading from disk keeps the skip list
    again = tfds.builder_from_directory(builder.data_dir)
    assert len(again.info.metadata["skipped"]["train"]) == 2
    assert again.info.metadata["missing_splits"] == {}
    # without train predictions the validation split still builds; the train split is reported missing
    os.remove(broken / "predictions" / "avion_pred_ids_train.json")
    b3 = Ek100Mqa(config="tiny_avion", data_dir=str(tmp_path / "data3"))
    b3.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(broken)))
    assert list(b3.info.splits) == ["validation"]
    assert "avion_pred_ids_train.json" in b3.info.metadata["missing_splits"]["train"]


def test_missing_manual_dir_is_a_clear_error(tmp_path):
    empty = tmp_path / "manual"
    empty.mkdir()
    (empty / "x").write_text("")
    with pytest.raises(FileNotFoundError, match="nothing to build.*no annotations/EPIC_100_validation.csv"):
        Ek100Mqa(config="tiny_random", data_dir=str(tmp_path / "d")).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))


def test_default_manual_dir_under_data_dir(manual_dir, tmp_path):
    manual, splits = manual_dir
    (tmp_path / "downloads").mkdir()
    os.symlink(manual, tmp_path / "downloads" / "manual")      # TFDS default: <data_dir>/downloads/manual
    ds = tfds.load("ek100_mqa/tiny_random", split="validation", data_dir=str(tmp_path))
    assert len(list(ds)) == len(splits["EPIC_100_validation.csv"][1])
