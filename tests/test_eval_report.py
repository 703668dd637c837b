"""The eval report's layout on a realistic 116-question prediction set: section order, and a gallery that shows each
wrong question once (never a correct one, never a question twice)."""
import html
import os
import re

import numpy as np
import pytest

from llavaction_jax.eval import metrics, report

SECTIONS = ("summary", "per-class", "errors", "failures")


def synthetic_predictions(n=116, seed=0):
    """n EK100-MQA-shaped prediction records (10 verbs, 20 nouns, three distractor sources) with known verdicts:
    letters wrong on every 9th question, generation on every 13th, strict additionally on every 17th."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        verb, noun = int(rng.integers(10)), int(rng.integers(20))
        actions = [f"{verb}:{noun}"] + [f"{int(rng.integers(10))}:{(noun + j) % 20}" for j in range(1, 5)]
        order = rng.permutation(5)
        actions = [actions[j] for j in order]
        options = [f"{chr(65 + k)}. verb{a.split(':')[0]} noun{a.split(':')[1]}" for k, a in enumerate(actions)]
        answer = chr(65 + int(np.argmax(order == 0)))
        wrong = chr(65 + (ord(answer) - 65 + 1) % 5)
        letter = wrong if i % 9 == 0 else answer
        gen = wrong if i % 13 == 0 else answer
        strict = wrong if i % 13 == 0 or i % 17 == 0 else answer
        records.append({
            "id": f"P01_{i:03d}", "index": i, "source": ("avion", "tim", "random")[i % 3], "mode": "benchmark",
            "question": "<video>\nThe video lasts for 2.00 seconds ... " + ", ".join(options),
            "options": options, "answer": answer, "option_actions": actions, "verb_class": verb,
            "noun_class": noun, "action_id": i, "letter_pred": letter, "gen_pred": gen, "strict_pred": strict,
            "letter_scores": [float(s) for s in rng.normal(size=5)], "raw_generation": options[ord(gen) - 65],
            "letter_correct": letter == answer, "gen_correct": gen == answer, "strict_correct": strict == answer})
    return records


def expected_errors(records):
    return [r["id"] for r in records if not (r["letter_correct"] and r["gen_correct"] and r["strict_correct"])]


def _render(tmp_path, records, frames, failures=()):
    summary = metrics.summarize(records, ("letters", "generate", "strict"))
    paths = report.write_report(str(tmp_path), summary, records, frames, failures=failures,
                                verb_names={v: f"verb{v}" for v in range(10)},
                                noun_names={v: f"noun{v}" for v in range(20)})
    return open(paths[report.REPORT_HTML], encoding="utf-8").read()


def test_section_order_and_one_card_per_wrong_question(tmp_path):
    records = synthetic_predictions()
    errors = expected_errors(records)
    assert len(errors) == 27                     # 13 letters + 9 generation + 7 strict misses; question 0 is all three
    frames = {r["id"]: np.full((4, 32, 32, 3), 7, np.uint8) for r in records[:40]}
    failures = [{"id": "P01_900", "video_id": "P01_09", "error": "VideoError", "reason": "truncated"}]
    # A resumed run can hand the report a question twice: the gallery still shows it once.
    page = _render(tmp_path, records + [records[0]], frames, failures)
    starts = [page.index(f'<section id="{s}">') for s in SECTIONS]
    assert starts == sorted(starts)
    protocols = page.index('class="protocols"')
    assert starts[0] < protocols < starts[1] and page.index("Per verb") > starts[1]
    gallery = page[starts[2]:starts[3]]
    cards = re.findall(r'<div class="card" id="q-([^"]+)">', gallery)
    assert len(cards) == len(set(cards)) == 24                  # the first 24 of 27, each once
    assert set(cards) <= set(errors)
    assert f"Errors: {len(errors)} distinct questions" in html.unescape(gallery)
    # Questions with kept frames come first, each with its own frame strip.
    with_frames = [i for i in errors if i in frames]
    assert cards[:len(with_frames)] == with_frames
    assert gallery.count('<img src="sample_frames/') == len(with_frames)
    assert "P01_900" in page[starts[3]:] and "P01_900" not in page[:starts[3]]
    assert page.count('src="samples.png"') == 0 and 'href="samples.png"' in page
    assert os.path.getsize(tmp_path / report.SAMPLES_PNG) > 1000


def test_all_correct_gives_an_empty_gallery(tmp_path):
    records = [dict(r, letter_pred=r["answer"], gen_pred=r["answer"], strict_pred=r["answer"], letter_correct=True,
                    gen_correct=True, strict_correct=True) for r in synthetic_predictions(12)]
    page = _render(tmp_path, records, {})
    gallery = page[page.index('<section id="errors">'):page.index('<section id="failures">')]
    assert "Errors: 0 distinct questions" in gallery and 'class="card"' not in gallery


def test_report_written_whole_or_not_at_all_and_through_fs(tmp_path, monkeypatch):
    """A failure half-way through a rewrite (injected: the confusion plot writes part of its PNG, then raises as
    a full disk does) leaves every file of the earlier report byte for byte, and no stage folder; a URL
    destination (ram://, the tests' offline non-local scheme) gets the same files through fs."""
    import errno
    import tensorflow as tf
    records = synthetic_predictions(n=30)
    frames = {r["id"]: np.full((4, 32, 32, 3), 7, np.uint8) for r in records[:5]}
    _render(tmp_path, records, frames)

    def snapshot(root):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, files in os.walk(root) for f in files}
    before = snapshot(tmp_path)
    assert report.REPORT_HTML in before and report.CONFUSION_PNG in before

    def full_disk(confusion, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    with monkeypatch.context() as m:
        m.setattr(report, "plot_confusion", full_disk)
        with pytest.raises(OSError, match="No space left"):
            _render(tmp_path, synthetic_predictions(n=30, seed=1), frames)
    assert snapshot(tmp_path) == before                          # no half file, no new file, no stage folder

    summary = metrics.summarize(records, ("letters", "generate", "strict"))
    paths = report.write_report("ram://reports/r1", summary, records, frames)
    assert paths[report.REPORT_HTML] == "ram://reports/r1/report.html"
    for name in (report.REPORT_HTML, report.CONFUSION_PNG, f"{report.SAMPLES_DIR}/000.png"):
        with tf.io.gfile.GFile(f"ram://reports/r1/{name}", "rb") as f:
            assert f.read()[:4] in (b"<!do", b"\x89PNG")
