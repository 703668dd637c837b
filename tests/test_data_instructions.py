"""Exact prompt strings (llavaction_jax.data.prompts) and instruction-data generation (data_prep.instructions)."""
import json
import os
import re

import pytest

from conftest import EK100_DIR, load_test_data_module
from llavaction_jax.data import ek100, prompts
from data_prep import instructions, make_instructions, predictions
from llavaction_jax import cli

PREFIX = ("You are seeing this video from egocentric view and you are the person. Your hands are sometimes "
          "interacting with objects. What action are you doing? ")
OPTIONS = ["A. take plate", "B. put down plate", "C. wash cup"]


def test_perspective_prefix_and_system_prompt_exact():
    assert prompts.PERSPECTIVE_PREFIX == PREFIX
    assert prompts.PERSPECTIVE_PREFIX.endswith("doing? ")
    assert prompts.SYSTEM_PROMPT == "You are a helpful assistant."
    assert prompts.IMAGE_PLACEHOLDER == "<image>"


def test_mcq_prompt_exact():
    expected = (PREFIX + "Given multiple choices, format your answer briefly such as 'A. move knife'. \n"
                "Here are the options of actions you are selecting:\nA. take plate, B. put down plate, C. wash cup")
    assert prompts.mcq_prompt(OPTIONS) == expected


def test_prior_mcq_prompt_exact():
    prior = {"prev2_offset": 4.37, "prev2_narration": "open tap", "prev1_offset": 1.5, "prev1_narration": "take cup"}
    expected = (PREFIX + "\n4.37 seconds ago, you started an action open tap. 1.5 seconds ago, you started an action "
                "take cup. What action are you currently performing? Here are the options of actions you can select:\n"
                "A. take plate, B. put down plate, C. wash cup")
    assert prompts.prior_mcq_prompt(OPTIONS, prior) == expected


def test_direct_narration_and_caption_prompts_exact():
    assert prompts.direct_narration_prompt() == (
        PREFIX + " What action are you performing? Give a short sentence such as 'move knife'.")
    assert "doing?  What action are you performing?" in prompts.direct_narration_prompt()
    assert prompts.caption_prompt() == (
        PREFIX + " Describe in details what you see from the video frames. You must talk in the first person "
        "perspective. Try to focus on what you are doing. ")


def test_temporal_detection_prompt_exact():
    assert prompts.temporal_detection_prompt("open door", 3.2299) == (
        "The provided video contains an action 'open door' that lasts 3.23 seconds. What is the relative start and "
        "end time of the action in seconds? Format it as 'start_timestamp: end_timestamp' and round to 2 decimal "
        "places.")
    # str(round(x, 2)) as generate_temporal_detection_data.py, not "%.2f".
    assert "lasts 1.8 seconds" in prompts.temporal_detection_prompt("open door", 1.8)
    assert "lasts 2.0 seconds" in prompts.temporal_detection_prompt("open door", 2.0)


def test_time_instruction_inserted_without_separator():
    assert prompts.time_instruction(2.5, 8) == (
        "The provided video lasts for 2.500 seconds, and 8 frames are uniformly sampled from it.")
    human = "<image>\n" + prompts.mcq_prompt(OPTIONS)
    out = prompts.insert_time_instruction(human, 1.23456, 16)
    assert out == ("<image>\nThe provided video lasts for 1.235 seconds, and 16 frames are uniformly sampled from it."
                   + prompts.mcq_prompt(OPTIONS))


def test_insert_time_instruction_rejects_missing_image_token():
    with pytest.raises(ValueError, match="must start with"):
        prompts.insert_time_instruction("no image here", 1.0, 4)


