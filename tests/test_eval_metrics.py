"""Metrics on a hand-made prediction set with known answers (exact numbers), report files, generic MC parsing."""
import json
import os

import numpy as np
import pytest

from llavaction_jax.eval import metrics, report
from llavaction_jax.eval.items import parse_generation, written_letter
from llavaction_jax.eval.samples import generic_to_sample


def _rec(id_, source, answer, letter, gen, option_actions, verb, noun, mode="benchmark", head=None):
    r = {"id": id_, "source": source, "mode": mode, "options": [f"{c}. o{c}" for c in "ABCDE"],
         "answer": answer, "letter_pred": letter, "gen_pred": gen, "option_actions": option_actions,
         "verb_class": verb, "noun_class": noun, "action_id": 7}
    if head is not None:
        r["head_pred"] = head
    return r


OA = ["0:1", "0:2", "1:1", "2:2", "3:3"]        # option -> "verb:noun"
RECORDS = [
    # truth C = 1:1
    _rec("a", "avion", "C", "C", "C", OA, 1, 1, head={"verb": 1, "noun": 1, "action": 7}),
    # truth C = 1:1; letters picks A = 0:1 (noun right), generation unparsed
    _rec("b", "avion", "C", "A", None, OA, 1, 1, head={"verb": 0, "noun": 1, "action": 3}),
    # truth B = 0:2; letters B, generation D = 2:2 (noun right)
    _rec("c", "tim", "B", "B", "D", OA, 0, 2),
    # truth E = 3:3; both predict A = 0:1 (all wrong)
    _rec("d", "tim", "E", "A", "A", OA, 3, 3),
    # recognition miss: truth 4:4 not among the options; letters picks D = 2:2
    _rec("e", "tim", None, "D", "D", OA, 4, 4, mode="recognition"),
]


def test_summary_exact_numbers():
    s = metrics.summarize(RECORDS)
    assert s["num_samples"] == 5
    assert s["chance"] == pytest.approx(0.2)
    assert s["letters"]["accuracy"] == pytest.approx(2 / 5)          # a, c
    assert s["generate"]["accuracy"] == pytest.approx(1 / 5)         # a
    assert s["generate"]["unparsed"] == 1
    assert s["letters"]["by_source"] == {"avion": {"n": 2, "accuracy": 0.5}, "tim": {"n": 3, "accuracy": 1 / 3}}
    assert s["generate"]["by_source"] == {"avion": {"n": 2, "accuracy": 0.5}, "tim": {"n": 3, "accuracy": 0.0}}
    assert s["letters"]["by_mode"]["recognition"] == {"n": 1, "accuracy": 0.0}
    assert s["letters"]["per_verb"]["1"] == {"n": 2, "accuracy": 0.5}
    bench = s["letters"]["recognition"]["benchmark"]
    # letters: a (1:1 ok), b (0:1: noun ok), c (0:2 ok), d (0:1 vs 3:3 wrong)
    assert bench == {"n": 4, "verb_top1": 0.5, "noun_top1": 0.75, "action_top1": 0.5}
    gen_bench = s["generate"]["recognition"]["benchmark"]
    # generate: a ok, b unparsed (wrong), c 2:2 vs 0:2 (noun ok), d wrong
    assert gen_bench == {"n": 4, "verb_top1": 0.25, "noun_top1": 0.5, "action_top1": 0.25}
    assert s["letters"]["recognition"]["recognition"] == {"n": 1, "verb_top1": 0.0, "noun_top1": 0.0,
                                                          "action_top1": 0.0}
    assert s["action_head"] == {"n": 2, "verb_top1": 0.5, "noun_top1": 1.0, "action_top1": 0.5}


def test_summary_rejects_bad_records():
    with pytest.raises(ValueError, match="unknown eval methods"):
        metrics.summarize(RECORDS, methods=("beam",))
    bad = dict(RECORDS[0], option_actions=["0-1"] * 5)
    with pytest.raises(ValueError, match="verb_class:noun_class"):
        metrics.summarize([bad])


