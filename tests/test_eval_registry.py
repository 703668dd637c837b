"""The eval benchmark registry: a new benchmark is one module plus one REGISTRY line, and both the trainer's
periodic eval (each config.evals entry at its own `every`) and the eval CLI (--eval NAME / --type) run it;
recognition top-k against hand computations; config.evals entries that are wrong are one clear error.

The new benchmark is one file, tests/data/seeded_benchmark.py, registered with one line.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import load_test_data_module
from llavaction_jax.data.records import encode_example, encode_jpeg
from llavaction_jax import cli
from llavaction_jax.cli import UserError
from llavaction_jax.eval import benchmarks, metrics, samples as samples_lib
from llavaction_jax.eval.benchmarks import base
from llavaction_jax.input import synthetic_records as input_synthetic
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.train import loop, synthetic_batches as train_synthetic
from tests.test_bad_inputs import one_error, train_flags  # noqa: F401  (train_flags is a fixture)
from tests.test_train_checkpoint import _Limited
from tests.test_train_step import _arrays, _config, _mesh


def _seeded_benchmark():
    """tests/data/seeded_benchmark.py: the whole extra benchmark (NAME, DEFAULTS, FLAGS, check, build)."""
    return load_test_data_module("seeded_benchmark")


SEEDED = _seeded_benchmark()
NAME = SEEDED.NAME


def _samples(n, start=0):
    out = []
    for i in range(start, start + n):
        s = input_synthetic.make_sample(i, "r")
        verb, noun = s["verb_class"], s["noun_class"]
        # The options' actions as data_prep.mqa writes them (option j = verb + j, noun + 2j, like the texts);
        # the true classes are the answer's.
        s["option_actions"] = [f"{(verb + j) % 8}:{(noun + 2 * j) % 8}" for j in range(5)]
        v, n = (int(x) for x in s["option_actions"][ord(s["answer"]) - 65].split(":"))
        s.update(verb_class=v, noun_class=n, action_id=10 * v + n)
        s["seed"] = i
        out.append(s)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """2 training steps (the data runs out after 2 batches) with three evals: a (every step) and b (every 2nd) of
    the tiny benchmark, rec (recognition on TFRecords, every 2nd); the workdir keeps the step-2 checkpoint."""
    root = tmp_path_factory.mktemp("registry")
    rows = _samples(6)
    texts = [t["value"] for s in rows + _samples(24, 100) for t in s["conversations"]]
    tok = train_tiny_tokenizer(texts, str(root / "tok"), vocab_size=512)
    jsonl = root / "seeded.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = str(root / "rec-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(records) as w:
        for s in rows:
            jpegs = [encode_jpeg(f) for f in input_synthetic.sample_frames(s["seed"], 4, 32)]
            w.write(encode_example(s, jpegs, [0.0, 0.1, 0.2, 0.3]))
    # The training run of tests/test_train_checkpoint.py (same config, data and mesh): the same compiled
    # programs, read from the session's persistent compilation cache by whichever test runs second.
    cfg = _config()
    cfg.data.tokenizer_path = str(root / "tok")
    cfg.eval.update(batch_size=4, methods=("letters",), max_samples=5)        # the entries' defaults
    cfg.evals.a = dict(type=NAME, data=str(jsonl), every=1, max_samples=0)
    cfg.evals.b = dict(type=NAME, data=str(jsonl), every=2, seed_offset=1000, max_samples=4)
    cfg.evals.rec = dict(type="recognition", data=records, every=2, k=(1, 3))
    benchmarks.REGISTRY[NAME] = SEEDED                          # the one registry line
    mesh = _mesh(cfg)
    workdir = str(root / "run")
    evals = benchmarks.periodic_evals(cfg, mesh, workdir, tokenizer=tok)
    it = _Limited(train_synthetic.ArrayBatchIterator(_arrays(cfg), 8, mesh, seed=0), 2)
    summary = loop.train(cfg, workdir, train_iter=it, eval_fn=evals, mesh=mesh)
    yield dict(cfg=cfg, tok=tok, mesh=mesh, workdir=workdir, summary=summary, jsonl=str(jsonl), records=records,
               root=root)
    del benchmarks.REGISTRY[NAME]


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def _eval_rows(workdir):
    return {r["step"]: r for r in _lines(os.path.join(workdir, "metrics.jsonl")) if r["prefix"] == "eval"}


def test_trainer_runs_each_eval_at_its_own_every(run):
    workdir = run["workdir"]
    rows = _eval_rows(workdir)
    assert sorted(rows) == [1, 2]
    assert {k for k in rows[1] if "/" in k} == {"a/accuracy", "a/answered_a"}            # b and rec: every 2
    assert {k.split("/")[0] for k in rows[2] if "/" in k} == {"a", "b", "rec"}
    for name, step, n in (("a", 1, 6), ("a", 2, 6), ("b", 2, 4), ("rec", 2, 5)):
        preds = _lines(os.path.join(workdir, "eval", name, f"step_{step}", "predictions.jsonl"))
        assert len(preds) == n
        if name != "rec":
            assert rows[step][f"{name}/accuracy"] == pytest.approx(np.mean([p["letter_correct"] for p in preds]))
            assert rows[step][f"{name}/answered_a"] == pytest.approx(np.mean([p["letter_pred"] == "A" for p in preds]))
    assert not os.path.exists(os.path.join(workdir, "eval", "b", "step_1"))
    # Recognition logs its top-k numbers; they are those of its own predictions.
    rec = _lines(os.path.join(workdir, "eval", "rec", "step_2", "predictions.jsonl"))
    assert all(len(p["head_topk"]["noun"]) == 3 for p in rec)
    assert rows[2]["rec/heads_noun_top3"] == pytest.approx(
        np.mean([p["noun_class"] in p["head_topk"]["noun"] for p in rec]))
    assert rows[2]["rec/letters_verb_top1"] == pytest.approx(
        np.mean([int(p["option_actions"][ord(p["letter_pred"]) - 65].split(":")[0]) == p["verb_class"]
                 for p in rec]))


def test_eval_cli_runs_the_registered_benchmark(run, tmp_path, capsys, monkeypatch):
    import jax
    from llavaction_jax import sharding as shd
    from llavaction_jax.eval.__main__ import main
    # The run trained on one of the 8 fake devices (its config.mesh is 1x1x1): the CLI evaluates on that one.
    make_mesh = shd.make_mesh
    monkeypatch.setattr(shd, "make_mesh", lambda cfg, devices=None: make_mesh(cfg, devices=jax.devices()[:1]))
    trainer = _lines(os.path.join(run["workdir"], "eval", "b", "step_2", "predictions.jsonl"))
    # By name: the entry of the checkpoint's config.evals (type, data, seed_offset), step-2 params; --limit
    # overrides the entry's max_samples.
    assert main(["--checkpoint", run["workdir"], "--eval", "b", "--limit", "3", "--out", str(tmp_path / "b"),
                 "--no_progress"]) == 0
    cli_preds = _lines(tmp_path / "b" / "predictions.jsonl")
    assert [p["id"] for p in cli_preds] == [p["id"] for p in trainer[:3]]
    np.testing.assert_allclose([p["letter_scores"] for p in cli_preds], [p["letter_scores"] for p in trainer[:3]],
                               atol=2e-4)
    # By type: every sample (config.eval.max_samples = 5 caps the trainer's evals, not a CLI run without --limit).
    assert main(["--checkpoint", run["workdir"], "--type", NAME, "--data", run["jsonl"],
                 "--out", str(tmp_path / "t"), "--no_progress"]) == 0
    assert len(_lines(tmp_path / "t" / "predictions.jsonl")) == 6
    # The benchmark's own field as a flag of the CLI (its FLAGS): the trainer's entry b again, from flags alone.
    assert main(["--checkpoint", run["workdir"], "--type", NAME, "--data", run["jsonl"], "--seed_offset", "1000",
                 "--limit", "4", "--out", str(tmp_path / "s"), "--no_progress"]) == 0
    by_flags = _lines(tmp_path / "s" / "predictions.jsonl")
    assert [p["id"] for p in by_flags] == [p["id"] for p in trainer]
    np.testing.assert_allclose([p["letter_scores"] for p in by_flags], [p["letter_scores"] for p in trainer],
                               atol=2e-4)
    assert json.load(open(tmp_path / "s" / "fingerprint.json"))["video"] == {"seed_offset": 1000}
    capsys.readouterr()
    for argv, needle in ((["--eval", "nope"], "no eval named 'nope'"),
                         # The benchmark's check, before the model loads.
                         (["--type", NAME, "--data", run["jsonl"], "--seed_offset", "-1"],
                          "bad value -1 (--seed_offset): an integer >= 0"),
                         (["--eval", "b", "--k", "2"], "unknown field 'k' for eval type 'seeded_mc'"),
                         (["--type", "nope", "--data", run["jsonl"]], "unknown eval type 'nope' (--type)")):
        assert cli.run(main, ["--checkpoint", run["workdir"], "--out", str(tmp_path / "x")] + argv) == cli.EXIT_USER
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_recognition_heads_top_k_are_the_logits_best_classes(run):
    import jax.numpy as jnp
    from llavaction_jax.eval.evaluator import Evaluator
    from llavaction_jax.input.schema import PIXEL_LUT
    from llavaction_jax.model.generate import prefill_and_generate
    cfg, summary = run["cfg"], run["summary"]
    model = summary["setup"].merge(summary["state"]["params"])
    rec = _lines(os.path.join(run["workdir"], "eval", "rec", "step_2", "predictions.jsonl"))
    ev = Evaluator(model, run["tok"], cfg, run["mesh"], methods=("letters",), batch_size=4)
    items = list(samples_lib.tfrecord_source(run["records"], 4, 32).iterate())[:2]
    # Both prompts right-padded into one batch of 2 (the eval used 4): one compile, other shapes than the eval's.
    prompts = [ev.prompt_ids(item.sample, True) for item in items]
    length = max(map(len, prompts))
    ids = np.zeros((2, length), np.int32)
    mask = np.zeros((2, length), np.int32)
    for r, p in enumerate(prompts):
        ids[r, :len(p)], mask[r, :len(p)] = p, 1
    pix = jnp.asarray(PIXEL_LUT)[np.stack([item.load_frames() for item in items])]      # the eval's pixels
    out = prefill_and_generate(model, jnp.asarray(ids), pix, jnp.asarray(mask), 0, run["tok"].eos_id,
                               run["tok"].pad_id, action_heads=True)
    for r, (p, item) in enumerate(zip(rec, items)):
        assert p["id"] == item.sample["id"]
        for kind, logits in zip(("verb", "noun", "action"), out.action_logits):
            expected = np.argsort(-np.asarray(logits[r]), kind="stable")[:3]
            assert p["head_topk"][kind] == expected.tolist()
            assert p["head_pred"][kind] == expected[0]


def test_recognition_top_k_by_hand():
    def rec(verb, noun, scores, actions, heads, letter):
        return {"id": f"{verb}{noun}", "verb_class": verb, "noun_class": noun, "action_id": verb * 10 + noun,
                "letter_scores": scores, "letter_pred": letter, "option_actions": actions, "answer": None,
                "head_pred": {k: v[0] for k, v in heads.items()}, "head_topk": heads}
    records = [
        # truth 1:2. Options ranked by score: C (2:2), A (1:5), B (1:2).
        rec(1, 2, [0.5, 0.1, 0.9], ["1:5", "1:2", "2:2"], {"verb": [2, 1, 0], "noun": [2, 7, 5],
                                                              "action": [22, 12, 15]}, "C"),
        # truth 3:4. Ranked: B (3:4), A (0:0), C (3:1).
        rec(3, 4, [0.2, 0.8, 0.1], ["0:0", "3:4", "3:1"], {"verb": [0, 5, 6], "noun": [1, 2, 3],
                                                              "action": [34, 0, 1]}, "B"),
    ]
    top = metrics.recognition_top_k(records, (1, 2, 3), ("letters",))
    assert top["k"] == [1, 2, 3] and set(top) == {"k", "heads", "letters"}
    # Heads (action id = 10 verb + noun): record 1 verb 1 2nd, noun 2 1st, action 12 2nd; record 2 verb 3 and
    # noun 4 missing, action 34 1st.
    assert top["heads"] == {"n": 2, "verb_top1": 0.0, "noun_top1": 0.5, "action_top1": 0.5,
                            "verb_top2": 0.5, "noun_top2": 0.5, "action_top2": 1.0,
                            "verb_top3": 0.5, "noun_top3": 0.5, "action_top3": 1.0}
    # Letters: record 1 top-1 2:2 (noun right), top-2 + 1:5 (verb right), top-3 + 1:2 (action right);
    # record 2 top-1 3:4 (all right).
    assert top["letters"] == {"n": 2, "verb_top1": 0.5, "noun_top1": 1.0, "action_top1": 0.5,
                              "verb_top2": 1.0, "noun_top2": 1.0, "action_top2": 0.5,
                              "verb_top3": 1.0, "noun_top3": 1.0, "action_top3": 1.0}
    with pytest.raises(ValueError, match="top-4 was asked"):
        metrics.head_top_k(records, (4,))
    from llavaction_jax.eval.benchmarks import recognition
    scalars = recognition.scalars({"recognition_top_k": top})
    assert scalars["heads_verb_top2"] == 0.5 and scalars["letters_action_top3"] == 1.0 and "heads_n" not in scalars


def test_config_evals_errors_name_the_field():
    cfg = _config()
    cfg.data.tokenizer_path = "/nonexistent"
    cases = [
        (dict(type="mqa", data="x.tfrecord"), "unknown eval type 'mqa' (config.evals.v.type)"),
        (dict(type="ek100_mqa", data="x.tfrecord", every=-1), "config.evals.v.every"),
        (dict(type="ek100_mqa", data="x.tfrecord", k=3), "unknown field 'k' for eval type 'ek100_mqa'"),
        (dict(type="generic_mc", data=""), "no eval data (config.evals.v.data)"),
        (dict(type="ek100_mqa", data="x", methods=("letters", "guess")), "config.evals.v.methods"),
    ]
    for entry, needle in cases:
        c = cfg.copy_and_resolve_references()
        c.evals.v = entry
        with pytest.raises(base.EvalConfigError) as e:
            benchmarks.configured(c)
        assert needle in str(e.value)
    c = cfg.copy_and_resolve_references()
    c.evals.rec = dict(type="recognition", data="x.tfrecord", k=(1, 98))
    with pytest.raises(base.EvalConfigError, match=r"k <= 97"):
        benchmarks.build(benchmarks.configured(c)["rec"], c, None, None, "/nonexistent")
    # Defaults: the eval section fills what an entry leaves out; the module's own defaults come next.
    c = cfg.copy_and_resolve_references()
    c.eval.update(batch_size=16, max_samples=7)
    c.evals.rec = dict(type="recognition", data="x.tfrecord", k="1,5")
    got = benchmarks.configured(c)["rec"]
    assert (got.batch_size, got.max_samples, tuple(got.methods), got.video_layout) == (16, 7, ("letters",),
                                                                                       "original")


def test_data_picks_the_benchmark_and_entries_build_their_sources(tmp_path):
    generic = tmp_path / "mc.jsonl"
    generic.write_text("".join(json.dumps({"id": f"g{i}", "video": f"clips/{i}.mp4", "question": "Which?",
                                           "options": ["one", "two"], "answer": i % 2}) + "\n" for i in range(3)))
    mqa = tmp_path / "mqa.jsonl"
    mqa.write_text("".join(json.dumps(s) + "\n" for s in _samples(2)))
    assert benchmarks.detect_type(str(generic)) == "generic_mc"
    assert benchmarks.detect_type(str(mqa)) == "ek100_mqa"
    assert benchmarks.detect_type(str(tmp_path / "x-*.tfrecord")) == "ek100_mqa"
    cfg = _config()
    cfg.evals.mc = dict(type="generic_mc", data=str(generic), video_root=str(tmp_path), max_samples=2)
    cfg.evals.mqa = dict(type="ek100_mqa", data=str(mqa), video_root=str(tmp_path))
    entries = benchmarks.configured(cfg)
    mc = benchmarks.build(entries["mc"], cfg, None, None, str(tmp_path / "out"))
    assert [it.sample["id"] for it in mc.source.iterate()] == ["g0", "g1"]                # max_samples=2
    assert [it.parser for it in mc.source.iterate()] == ["letter_or_text"] * 2
    assert mc.out_dir(None) == str(tmp_path / "out") and mc.out_dir(7) == str(tmp_path / "out" / "step_7")
    mqa_bench = benchmarks.build(entries["mqa"], cfg, None, None, str(tmp_path / "out"))
    assert [it.sample["id"] for it in mqa_bench.source.iterate()] == [s["id"] for s in _samples(2)]
    assert mqa_bench.verb_names[0] == "take"                                               # EK100 class names
    cfg.evals.mqa = dict(type="ek100_mqa", data=str(mqa))                               # no video_root
    with pytest.raises(UserError, match="MQA JSONL data needs its videos"):
        benchmarks.build(benchmarks.configured(cfg)["mqa"], cfg, None, None, str(tmp_path / "out"))


def test_train_cli_refuses_a_bad_eval_setup_in_one_line(tmp_path, capsys, train_flags):
    # Before any model is built: the removed train.eval_every (evals are config.evals entries), and an entry of
    # an unknown type (config file).
    cli_mod = train_flags("--workdir", str(tmp_path / "w"), "--config.train.eval_every=2")
    assert cli_mod.main([]) == cli.EXIT_USER
    assert one_error(capsys).startswith("error: unknown config key 'eval_every' (config.train.eval_every): ")
    config_file = tmp_path / "cfg.py"
    config_file.write_text("from configs import tiny\n\n\ndef get_config():\n    c = tiny.get_config()\n"
                           "    c.evals.val = dict(type='ek100', data='v-*.tfrecord', every=10)\n    return c\n")
    cli_mod = train_flags("--workdir", str(tmp_path / "w2"), "--config", str(config_file))     # the last --config
    assert cli_mod.main([]) == cli.EXIT_USER
    # Refused by the whole-config validation at start (configs/validate.py), from the registry's names.
    assert one_error(capsys) == ("error: bad config value 'ek100' (config.evals.val.type): one of "
                                 f"{tuple(sorted(benchmarks.REGISTRY))}")