def test_parse_answer_follows_reference_parser():
    assert prompts.parse_answer("B. put down plate", OPTIONS) == "B"
    assert prompts.parse_answer("I think A. take plate. It is clear.", OPTIONS) == "A"
    # The LAST "X. text" match wins.
    assert prompts.parse_answer("A. take plate\nC. wash cup", OPTIONS) == "C"
    assert prompts.parse_answer("C. wash cup,", OPTIONS) == "C"          # rstrip(",")
    assert prompts.parse_answer("wash cup", OPTIONS) == "C"              # no letter: whole text compared
    assert prompts.parse_answer("D. cut onion", OPTIONS) is None
    assert prompts.parse_answer("A. take plates", OPTIONS) is None       # exact string match only
    assert prompts.parse_answer("", OPTIONS) is None
    # EK100 narrations such as "rinse knife." can only be parsed back after normalisation (cut at the first ".").
    assert prompts.normalise_option_text("rinse knife.") == "rinse knife"
    assert prompts.parse_answer("B. rinse knife.", ["A. wash cup", "B. rinse knife."]) == "B"
    # Reference quirk: an output containing "None" is compared verbatim after removing "None. ".
    assert prompts.parse_answer("None. wash cup", OPTIONS) == "C"


# ---- instruction data ----------------------------------------------------------------------------------------------

VAL = os.path.join(EK100_DIR, "EPIC_100_validation.csv")
HEADER = ",".join(ek100.SEGMENT_COLUMNS)


def _ts(sec):
    return f"00:{int(sec // 60):02d}:{sec % 60:05.2f}"


def _mini_csv(tmp_path, segs):
    """segs: (narration_id, video_id, start, stop, narration, verb_class, noun_class)."""
    lines = [HEADER]
    for nid, vid, start, stop, narr, v, n in segs:
        lines.append(f"{nid},{vid.split('_')[0]},{vid},{_ts(start)},{_ts(start)},{_ts(stop)},"
                     f"{int(start * 60)},{int(stop * 60)},{narr},verb,{v},noun,{n},['noun'],[{n}]")
    path = tmp_path / "mini.csv"
    path.write_text("\n".join(lines) + "\n")
    return ek100.load_annotations(str(path), label_csvs=[], class_dir=EK100_DIR, with_video_info=False)


MINI = [  # file order is NOT end-time order on purpose
    ("P01_01_c", "P01_01", 5.5, 6.0, "open tap", 3, 0),
    ("P01_01_a", "P01_01", 0.0, 1.0, "take plate", 0, 2),
    ("P01_01_b", "P01_01", 2.0, 3.0, "put plate", 1, 2),
    ("P01_01_d", "P01_01", 9.1, 10.0, "wash cup", 2, 13),
    ("P01_01_e", "P01_01", 10.5, 11.0, "take cup", 0, 13),
    ("P01_01_f", "P01_01", 12.0, 13.0, "put cup", 1, 13),
    ("P01_01_g", "P01_01", 16.0, 16.5, "close tap", 4, 0),
    ("P02_01_x", "P02_01", 0.0, 10.0, "stir pot", 10, 11),
    ("P02_01_y", "P02_01", 1.0, 2.0, "take spoon", 0, 1),
    ("P02_01_z", "P02_01", 2.5, 3.0, "put spoon", 1, 1),
]


def test_prior_action_triples_gap_rule(tmp_path):
    ann = _mini_csv(tmp_path, MINI)
    triples = instructions.prior_action_triples(ann)
    assert set(triples) == {"P01_01_c", "P01_01_f", "P01_01_g", "P02_01_x"}
    assert triples["P01_01_c"] == {"prev2_offset": 5.5, "prev2_narration": "take plate", "prev1_offset": 3.5,
                                   "prev1_narration": "put plate", "cur_narration": "open tap"}
    # d -> e -> f: gaps 0.5 and 1.0; c -> d has a 3.1 s gap so neither d nor e qualify.
    assert triples["P01_01_f"]["prev2_offset"] == 2.9 and triples["P01_01_f"]["prev1_offset"] == 1.5
    # A gap of exactly 3 s still counts (<=).
    assert triples["P01_01_g"]["prev2_narration"] == "take cup" and triples["P01_01_g"]["prev1_offset"] == 4.0
    # Sorted by END time: x (0-10 s) comes after y and z; overlaps count as gaps <= 3 s; offsets can be negative.
    assert triples["P02_01_x"]["prev2_offset"] == -1.0 and triples["P02_01_x"]["prev1_offset"] == -2.5
    assert instructions.prior_action_triples(ann, max_gap=2.9).keys() == {"P01_01_c", "P01_01_f", "P02_01_x"}
    keyed = instructions.prior_action_triples(ann, representation="official_key")
    assert keyed["P01_01_c"]["prev2_narration"] == "take plate" and keyed["P01_01_c"]["cur_narration"] == "open tap"
    assert keyed["P01_01_g"]["prev1_narration"] == "put cup"