def test_parse_generation_through_reference_parser():
    options = ["A. take plate", "B. open fridge", "C. wash knife", "D. close tap", "E. cut onion"]
    assert parse_generation("C. wash knife", options) == "C"
    # The reference's regex runs to the end of the line and cuts at the first "."; the LAST line's match wins.
    assert parse_generation("A. take plate. I think B. open fridge.", options) == "A"
    assert parse_generation("A. take plate\nB. open fridge.", options) == "B"
    # The letter alone does not count: the reference matches option TEXT.
    assert parse_generation("B. open the fridge", options) is None
    assert parse_generation("D", options) is None
    # A wrong letter with the right text resolves to the text's letter (text wins, as in the reference).
    assert parse_generation("A. close tap", options) == "D"
    # The original strips "," from the whole raw output FIRST, then parses: a comma before the cut stays.
    assert parse_generation("C. wash knife,", options) == "C"
    assert parse_generation("C. wash knife,. because", options) is None
    assert parse_generation("None. wash knife,", options) == "C"
    # The letter the answer is written with (strict protocol) is the one of the match the text comes from.
    assert written_letter("A. close tap", 5) == "A" and written_letter("I think B. x\nD. close tap", 5) == "D"
    assert written_letter("close tap", 5) is None and written_letter("(E) because", 5, "letter_or_text") == "E"
    # Generic benchmarks: a bare letter is accepted as well.
    assert parse_generation("D", options, parser="letter_or_text") == "D"
    assert parse_generation("(E) because", options, parser="letter_or_text") == "E"
    assert parse_generation("F", options, parser="letter_or_text") is None
    assert parse_generation("Definitely", options, parser="letter_or_text") is None


def test_generic_row_to_sample():
    row = {"video": "clips/x.mp4", "start": 1.0, "end": 3.5, "question": "What is cut?",
           "options": ["bread", "B. tomato", "cheese"], "answer": "tomato"}
    s = generic_to_sample(row, "f.jsonl: row 1", 0)
    assert s["options"] == ["A. bread", "B. tomato", "C. cheese"]
    assert s["answer"] == "B" and s["answer_text"] == "tomato" and s["id"] == "0"
    assert s["conversations"][0]["value"] == (
        "<image>\nWhat is cut?\nA. bread\nB. tomato\nC. cheese\n"
        "Answer with the option's letter from the given choices directly.")
    assert generic_to_sample(dict(row, answer=2), "f", 0)["answer"] == "C"
    assert generic_to_sample(dict(row, answer="A"), "f", 0)["answer"] == "A"
    with pytest.raises(ValueError, match="'answer'.*row 1"):
        generic_to_sample(dict(row, answer="grape"), "f.jsonl: row 1", 0)
    with pytest.raises(ValueError, match="missing field 'question'"):
        generic_to_sample({"video": "x", "options": ["a"], "answer": 0}, "f", 0)


