"""Evaluator on the real tiny model: letter scoring on right-padded batches, generation vs letters on a forced
model, generic MC JSONL through the evaluator, and the eval CLI end to end."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from llavaction_jax.data import prompts
from data_prep import synthetic_videos
from llavaction_jax import sharding as shd
from llavaction_jax.cli import UserError
from llavaction_jax.distributed import gather_json
from llavaction_jax.eval import metrics, samples as samples_lib, scoring
from llavaction_jax.eval.evaluator import Evaluator
from llavaction_jax.eval.items import EvalItem
from llavaction_jax.input.chat import tokenize_prompt
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.model import LlavaActionModel

VERBS = ["take", "open", "wash", "close", "cut", "put"]
NOUNS = ["plate", "fridge", "knife", "tap", "onion", "cup"]


def _texts():
    out = []
    for v in VERBS:
        for n in NOUNS:
            out.append(f"A. {v} {n}, B. {v} {n}, C. {v} {n}")
    out.append(prompts.mcq_prompt(["A. take plate"]) + prompts.SYSTEM_PROMPT + " assistant user system")
    return out * 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny.get_config()
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 8
    tok = train_tiny_tokenizer(_texts(), str(tmp_path_factory.mktemp("tok")), vocab_size=config.model.text.vocab_size)
    mesh = shd.make_mesh(config.mesh)
    model = LlavaActionModel(config.model, rngs=nnx.Rngs(0))
    return config, tok, mesh, model


def _sample(i, options, answer, extra=""):
    q = "<image>\n" + extra + prompts.mcq_prompt(options)
    return {"id": f"s{i}", "video_id": "P01_01", "start_timestamp": 1.0, "stop_timestamp": 2.0 + i,
            "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": answer}],
            "options": options, "answer": answer, "source": "avion" if i % 2 else "tim", "mode": "benchmark",
            "verb_class": i % 3, "noun_class": 1, "action_id": 0,
            "option_actions": [f"{i % 3}:{j}" for j in range(len(options))]}


def _frames(i, config):
    side = config.model.vision.image_size
    return np.random.default_rng(i).integers(0, 256, (config.data.num_frames, side, side, 3), dtype=np.uint8)


def _options(i):
    return [f"{chr(65 + j)}. {VERBS[(i + j) % 6]} {NOUNS[(2 * i + j) % 6]}" for j in range(5)]


def test_letter_scoring_matches_unpadded_forwards(setup):
    config, tok, mesh, model = setup
    # 9 samples = one full batch + one padded batch; prompt lengths differ through the question and duration.
    items = [EvalItem(_sample(i, _options(i), "B", extra="plate " * (5 * (i % 4))), lambda i=i: _frames(i, config))
             for i in range(9)]
    ev = Evaluator(model, tok, config, mesh, methods=("letters",))
    records = ev.evaluate(items, len(items))
    assert [r["id"] for r in records] == [f"s{i}" for i in range(9)]
    lengths = {len(ev.prompt_ids(it.sample, True)) for it in items}
    assert len(lengths) >= 4                                         # really different prompt lengths
    letter_ids = scoring.letter_token_ids(tok)[:5]
    forward = nnx.jit(lambda m, ids, pix: m(ids, pix, jnp.ones_like(ids)).logits[0, -1])
    for it, rec in zip(items, records):
        ids = np.asarray([ev.prompt_ids(it.sample, True)], np.int32)         # one sample, no padding at all
        pix = ((it.load_frames().astype(np.float32) / 255.0 - 0.5) / 0.5)[None]
        expected = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(pix)))[letter_ids]
        np.testing.assert_allclose(rec["letter_scores"], expected, atol=2e-4, rtol=1e-4)
        assert rec["letter_pred"] == "ABCDE"[int(np.argmax(expected))]
        assert rec["letter_correct"] == (rec["letter_pred"] == "B")
        assert set(rec["head_pred"]) == {"verb", "noun", "action"}


def test_letter_logits_pick_last_real_position():
    logits = jnp.arange(2 * 4 * 6, dtype=jnp.float32).reshape(2, 4, 6)
    mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = scoring.letter_logits_from_logits(logits, mask, jnp.asarray([5, 0]))
    np.testing.assert_array_equal(np.asarray(out), [[11.0, 6.0], [47.0, 42.0]])
    assert list(scoring.choose_letters(np.asarray([[0.0, 1.0, 9.0], [3.0, 2.0, 9.0]]), [3, 2])) == [2, 0]


def _force_bigram(model, tok, chain):
    """Zero every attention/MLP output so the residual stream is the token embedding; then the LM head maps
    chain[i] -> chain[i + 1]: a model whose greedy continuation after chain[0] is exactly chain[1:]."""
    params = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(params)
    llm = pure["llm"]
    llm["layers"]["self_attn"]["o_proj"]["kernel"] = jnp.zeros_like(llm["layers"]["self_attn"]["o_proj"]["kernel"])
    llm["layers"]["mlp"]["down_proj"]["kernel"] = jnp.zeros_like(llm["layers"]["mlp"]["down_proj"]["kernel"])
    llm["norm"]["scale"] = jnp.ones_like(llm["norm"]["scale"])
    emb = np.asarray(llm["embed_tokens"]["embedding"]).copy()
    head = np.zeros_like(np.asarray(pure["lm_head"]["kernel"]))
    for i, t in enumerate(chain):
        emb[t] = 0.0
        emb[t, i] = 1.0
        if i + 1 < len(chain):
            head[i, chain[i + 1]] = 10.0
    llm["embed_tokens"]["embedding"] = jnp.asarray(emb)
    pure["lm_head"]["kernel"] = jnp.asarray(head)
    nnx.replace_by_pure_dict(params, pure)
    nnx.update(model, params)


def test_generation_and_letters_agree_on_forced_model(setup):
    config, tok, mesh, random_model = setup
    model = nnx.clone(random_model)
    answer_ids = tok.encode("C. take plate")
    # A special token inside the answer is skipped when decoding (the original's skip_special_tokens=True);
    # kept, "<|endoftext|>" would end up in the parsed text and match no option.
    chain = [tok.newline_id] + answer_ids + [tok.endoftext_id, tok.eos_id]
    assert len(set(chain)) == len(chain), f"chain tokens must be distinct: {chain}"
    _force_bigram(model, tok, chain)
    base = ["A. open fridge", "B. wash knife", "C. take plate", "D. close tap", "E. cut onion"]
    moved = ["A. take plate", "B. wash knife", "C. open fridge", "D. close tap", "E. cut onion"]
    absent = ["A. open fridge", "B. wash knife", "C. put cup", "D. close tap", "E. cut onion"]
    cases = [(base, "C"), (base, "A"), (moved, "A"), (absent, "C")]
    items = [EvalItem(_sample(i, opts, ans, extra="x " * i), lambda i=i: _frames(i, config))
             for i, (opts, ans) in enumerate(cases)]
    records = Evaluator(model, tok, config, mesh).evaluate(items, len(items))
    assert [r["raw_generation"] for r in records] == ["C. take plate"] * 4
    assert [r["letter_pred"] for r in records] == ["C", "C", "C", "C"]
    assert [r["gen_pred"] for r in records] == ["C", "C", "A", None]
    assert [r["letter_correct"] for r in records] == [True, False, False, True]
    assert [r["gen_correct"] for r in records] == [True, False, True, False]
    # Strict: the written letter (C) must name the same option as the text; case 3's text is option A.
    assert [r["gen_letter"] for r in records] == ["C"] * 4
    assert [r["strict_pred"] for r in records] == ["C", "C", None, None]
    assert [r["strict_correct"] for r in records] == [True, False, False, False]
    s = metrics.summarize(records)
    assert s["letters"]["accuracy"] == 0.5 and s["generate"]["accuracy"] == 0.5 and s["generate"]["unparsed"] == 1
    assert s["methods"] == ["generate", "letters", "strict"] and s["strict"]["accuracy"] == 0.25
    assert s["generate"]["protocol"].startswith("(a)") and "TEXT" in s["generate"]["explanation"]


def test_generic_mc_jsonl_through_evaluator(setup, tmp_path):
    config, tok, mesh, model = setup
    root = str(tmp_path / "videos")
    # Two plain videos (any layout works for a plain path; write "original" layout files and point at them).
    paths = []
    for k in range(2):
        paths += synthetic_videos.frame_index_video(root, "original", f"P0{k}_01", num_frames=60, fps=30.0, size=32)
    rows = [
        {"id": "g0", "video": os.path.relpath(paths[0], root), "start": 0.5, "end": 1.5,
         "question": "Which block pattern?", "options": ["one", "two", "three"], "answer": 1},
        {"video": os.path.relpath(paths[1], root), "question": "And here?",
         "options": ["A. red", "B. blue"], "answer": "A"},
    ]
    jsonl = tmp_path / "generic.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert samples_lib.is_generic_jsonl(str(jsonl))
    source = samples_lib.generic_mc_source(str(jsonl), root, config.data.num_frames, config.model.vision.image_size)
    items = list(source.iterate())
    frames = items[0].load_frames()
    assert frames.shape == (4, 32, 32, 3)
    # Frames are the midpoints of 4 segments of frames [15, 45] at 30 fps: 18, 26, 33, 41 (decoded back).
    assert [synthetic_videos.decode_frame_index(f) for f in frames] == [18, 26, 33, 41]
    ev = Evaluator(model, tok, config, mesh)
    records = ev.evaluate(source.iterate(), source.num_local)
    assert [r["id"] for r in records] == ["g0", "1"]
    assert [r["answer"] for r in records] == ["B", "A"]
    assert records[1]["stop_timestamp"] == pytest.approx(59 / 30)      # whole video: duration from the container
    for r in records:
        assert r["letter_pred"] in "AB" + ("C" if r["id"] == "g0" else "")
        assert isinstance(r["raw_generation"], str)
    with pytest.raises(UserError, match="no TFRecord files match"):
        samples_lib.tfrecord_source(str(tmp_path / "none-*.tfrecord"), 4, 32)


def test_gather_json_single_process():
    recs = [{"id": "a"}, {"id": "b"}]
    assert gather_json(recs) == recs