@pytest.fixture(scope="module")
def val_ann():
    return ek100.load_annotations(VAL)


@pytest.fixture(scope="module")
def val_preds(val_ann):
    return predictions.make_synthetic_predictions(val_ann, 10, seed=0)


def test_mcq_prior_fraction_and_exact_prior_prompt(val_ann, val_preds):
    samples = instructions.mcq_samples(val_ann, val_preds, source="avion", k=5, seed=0)
    triples = instructions.prior_action_triples(val_ann)
    with_triple = [s for s in samples if s["narration_id"] in triples]
    prior = [s for s in samples if s["task"] == "prior_mqa"]
    assert len(samples) == 9668 and len(with_triple) > 1000
    assert all(s["narration_id"] in triples for s in prior)
    frac = len(prior) / len(with_triple)
    assert abs(frac - 0.3) < 4 * (0.3 * 0.7 / len(with_triple)) ** 0.5
    for s in prior[:50]:
        assert s["prior"] == triples[s["narration_id"]]
        assert s["conversations"][0]["value"] == "<image>\n" + prompts.prior_mcq_prompt(s["options"], s["prior"])
    for s in samples:
        if s["task"] == "mqa":
            assert s["conversations"][0]["value"] == "<image>\n" + prompts.mcq_prompt(s["options"])
        assert s["id"] == f"mqa/avion/{s['narration_id']}" and s["mode"] == "train"
    none = instructions.mcq_samples(val_ann, val_preds, source="avion", prior_fraction=0.0)
    assert all(s["task"] == "mqa" for s in none)
    every = instructions.mcq_samples(val_ann, val_preds, source="avion", prior_fraction=1.0)
    assert sum(s["task"] == "prior_mqa" for s in every) == len(with_triple)


def test_direct_narration_sample_exact(val_ann):
    s = instructions.direct_narration_samples(val_ann)[0]
    assert s["conversations"] == [
        {"from": "human", "value": "<image>\n" + PREFIX + " What action are you performing? Give a short sentence "
                                   "such as 'move knife'."},
        {"from": "gpt", "value": "take plate"}]
    assert (s["task"], s["verb_class"], s["noun_class"]) == ("direct_narration", 0, 2)
    assert s["action_id"] == val_ann.label_space.action_id("0:2")
    keyed = instructions.direct_narration_samples(val_ann, "official_key")
    assert keyed[0]["conversations"][1]["value"] == "take plate"


@pytest.mark.parametrize("delta", [5.0, 3.0])
def test_temporal_detection_padding_bounds(val_ann, delta):
    samples = instructions.temporal_detection_samples(val_ann, delta=delta, seed=0)
    rel_starts = []
    for s, seg in zip(samples, val_ann.segments):
        answer = s["conversations"][1]["value"]
        assert re.fullmatch(r"\d+\.\d{1,2}, \d+\.\d{1,2}", answer), answer
        rel_start, rel_end = (float(x) for x in answer.split(", "))
        dur = seg.stop - seg.start
        assert s["conversations"][0]["value"] == "<image>\n" + prompts.temporal_detection_prompt(seg.narration, dur)
        assert 0.0 <= rel_start <= delta + 0.005
        assert rel_end - rel_start == pytest.approx(dur, abs=0.011)
        assert s["start_timestamp"] >= 0.0 and s["start_timestamp"] <= seg.start
        assert s["stop_timestamp"] >= seg.stop
        assert s["stop_timestamp"] - s["start_timestamp"] <= dur + delta + 0.011
        # Clamped to the video's end (a few annotations end slightly past it; those keep the action's stop).
        assert s["stop_timestamp"] <= max(val_ann.video_info[seg.video_id]["duration"], seg.stop)
        assert rel_start == pytest.approx(seg.start - s["start_timestamp"], abs=0.006)
        rel_starts.append(rel_start)
    # The start padding really varies over [0, delta] (clips near t=0 are clamped).
    assert max(rel_starts) > 0.9 * delta and sum(r < 0.1 * delta for r in rel_starts) > 100
    again = instructions.temporal_detection_samples(val_ann, delta=delta, seed=0)
    assert again == samples
    assert instructions.temporal_detection_samples(val_ann, delta=delta, seed=1) != samples