def test_report_files(tmp_path):
    summary = metrics.summarize(RECORDS)
    frames = {"a": np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)}
    recs = [dict(r, raw_generation="C. o C") for r in RECORDS]
    paths = report.write_report(str(tmp_path), summary, recs, frames, verb_names={1: "put"})
    for name in (report.PER_VERB_PNG, report.BY_SOURCE_PNG, report.SAMPLES_PNG):
        with open(paths[name], "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(paths[name]) > 1000
    page = open(paths[report.REPORT_HTML], encoding="utf-8").read()
    for name in (report.PER_VERB_PNG, report.BY_SOURCE_PNG):
        assert f'src="{name}"' in page
    assert f'href="{report.SAMPLES_PNG}"' in page
    assert "40.0%" in page and "20.0%" in page         # letters accuracy and chance in the table
    json.dumps(summary)                                # the summary is JSON-serialisable


def test_report_contents_escaping_and_mathtext(tmp_path):
    """Provenance, links, names, confusion, failures, the error gallery; text escaped; '$' is text."""
    recs = [dict(r, raw_generation="<script>alert(1)</script> $x^2$", question="Pay $5 or $10$?",
                 letter_scores=[0.1, 0.2, 0.3, 0.4, 0.5][:len(r["options"])]) for r in RECORDS]
    recs[1]["options"] = ["A. pay $5$", "B. o$", "C. <b>bold</b>", "D. oD", "E. oE"]    # b is wrong: in the gallery
    recs[0]["strict_pred"] = "C"                                      # a: right by every protocol, not in it
    summary = metrics.summarize(recs)
    frames = {r: np.full((4, 32, 32, 3), 9 * i, np.uint8) for i, r in enumerate(("a", "b"))}
    failures = [{"id": "z9", "index": 9, "video_id": "P09_09", "error": "VideoError", "reason": "moov <atom>"}]
    paths = report.write_report(str(tmp_path), summary, recs, frames, verb_names={1: "put", 0: "take"},
                                noun_names={1: "pan", 2: "lid"}, failures=failures,
                                provenance={"checkpoint": "/ck", "step": 800, "data": "d.jsonl", "config": "{}"})
    page = open(paths[report.REPORT_HTML], encoding="utf-8").read()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;bold" in page
    assert "moov &lt;atom&gt;" in page and "z9" in page
    for text in ("/ck", "800", "d.jsonl", "date", 'href="predictions.jsonl"', 'href="failures.jsonl"',
                 "put (1)", "pan (1)", "lid (2)", report.CONFUSION_PNG, "(a) reference protocol",
                 "(b) letter scoring", "(c) strict generation", "Pay $5 or $10$?"):
        assert text in page, text
    assert 'id="q-b"' in page and 'id="q-a"' not in page              # the gallery shows errors only
    assert os.path.getsize(os.path.join(tmp_path, report.SAMPLES_DIR, "000.png")) > 100
    conf = metrics.verb_confusion(recs, "gen_pred")
    # rows = true verb (0, 1, 2, 3, 4 appear as truth or options); a: 1 -> 1, b: unparsed, c: 0 -> 2, d: 3 -> 0
    assert conf["labels"] == [0, 1, 2, 3, 4] and conf["matrix"][1][1] == 1 and conf["none"][1] == 1
    assert conf["matrix"][0][2] == 1 and conf["matrix"][3][0] == 1 and conf["matrix"][4][2] == 1


def test_eval_cli_user_errors_are_one_line(tmp_path, capsys):
    from llavaction_jax import cli
    from llavaction_jax.eval.__main__ import main
    mqa = tmp_path / "mqa.jsonl"
    mqa.write_text(json.dumps({"id": "q", "conversations": [{"from": "human", "value": "<image>\nx"}],
                               "options": ["A. a"], "answer": "A"}) + "\n")
    cases = [
        (["--checkpoint", str(tmp_path), "--data", str(mqa), "--out", str(tmp_path / "o")], "--video_root"),
        (["--checkpoint", str(tmp_path), "--data", str(tmp_path / "none.jsonl"), "--out", "o"], "file not found"),
        (["--checkpoint", str(tmp_path / "nope"), "--data", "x-*.tfrecord", "--out", "o"], "not a directory"),
        (["--checkpoint", str(tmp_path), "--data", str(mqa), "--out", "o", "--limit", "0"], "--limit"),
    ]
    for argv, needle in cases:
        assert cli.run(main, argv) == cli.EXIT_USER
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_generic_mc_duplicates_and_paths_outside_the_root(tmp_path):
    from llavaction_jax.cli import UserError
    from llavaction_jax.eval.samples import generic_mc_source
    root = tmp_path / "videos"
    root.mkdir()
    row = {"video": "a.mp4", "question": "q?", "options": ["x", "y"], "answer": 0}

    def source(rows, **kw):
        path = tmp_path / "g.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return generic_mc_source(str(path), str(root), 4, 32, **kw)
    assert source([dict(row, id="1"), dict(row, id="2")]).num_local == 2
    with pytest.raises(UserError, match="duplicate sample id '1'.*rows 1 and 2"):
        source([dict(row, id="1"), dict(row, id="1")])
    with pytest.raises(UserError, match="leaves the video root"):
        source([dict(row, video="../secret.mp4")])
    with pytest.raises(UserError, match="absolute"):
        source([dict(row, video=str(tmp_path / "b.mp4"))])
    assert source([dict(row, video=str(tmp_path / "b.mp4"))], allow_absolute=True).num_local == 1
