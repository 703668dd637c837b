"""EK100-MQA generation on the real validation CSV with a synthetic action-model prediction file."""
import collections
import csv
import json
import os

import pytest
from scipy import stats

from conftest import EK100_DIR
from llavaction_jax.data import ek100, prompts
from data_prep import make_mqa, mqa, predictions

VAL = os.path.join(EK100_DIR, "EPIC_100_validation.csv")
LETTERS5 = ["A", "B", "C", "D", "E"]


@pytest.fixture(scope="module")
def ann():
    return ek100.load_annotations(VAL)


@pytest.fixture(scope="module")
def pred_file(tmp_path_factory, ann):
    path = str(tmp_path_factory.mktemp("preds") / "synthetic_tim_val.json")
    assert make_mqa.main(["--annotations", VAL, "--write-synthetic-predictions", path, "--k", "20",
                          "--seed", "3", "--top1-acc", "0.55"]) == 0
    return path


@pytest.fixture(scope="module")
def preds(pred_file, ann):
    return predictions.load_predictions(pred_file, ann, 20)


@pytest.fixture(scope="module")
def benchmark_files(tmp_path_factory, pred_file):
    out = tmp_path_factory.mktemp("mqa")
    paths = []
    for workers in (1, 4):
        path = str(out / f"bench_w{workers}.jsonl")
        assert make_mqa.main(["--annotations", VAL, "--predictions", pred_file, "--source", "tim",
                              "--mode", "benchmark", "--k", "5", "--representation", "GT_random_narration",
                              "--seed", "0", "--workers", str(workers), "--out", path]) == 0
        paths.append(path)
    return paths