def test_temporal_detection_without_padding(tmp_path):
    ann = _mini_csv(tmp_path, MINI)
    for s, seg in zip(instructions.temporal_detection_samples(ann, delta=0.0), ann.segments):
        assert s["conversations"][1]["value"] == f"0.0, {round(seg.stop - seg.start, 2)}"
        assert (s["start_timestamp"], s["stop_timestamp"]) == (seg.start, seg.stop)


def _write_jsonl(tmp_path, name, records):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


CAPTION_REC = {"video": "P01-P01_11", "id": "P01-P01_11", "start_timestamp": 0.0, "end_timestamp": 1.89,
               "question_type": "gpt-gt-reason", "dataset_name": "EK100", "verb_id": 0, "noun_id": 2,
               "action_id": 7, "conversations": [{"from": "human", "value": "<image>\nwhatever"},
                                                 {"from": "gpt", "value": "I pick up a plate with my right hand."}]}


def test_caption_and_gpt_qa_conversion(tmp_path, val_ann):
    qa = dict(CAPTION_REC, question_type="gpt-gt-instruct-reason",
              conversations=[{"from": "human", "value": "<image>\nWhich hand holds the plate?"},
                             {"from": "gpt", "value": "The right hand."}])
    path = _write_jsonl(tmp_path, "cap.jsonl", [CAPTION_REC, qa])
    cap, q = instructions.convert_ek100_jsonl(path, val_ann)
    assert cap["conversations"] == [{"from": "human", "value": "<image>\n" + prompts.caption_prompt()},
                                    {"from": "gpt", "value": "I pick up a plate with my right hand."}]
    assert (cap["task"], cap["video_id"], cap["participant_id"]) == ("caption", "P01_11", "P01")
    assert (cap["start_timestamp"], cap["stop_timestamp"]) == (0.0, 1.89)
    assert cap["action_id"] == val_ann.label_space.action_id("0:2")      # recomputed in our label space
    assert q["task"] == "qa" and q["conversations"][0]["value"] == "<image>\nWhich hand holds the plate?"
    assert cap["id"] != q["id"]