def _independent_predictions(pred_file):
    with open(pred_file) as f:
        raw = json.load(f)
    with open(VAL, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return raw, rows


def test_benchmark_is_byte_identical_for_1_and_4_workers(benchmark_files):
    with open(benchmark_files[0], "rb") as a, open(benchmark_files[1], "rb") as b:
        assert a.read() == b.read()


def test_benchmark_questions_are_well_formed(benchmark_files, pred_file, ann):
    qs = mqa.read_questions(benchmark_files[0])
    raw, rows = _independent_predictions(pred_file)
    assert len(qs) == 9668
    for r, (q, row) in enumerate(zip(qs, rows)):
        gt = f"{int(row[10])}:{int(row[12])}"
        assert q["id"] == q["narration_id"] == row[0] and q["video_id"] == row[2] and q["participant_id"] == row[1]
        assert q["start_timestamp"] == pytest.approx(ek100.parse_timestamp(row[4]))
        assert q["stop_timestamp"] == pytest.approx(ek100.parse_timestamp(row[5]))
        assert (q["verb_class"], q["noun_class"]) == (int(row[10]), int(row[12]))
        assert q["action_id"] == ann.label_space.action_to_id[gt]
        assert [o[:3] for o in q["options"]] == [f"{x}. " for x in LETTERS5]
        texts = [o[3:] for o in q["options"]]
        assert len(set(texts)) == 5
        assert q["option_actions"].count(gt) == 1
        idx = q["option_actions"].index(gt)
        assert q["answer"] == LETTERS5[idx] and texts[idx] == q["answer_text"]
        assert sum(t == q["answer_text"] for t in texts) == 1
        # GT_random_narration: the GT option is the clip's own narration.
        assert q["answer_text"] == prompts.normalise_option_text(row[8]) and q["narration"] == row[8]
        # Benchmark rule: top-5, with the 5th replaced by the GT when the GT is missing.
        expected = list(raw[str(r)]["predictions"][:5])
        if gt not in expected:
            expected[-1] = gt
        assert sorted(q["option_actions"]) == sorted(expected)
        assert q["conversations"] == [
            {"from": "human", "value": "<image>\n" + prompts.mcq_prompt(q["options"])},
            {"from": "gpt", "value": q["options"][idx]}]
        assert q["task"] == "mqa" and q["source"] == "tim" and q["mode"] == "benchmark" and q["gt_in_options"]
        # The reference parser reads the gold answer back to the right letter.
        assert prompts.parse_answer(q["conversations"][1]["value"], q["options"]) == q["answer"]


def test_benchmark_answer_letters_are_uniform(benchmark_files):
    qs = mqa.read_questions(benchmark_files[0])
    counts = collections.Counter(q["answer"] for q in qs)
    assert set(counts) == set(LETTERS5)
    _, p = stats.chisquare([counts[x] for x in LETTERS5])
    assert p > 0.001, counts


def test_recognition_best_accuracy_equals_recall_at_20(ann, preds, pred_file):
    qs = mqa.generate_questions(ann, preds, mode="recognition", k=20, representation="GT_random_narration",
                                source="tim", seed=0)
    raw, rows = _independent_predictions(pred_file)
    recall20 = sum(f"{int(row[10])}:{int(row[12])}" in raw[str(r)]["predictions"][:20]
                   for r, row in enumerate(rows)) / len(rows)
    best = sum(q["answer"] is not None for q in qs) / len(qs)
    assert best == recall20
    assert 0.5 < recall20 < 1.0                     # the synthetic file really misses some GTs
    for q in qs:
        assert len(q["options"]) == 20 and len({o[3:] for o in q["options"]}) == 20
        assert (q["answer"] is None) == (not q["gt_in_options"])
        if q["answer"] is None:
            assert q["conversations"][1]["value"] == q["answer_text"]
        else:
            assert q["options"][ord(q["answer"]) - 65][3:] == q["answer_text"]


def test_train_mode_distractors_from_top_2k(ann, preds):
    qs = mqa.generate_questions(ann, preds, mode="train", k=5, representation="GT_random_narration",
                                source="avion", seed=1)
    for q, seg in zip(qs, ann.segments):
        assert q["option_actions"].count(seg.vn) == 1 and len(set(q["option_actions"])) == 5
        top2k = set(preds[seg.row_index][:10]) - {seg.vn}
        assert set(q["option_actions"]) - {seg.vn} <= top2k


def test_random_mode_distinct_non_gt(ann):
    qs = mqa.generate_questions(ann, None, mode="random", k=5, representation="official_key", seed=2, workers=2)
    assert len(qs) == 9668
    for q, seg in zip(qs, ann.segments):
        acts = q["option_actions"]
        assert acts.count(seg.vn) == 1 and len(set(acts)) == 5
        assert all(a in ann.label_space.action_to_id for a in acts)
        assert [o[3:] for o in q["options"]] == [ann.label_space.official_key(a) for a in acts]
        assert q["source"] == "random"


def test_representations(ann, preds):
    subset = ek100.Annotations(ann.path, ann.segments[:400], ann.label_space)
    ls = ann.label_space
    gt_key = mqa.generate_questions(subset, preds, mode="benchmark", k=5, representation="GT_key", seed=0)
    top1 = mqa.generate_questions(subset, preds, mode="benchmark", k=5, representation="top1_narration", seed=0)
    for qk, qt, seg in zip(gt_key, top1, subset.segments):
        for opt, act in zip(qk["options"], qk["option_actions"]):
            want = seg.narration if act == seg.vn else ls.official_key(act)
            assert opt[3:] == prompts.normalise_option_text(want)
        gt_idx = qt["option_actions"].index(seg.vn)
        assert qt["answer_text"] == prompts.normalise_option_text(ls.narrations_by_frequency[seg.vn][0])
        assert qt["options"][gt_idx][3:] == qt["answer_text"]


def test_option_text_collision_is_resolved(ann, preds):
    # GT 6:0 ("turn-on tap") narrated "open tap" collides with the official key of 3:0 ("open tap").
    seg = next(s for s in ann.segments if s.vn == "6:0" and s.narration == "open tap")
    row = ["3:0"] + [a for a in preds[seg.row_index] if a not in ("3:0", "6:0")][:19]
    q = mqa.make_question(seg, row, ann.label_space, mode="benchmark", k=5, representation="GT_key",
                          source="tim", seed=0)
    texts = [o[3:] for o in q["options"]]
    assert len(set(texts)) == 5 and "open tap" in texts
    assert q["answer_text"] == "open tap" and "3:0" not in q["option_actions"]   # replaced by a spare prediction
    assert set(q["option_actions"]) - {"6:0"} <= set(row)


def test_seed_changes_output_and_is_reproducible(ann, preds):
    subset = ek100.Annotations(ann.path, ann.segments[:200], ann.label_space)
    a = mqa.generate_questions(subset, preds, mode="benchmark", k=5, seed=0)
    b = mqa.generate_questions(subset, preds, mode="benchmark", k=5, seed=0)
    c = mqa.generate_questions(subset, preds, mode="benchmark", k=5, seed=1)
    assert a == b and a != c


def test_synthetic_predictions_are_deterministic_and_confusable(ann):
    p1 = predictions.make_synthetic_predictions(ann, 10, seed=5, top1_acc=0.5)
    p2 = predictions.make_synthetic_predictions(ann, 10, seed=5, top1_acc=0.5)
    p3 = predictions.make_synthetic_predictions(ann, 10, seed=6, top1_acc=0.5)
    assert p1 == p2 and p1 != p3
    assert abs(predictions.recall_at_k(p1, ann, 1) - 0.5) < 0.03
    shared = total = 0
    for seg in ann.segments:
        row = p1[seg.row_index]
        assert len(row) == 10 and len(set(row)) == 10
        for vn in row:
            if vn != seg.vn:
                v, n = ek100.split_action_key(vn)
                shared += v == seg.verb_class or n == seg.noun_class
                total += 1
    assert shared / total > 0.95


def _write_preds(tmp_path, data):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return str(path)


def _valid_pred_dict(ann, preds, n_pred=5):
    return {str(s.row_index): {"predictions": preds[s.row_index][:n_pred], "target": s.vn} for s in ann.segments}


def test_prediction_file_errors(tmp_path, ann, preds):
    data = _valid_pred_dict(ann, preds)
    for r in ("3", "7"):
        del data[r]
    with pytest.raises(predictions.PredictionError, match=r"missing predictions for 2 row\(s\): 3, 7"):
        predictions.load_predictions(_write_preds(tmp_path, data), ann, 5)
    data = _valid_pred_dict(ann, preds)
    data["11"]["predictions"] = data["11"]["predictions"][:3]
    with pytest.raises(predictions.PredictionError, match=r"fewer than k=5 predictions in 1 row\(s\): 11"):
        predictions.load_predictions(_write_preds(tmp_path, data), ann, 5)
    data = _valid_pred_dict(ann, preds)
    data["4"]["predictions"][2] = "999:1"
    with pytest.raises(predictions.PredictionError, match=r"unknown verb/noun class ids .* 4 \('999:1'\)"):
        predictions.load_predictions(_write_preds(tmp_path, data), ann, 5)
    data = _valid_pred_dict(ann, preds)
    data["5"]["target"] = "96:304"
    with pytest.raises(predictions.PredictionError, match=r"target differs .* 5 \(file '96:304' vs CSV"):
        predictions.load_predictions(_write_preds(tmp_path, data), ann, 5)
    data = _valid_pred_dict(ann, preds)
    data["9668"] = data["0"]
    with pytest.raises(predictions.PredictionError, match=r"rows beyond the 9668 annotation rows: 1 row\(s\): 9668"):
        predictions.load_predictions(_write_preds(tmp_path, data), ann, 5)
    with pytest.raises(predictions.PredictionError, match=r"keys must be row indices"):
        predictions.load_predictions(_write_preds(tmp_path, {"P01_11_0": {"predictions": []}}), ann, 5)


def test_mode_needs_enough_predictions(ann, preds):
    short = {r: p[:5] for r, p in preds.items()}
    with pytest.raises(ValueError, match=r"mode 'train' with k=5 needs 10 predictions per row"):
        mqa.generate_questions(ann, short, mode="train", k=5)
    with pytest.raises(ValueError, match="unknown representation"):
        mqa.generate_questions(ann, preds, mode="benchmark", k=5, representation="gpt_narration")


@pytest.fixture(scope="module")
def sample_pred_file(tmp_path_factory):
    pred_path = str(tmp_path_factory.mktemp("sample") / "preds.json")
    assert make_mqa.main(["--annotations", ek100.SAMPLE_VALIDATION_CSV, "--write-synthetic-predictions", pred_path,
                          "--k", "20", "--seed", "1"]) == 0
    return pred_path


@pytest.mark.parametrize("mode", mqa.MODES)
@pytest.mark.parametrize("representation", mqa.REPRESENTATIONS)
def test_embedded_sample_all_modes_and_representations(tmp_path, sample_pred_file, mode, representation):
    pred_path = sample_pred_file
    out = str(tmp_path / "q.jsonl")
    args = ["--annotations", ek100.SAMPLE_VALIDATION_CSV, "--mode", mode, "--representation", representation,
            "--seed", "4", "--out", out]
    if mode != "random":
        args += ["--predictions", pred_path, "--source", "tim"]
    assert make_mqa.main(args) == 0
    qs = mqa.read_questions(out)
    k = mqa.DEFAULT_K[mode]
    assert len(qs) == 279
    for q in qs:
        assert len(q["options"]) == k and len({o[3:] for o in q["options"]}) == k
        assert [o[0] for o in q["options"]] == [chr(65 + i) for i in range(k)]
        if q["answer"] is not None:
            assert prompts.parse_answer(q["conversations"][1]["value"], q["options"]) == q["answer"]
        else:
            assert mode == "recognition"