@pytest.mark.parametrize("change,match", [
    ({"end_timestamp": None}, r"line 1: field 'end_timestamp': expected a number"),
    ({"video": "P01_11"}, r"line 1: field 'video': expected 'P01-P01_01'"),
    ({"question_type": "dpo"}, r"line 1: field 'question_type'"),
    ({"verb_id": 97}, r"line 1: field 'verb_id': unknown verb class 97"),
    ({"start_timestamp": 5.0}, r"line 1: field 'stop_timestamp': expected 0 <= start <= stop"),
    ({"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
     r"line 1: field 'conversations': turn 0 must come from 'human'"),
])
def test_caption_conversion_errors(tmp_path, val_ann, change, match):
    path = _write_jsonl(tmp_path, "bad.jsonl", [dict(CAPTION_REC, **change)])
    with pytest.raises(instructions.InstructionFormatError, match=r"bad\.jsonl: " + match):
        instructions.convert_ek100_jsonl(path, val_ann)


def test_video_qa_pass_through(tmp_path):
    recs = [{"id": "v1", "video": "academic/v1.mp4", "duration": 12.5, "data_source": "nextqa",
             "conversations": [{"from": "human", "value": "<image>\nWhat happens?"},
                               {"from": "gpt", "value": "A dog runs."},
                               {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "To catch a ball."}]},
            {"id": "v2", "video": "yt/v2.mp4",
             "conversations": [{"from": "human", "value": "Describe the video."}, {"from": "gpt", "value": "Rain."}]}]
    path = _write_jsonl(tmp_path, "qa.jsonl", recs)
    a, b = instructions.convert_video_qa_jsonl(path, durations={"yt/v2.mp4": 30.0})
    assert a["conversations"] == recs[0]["conversations"] and a["stop_timestamp"] == 12.5
    assert (a["task"], a["verb_class"], a["action_id"], a["video_id"]) == ("qa", -1, -1, "academic/v1.mp4")
    assert b["conversations"][0]["value"] == "<image>\nDescribe the video." and b["stop_timestamp"] == 30.0
    with pytest.raises(instructions.InstructionFormatError, match=r"qa\.jsonl: line 2: field 'duration': missing"):
        instructions.convert_video_qa_jsonl(path)
    bad = _write_jsonl(tmp_path, "odd.jsonl", [dict(recs[0], conversations=recs[0]["conversations"][:3])])
    with pytest.raises(instructions.InstructionFormatError, match=r"line 1: field 'conversations': expected an even"):
        instructions.convert_video_qa_jsonl(bad)


def test_make_instructions_cli(tmp_path):
    ann = _mini_csv(tmp_path, MINI)
    out = str(tmp_path / "mcq.jsonl")
    assert make_instructions.main(["--task", "mcq", "--mode", "random", "--annotations", ann.path,
                                   "--label-csvs", "--class-dir", EK100_DIR, "--prior-fraction", "1.0",
                                   "--out", out]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert [r["narration_id"] for r in rows] == [m[0] for m in MINI]
    assert {r["narration_id"] for r in rows if r["task"] == "prior_mqa"} == {"P01_01_c", "P01_01_f", "P01_01_g",
                                                                             "P02_01_x"}
    for r in rows:
        assert len(set(r["options"])) == 5 and r["options"][ord(r["answer"]) - 65] == f"{r['answer']}. " + \
            r["answer_text"]


def _noun_task():
    return load_test_data_module("noun_task")


def test_a_new_task_is_one_module_and_one_registry_line(tmp_path, monkeypatch, capsys):
    noun_task = _noun_task()
    out = str(tmp_path / "nouns.jsonl")
    ann = _mini_csv(tmp_path, MINI)
    argv = ["--task", noun_task.NAME, "--annotations", ann.path, "--label_csvs", "--class_dir", EK100_DIR,
            "--noun_prefix", "the ", "--out", out]
    # Not registered: neither the task nor its flag exist.
    with pytest.raises(SystemExit) as e:
        make_instructions.main(argv)
    assert e.value.code == 2 and "invalid choice: 'noun_qa'" in capsys.readouterr().err
    monkeypatch.setitem(instructions.TASKS, noun_task.NAME, noun_task.TASK)           # the one registry line
    assert make_instructions.main(argv) == 0
    assert capsys.readouterr().err.startswith(f"wrote {len(MINI)} noun_qa samples to {out}")
    rows = [json.loads(line) for line in open(out)]
    assert [r["narration_id"] for r in rows] == [m[0] for m in MINI]
    nouns = ek100.load_noun_texts(os.path.join(EK100_DIR, ek100.NOUN_CLASSES_CSV))
    for r, m in zip(rows, MINI):
        assert r["id"] == f"noun_qa/{m[0]}" and r["task"] == "noun_qa" and r["noun_class"] == m[6]
        assert r["conversations"] == [{"from": "human", "value": "<image>\nWhich object are you handling?"},
                                      {"from": "gpt", "value": "the " + nouns[m[6]]}]
    # The CLI's requirement checks come from the entry too (it reads annotations).
    assert cli.run(make_instructions.main, ["--task", "noun_qa", "--out", out]) == cli.EXIT_USER
    assert capsys.readouterr().err.strip() == "error: --annotations is required for --task noun_qa"
    # A flag two tasks declare differently is a programming error, said when the parser is built.
    clash = instructions.Task(noun_task.build, "clash", flags=(("--k", dict(type=str)),))
    monkeypatch.setitem(instructions.TASKS, "clash", clash)
    with pytest.raises(ValueError, match="declares --k unlike another task"):
        make_instructions.build_parser()


def test_original_ek100_mcq_direct_and_detection_records_convert(tmp_path, val_ann):
    options = ["A. pick up plate", "B. open tap", "C. take plate", "D. wash cup", "E. put down lid"]
    base = {"video": "P01-P01_11", "id": "P01-P01_11", "split": "train", "dataset_name": "EK100",
            "verb_id": 0, "noun_id": 2, "action_id": 84}
    recs = [
        dict(base, start_timestamp=0.0, end_timestamp=1.89, question_type="mc_GT_random_narration",
             conversations=[{"from": "human", "value": str(options)}, {"from": "gpt", "value": "C. take plate"}]),
        dict(base, start_timestamp=0.0, end_timestamp=1.89, question_type="direct_narration",
             conversations=[{"from": "human", "value": "<image>\nstale prompt"},
                            {"from": "gpt", "value": "take plate"}]),
        # generate_temporal_detection_data.py stores timestamps as strings.
        dict(base, start_timestamp="0.0", end_timestamp="4.12", question_type="temporal_detection",
             conversations=[{"from": "human", "value": prompts.temporal_detection_prompt("take plate", 1.89)},
                            {"from": "gpt", "value": "0.00, 1.89"}]),
    ]
    path = _write_jsonl(tmp_path, "orig.jsonl", recs)
    out = str(tmp_path / "converted.jsonl")
    assert make_instructions.main(["--task", "convert_ek100", "--input", path, "--annotations", VAL,
                                   "--source", "avion", "--out", out]) == 0
    mcq, direct, det = [json.loads(line) for line in open(out)]
    assert mcq["task"] == "mqa" and mcq["options"] == options and mcq["answer"] == "C"
    assert mcq["answer_text"] == "take plate" and mcq["source"] == "avion"
    assert mcq["conversations"][0]["value"] == "<image>\n" + prompts.mcq_prompt(options)
    assert direct["conversations"][0]["value"] == "<image>\n" + prompts.direct_narration_prompt()
    assert det["conversations"] == [
        {"from": "human", "value": "<image>\n" + prompts.temporal_detection_prompt("take plate", 1.89)},
        {"from": "gpt", "value": "0.00, 1.89"}]
    assert (det["start_timestamp"], det["stop_timestamp"]) == (0.0, 4.12)
    bad = dict(recs[0], conversations=[{"from": "human", "value": str(options)}, {"from": "gpt", "value": "F. x"}])
    with pytest.raises(instructions.InstructionFormatError, match=r"line 1: field 'conversations': the gpt answer"):
        instructions.convert_ek100_jsonl(_write_jsonl(tmp_path, "b1.jsonl", [bad]))
    bad = dict(recs[0], conversations=[{"from": "human", "value": "['A. x', 'C. y']"},
                                       {"from": "gpt", "value": "A. x"}])
    with pytest.raises(instructions.InstructionFormatError, match=r"field 'options': option 1 'C. y' is not 'B. text'"):
        instructions.convert_ek100_jsonl(_write_jsonl(tmp_path, "b2.jsonl", [bad]))


def test_temporal_detection_numbers_follow_the_original_rule(val_ann):
    """Every number as generate_temporal_detection_data.py writes it: process = lambda x: str(round(x, 2)); the
    relative times come from the rounded action start/end minus the rounded padded clip start."""
    samples = instructions.temporal_detection_samples(val_ann, delta=5.0, seed=0)
    short = 0
    for s, seg in zip(samples, val_ann.segments):
        process = lambda x: str(round(x, 2))     # noqa: E731 (the original's own helper)
        clip_start = process(s["start_timestamp"])
        want = (f"{process(float(process(seg.start)) - float(clip_start))}, "
                f"{process(float(process(seg.stop)) - float(clip_start))}")
        assert s["conversations"][1]["value"] == want
        assert f"lasts {process(seg.stop - seg.start)} seconds" in s["conversations"][0]["value"]
        short += bool(re.search(r"\.\d,|\.\d$", want))
    assert short > 100          # answers such as "1.8, 3.5" occur (the old "%.2f" wrote "1.80, 3.50")


def test_original_direct_narration_with_empty_human_turn_converts(tmp_path, val_ann):
    """generate_description.py writes direct-narration records with an empty human value; the prompt is rebuilt."""
    rec = {"video": "P01-P01_11", "id": "P01-P01_11", "split": "train", "question_type": "direct_narration",
           "dataset_name": "EK100", "start_timestamp": 0.0, "end_timestamp": 1.89, "verb_id": 0, "noun_id": 2,
           "action_id": 84, "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "take plate"}]}
    [out] = instructions.convert_ek100_jsonl(_write_jsonl(tmp_path, "direct.jsonl", [rec]), val_ann)
    assert out["task"] == "direct_narration"
    assert out["conversations"] == [{"from": "human", "value": "<image>\n" + prompts.direct_narration_prompt()},
                                    {"from": "gpt", "value": "take plate"}]
    # Only types whose prompt is rebuilt may have an empty question; an empty answer is never accepted.
    for change, turn in ((dict(question_type="temporal_detection"), 0), (dict(), 1)):
        bad = dict(rec, **change)
        if turn == 1:
            bad["conversations"] = [{"from": "human", "value": ""}, {"from": "gpt", "value": " "}]
        with pytest.raises(instructions.InstructionFormatError, match=rf"line 1: .*turn {turn} has an empty 'value'"):
            instructions.convert_ek100_jsonl(_write_jsonl(tmp_path, "bad.jsonl", [bad]), val_ann)


def test_video_qa_gets_the_original_generic_time_instruction(tmp_path):
    """LLaVA-Video-178K style samples: "<image>\\n{The video lasts for %.2f ... this video.}\\n" + the human value
    with <image> removed (LazySupervisedDataset._get_item, non-EK100 branch); EK100 samples keep theirs."""
    from configs import tiny
    from llavaction_jax.input import text_stage
    from llavaction_jax.input.tokenizer import train_tiny_tokenizer
    rec = {"id": "v1", "video": "academic/v1.mp4", "duration": 12.345, "data_source": "nextqa",
           "conversations": [{"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "Rain."}]}
    [sample] = instructions.convert_video_qa_jsonl(_write_jsonl(tmp_path, "qa.jsonl", [rec]))
    human = sample["conversations"][0]["value"]
    want = ("<image>\nThe video lasts for 12.35 seconds, and 8 frames are uniformly sampled from it. Please answer the "
            "following questions related to this video.\n\nWhat happens?")
    assert prompts.add_time_instruction(sample, human, 12.345, 8) == want
    ek = {"task": "direct_narration", "participant_id": "P01"}
    assert prompts.add_time_instruction(ek, "<image>\nQ", 1.5, 8) == prompts.insert_time_instruction(
        "<image>\nQ", 1.5, 8)
    # The training text stage applies it (decoded back from the tokens it feeds the model).
    cfg = tiny.get_config()
    tok = train_tiny_tokenizer([want, "Rain.", prompts.SYSTEM_PROMPT] * 20, str(tmp_path / "tok"), vocab_size=300)
    stage = text_stage.TextStage(cfg, tok)
    _, ids, labels, _ = stage(json.dumps(sample), True)
    text = tok.decode([i for i in ids if i != tok.video_token_id])
    assert "The video lasts for 12.35 seconds, and %d frames are uniformly sampled" % cfg.data.num_frames in text
    assert "The provided video lasts" not in text
