"""HF export as a complete model directory: tokenizer + chat template + processor configs + model card, and
transformers generating the same greedy answers as our JAX eval on a synthetic EK100-MQA clip set.

The model is a tiny RANDOM model of the demo's architecture (configs/demo.py) in the HF layout (bilinear pooling,
one newline after all frames, no action token), with the demo's kind of tokenizer (tiny byte-level BPE trained on
the questions) and 24 EK100-MQA questions over real EK100 rows, each with its own synthetic clip (data_prep.synthetic_videos).
Training the demo model takes minutes, too slow for a test.
"""
import dataclasses
import json
import os
import stat
import subprocess
import sys
import types

import av
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
import torch

from configs import base as base_config, demo as demo_config
from llavaction_jax.data import ek100, prompts
from data_prep import mqa, synthetic_videos
from llavaction_jax.data import video as video_lib
from llavaction_demo import data_stage
from llavaction_jax import sharding as shd
from llavaction_jax.convert import api, hf_processor, model_card
from llavaction_jax.eval.evaluator import Evaluator, _strip_after_eos
from llavaction_jax.eval.items import EvalItem, normalize_frames
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.model import num_video_tokens

NUM_QUESTIONS = 24
# The tiny torch model is overhead-bound: extra threads only contend for the CI machine's 2 cores.
torch.set_num_threads(1)


def _config():
    config = demo_config.get_config()
    config.model.action_token = False
    config.model.pool_mode = "bilinear"
    config.model.newline_position = "one_token"
    config.eval.batch_size = 24     # one batch: one compile
    config.eval.max_new_tokens = 10
    return config


def _mesh():
    # One device: the sharded eval is tested elsewhere, and an 8-way SPMD generate compiles far slower.
    return shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def _random_model(config, path, seed):
    """A random model of config.model's architecture: initialised in torch (JAX's initialisers compile for tens of
    seconds on 2 cores) and imported with our converter. Norms and the newline are perturbed so that every
    parameter matters."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, \
        SiglipVisionConfig
    t, v = config.model.text, config.model.vision
    torch.manual_seed(seed)
    hf_cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                                         num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                                         image_size=v.image_size, patch_size=v.patch_size, vision_use_head=False),
        text_config=Qwen2Config(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                                num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                                head_dim=t.head_dim, max_position_embeddings=t.max_position_embeddings,
                                rope_theta=t.rope_theta, tie_word_embeddings=False),
        video_token_index=config.model.video_token_id, image_token_index=config.model.video_token_id,
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=False)
    hf = LlavaOnevisionForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or "image_newline" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    model, loaded = api.load_pretrained(path, mesh=_mesh())
    for key in ("action_token", "pool_mode", "newline_position", "video_token_id"):
        assert loaded.model[key] == config.model[key], key
    assert loaded.model.text.to_dict() == config.model.text.to_dict()
    return model, loaded.model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfproc")
    config = _config()
    segments, space = data_stage.load_rows()
    train, held = data_stage.select_rows(segments, tuple(config.demo.verbs), tuple(config.demo.nouns), 0.25, 0)
    rows = (train + held)[:NUM_QUESTIONS]
    drawn = synthetic_videos.make_synthetic_dataset(
        [dict(id=s.narration_id, video_id=s.video_id, verb_class=s.verb_class, noun_class=s.noun_class,
              start_timestamp=s.start, stop_timestamp=s.stop) for s in rows],
        str(root / "videos"), fps=8.0, size=64, compact=True, gap=0.25, max_clip_seconds=2.0, tail=0.25)["rows"]
    rows = [dataclasses.replace(s, start=d["start_timestamp"], stop=d["stop_timestamp"]) for s, d in zip(rows, drawn)]
    space = ek100.LabelSpace(space.verb_texts, space.noun_texts, train + held)
    ann = ek100.Annotations(path="demo", segments=rows, label_space=space)
    questions = mqa.generate_questions(ann, None, mode="random", k=5, representation="official_key",
                                       source="random", seed=0)
    texts = [prompts.SYSTEM_PROMPT, "system", "user", "assistant", prompts.time_instruction(1.234, 4)]
    texts += [t["value"] for q in questions for t in q["conversations"]]
    tok = train_tiny_tokenizer(texts, str(root / "tok"), vocab_size=config.model.text.vocab_size,
                               video_token_id=config.model.video_token_id)
    model, model_cfg = _random_model(config, str(root / "init"), seed=0)
    out = str(root / "hf")
    summary = {"num_samples": 3, "chance": 0.2, "methods": ["letters", "generate"],
               "letters": {"accuracy": 2 / 3, "by_source": {"random": {"n": 3, "accuracy": 2 / 3}}},
               "generate": {"accuracy": 1 / 3, "by_source": {"random": {"n": 3, "accuracy": 1 / 3}}}}
    with open(root / "summary.json", "w") as f:
        json.dump(summary, f)
    info = api.export_model(model, config.model, out, "hf", tokenizer_path=tok.source,
                            eval_summary=str(root / "summary.json"), train_config=config.to_dict())
    return dict(config=config, tok=tok, model=model, model_cfg=model_cfg, out=out, info=info, questions=questions,
                video_root=str(root / "videos"))


def test_directory_is_complete_and_consistent(exported):
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    out, config, tok, info = exported["out"], exported["config"], exported["tok"], exported["info"]
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "video_preprocessor_config.json", "processor_config.json", "README.md"):
        mode = stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode)
        assert mode == 0o644, (name, oct(mode))
    hf_cfg = AutoConfig.from_pretrained(out)
    tk = AutoTokenizer.from_pretrained(out)
    # Real, distinct tokens: <video> is the demo's id 3, <image> was added (the tiny tokenizer has none) instead
    # of aliasing id video-1 (= <|im_end|>).
    assert tk.convert_ids_to_tokens([hf_cfg.video_token_index, hf_cfg.image_token_index]) == ["<video>", "<image>"]
    assert hf_cfg.video_token_index == config.model.video_token_id == 3
    assert hf_cfg.image_token_index == tok.vocab_size and info["notes"]
    assert hf_cfg.image_token_index < hf_cfg.text_config.vocab_size == config.model.text.vocab_size
    assert tk.eos_token == "<|im_end|>" and tk.pad_token_id == tok.pad_id
    assert (tk.image_token_id, tk.video_token_id) == (hf_cfg.image_token_index, hf_cfg.video_token_index)
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert gen["eos_token_id"] == tok.eos_id and gen["do_sample"] is False
    ip = AutoImageProcessor.from_pretrained(out)
    s = config.model.vision.image_size
    assert ip.size["height"] == ip.size["width"] == s and list(ip.image_mean) == [0.5] * 3 == list(ip.image_std)
    pc = json.load(open(os.path.join(out, "processor_config.json")))
    assert pc["num_image_tokens"] == (s // config.model.vision.patch_size) ** 2
    assert pc["vision_feature_select_strategy"] == hf_cfg.vision_feature_select_strategy == "full"
    card = open(os.path.join(out, "README.md")).read()
    assert "license: cc-by-nc-4.0" in card and "EPIC-KITCHENS-100" in card and "CC BY-NC 4.0" in card
    n_video = num_video_tokens(config.model, config.data.num_frames)
    assert f"**{n_video}** `<video>` tokens" in card
    # The summary given at export is the JAX model's: shown under that model's heading, not as the export's.
    own, source = _card_sections(card)
    assert "Not measured yet" in own and "%" not in own
    assert "| `letters`: option-letter scoring" in source and "66.7%" in source and "33.3%" in source


def _card_sections(card):
    """(the "Evaluation of this export" section, the JAX model's section or '') of a model card."""
    own = card.split(model_card.EXPORT_EVAL_HEADING, 1)[1].split("\n## ", 1)[0]
    source = card.split(model_card.SOURCE_EVAL_HEADING, 1)[1].split("\n## ", 1)[0] \
        if model_card.SOURCE_EVAL_HEADING in card else ""
    return own, source


def _write_mqa(exported, path):
    with open(path, "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in exported["questions"])
    return str(path)


def test_export_carries_its_sampling_and_eval_reads_it(exported):
    """Frame count, sampling rule and pooling are in video_preprocessor_config.json; transformers loads it, and
    llavaction_jax.eval takes its frame count from there (--num_frames still overrides)."""
    from transformers import AutoVideoProcessor
    from configs import validate
    from llavaction_jax.eval.loading import load_for_eval
    out, config = exported["out"], exported["config"]
    assert config.data.num_frames == 4 != base_config.get_base_config().data.num_frames == 16
    vp = json.load(open(os.path.join(out, "video_preprocessor_config.json")))
    assert vp["num_frames"] == 4 and vp["do_sample_frames"] is True
    assert hf_processor.read_sampling(out) == {
        "num_frames": 4, "frame_sampling": "segment_midpoints", "pool_mode": "bilinear", "pool_stride": 2,
        "newline_position": "one_token", "action_token": False,
        "trained_layout": {"pool_mode": "bilinear", "newline_position": "one_token", "action_token": False}}
    assert AutoVideoProcessor.from_pretrained(out).num_frames == 4
    _, _, cfg, _ = load_for_eval(out, mesh=_mesh(), defaults=base_config.get_base_config())
    assert cfg.data.num_frames == 4          # not configs/base.py's 16: no --num_frames needed
    _, _, cfg, _ = load_for_eval(out, mesh=_mesh(), check_config=validate.with_overrides({"data.num_frames": 6}),
                                 defaults=base_config.get_base_config())
    assert cfg.data.num_frames == 6


def test_lmms_eval_sampling_of_an_exported_clip_gives_our_frames(exported, tmp_path):
    """The lmms-eval task's clips (export_lmms_eval --hf_export): lmms-eval 0.7.3's llava_hf samples
    `np.linspace(0, n - 1, max_frames_num, dtype=int)` of the decoded clip (models/simple/llava_hf.py load_video,
    with decord; PyAV here) and transformers' processor `arange(N) * n // N`: both give the frames our eval feeds
    the model (segment midpoints, resized by llavaction_jax.data.video), pixel for pixel."""
    from llavaction_jax.eval import export_lmms_eval as exporter
    out, config = exported["out"], exported["config"]
    n_frames, size = config.data.num_frames, config.model.vision.image_size
    assert exporter.main(["--mqa", _write_mqa(exported, tmp_path / "mqa.jsonl"), "--out", str(tmp_path / "task"),
                          "--video_root", exported["video_root"], "--hf_export", out]) == 0
    reader = video_lib.VideoReader(exported["video_root"], "original", size=size)
    ends_differ = 0
    for q in exported["questions"]:
        with av.open(str(tmp_path / "task" / "clips" / f"{q['id']}.mp4")) as c:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        n = len(decoded)
        lmms = decoded[np.linspace(0, n - 1, n_frames, dtype=int)]
        hf = decoded[np.arange(n_frames) * n // n_frames]
        ours, _ = reader.read_clip(q["video_id"], q["start_timestamp"], q["stop_timestamp"], n_frames)
        assert lmms.shape == (n_frames, size, size, 3)
        assert np.abs(lmms.astype(int) - ours).max() == 0 and np.array_equal(hf, ours), q["id"]
        # A clip of the whole segment (the old export) would give lmms-eval its ends: other frames than ours.
        start, stop = (int(round(t * 8.0)) for t in (q["start_timestamp"], q["stop_timestamp"]))
        ends_differ += not np.array_equal(np.linspace(start, stop, n_frames, dtype=int),
                                          video_lib.segment_frame_ids(start, stop, n_frames))
    assert ends_differ == NUM_QUESTIONS


def test_hf_video_path_flow(exported, jax_answers, tmp_path):
    """apply_chat_template with {"type": "video", "path": clip}: with torchcodec, the processor's pixels and ids
    are our eval's; without it, transformers' ImportError names what to install."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchcodec_usable
    from llavaction_jax.eval import export_lmms_eval as exporter
    ev, items, raw, records = jax_answers
    processor = AutoProcessor.from_pretrained(exported["out"])
    item = items[0]
    clip = str(tmp_path / "clip.mp4")
    exporter.write_lossless_clip(clip, item.load_frames(), exporter.clip_rate(1.0, ev.num_frames))
    messages = _messages(ev, item.sample)
    messages[0]["content"][0]["path"] = clip
    call = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    if not is_torchcodec_usable(decode="video"):   # torchcodec installed needs FFmpeg shared libraries too
        with pytest.raises(ImportError, match="pip install torchcodec"):
            processor.apply_chat_template(messages, **call)
        return
    batch = processor.apply_chat_template(messages, **call)
    assert batch["input_ids"][0].tolist() == ev.prompt_ids(item.sample, True)
    np.testing.assert_allclose(batch["pixel_values_videos"][0].permute(0, 2, 3, 1).numpy(),
                               normalize_frames(item.load_frames()), atol=3 / 255)


def test_model_card_shows_the_exports_own_measured_accuracy(exported, tmp_path):
    """`convert card`: llavaction_jax.eval runs on the export directory itself (no --num_frames: the export's 4)
    and the card's "Evaluation of this export" shows its accuracy, data, question and frame counts; the JAX
    model's numbers stay under their own heading."""
    import shutil
    from llavaction_jax.convert.__main__ import main as convert_main
    export = str(tmp_path / "hf")
    shutil.copytree(exported["out"], export)
    mqa_file = _write_mqa(exported, tmp_path / "questions.jsonl")
    convert_main(["card", "--src", export, "--data", mqa_file, "--video_root", exported["video_root"],
                  "--out", str(tmp_path / "eval")])
    predictions = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl")]
    assert len(predictions) == NUM_QUESTIONS
    generate = sum(r["gen_correct"] for r in predictions) / NUM_QUESTIONS
    letters = sum(r["letter_correct"] for r in predictions) / NUM_QUESTIONS
    own, source = _card_sections(open(os.path.join(export, "README.md")).read())
    assert f"on `questions.jsonl` ({NUM_QUESTIONS} questions, chance 20.0%), 4 frames per clip" in own
    rows = {line.split("`")[1]: line.rsplit("|", 2)[1].strip() for line in own.splitlines()
            if line.startswith("| `")}
    assert rows["generate"] == f"{100 * generate:.1f}%" and rows["letters"] == f"{100 * letters:.1f}%", rows
    assert "66.7%" in source and "66.7%" not in own and "Not measured" not in own


def test_vocab_grows_when_the_tokenizer_fills_it(exported, tmp_path):
    """A tokenizer with as many tokens as the model has rows: <image> needs a new row; its mean-initialised
    embedding / LM-head row keep the other logits and never win the greedy argmax."""
    from safetensors import safe_open
    from transformers import LlavaOnevisionForConditionalGeneration
    tok = exported["tok"]
    cfg = _config()
    cfg.model.text.vocab_size = tok.vocab_size
    cfg.model.text.num_layers = cfg.model.vision.num_layers = 1
    model, _ = _random_model(cfg, str(tmp_path / "init"), seed=1)
    api.export_model(model, cfg.model, str(tmp_path / "hf"), "hf", tokenizer_path=tok.source, num_frames=16)
    hf_cfg = json.load(open(tmp_path / "hf" / "config.json"))
    assert hf_cfg["text_config"]["vocab_size"] == tok.vocab_size + 1 == hf_cfg["image_token_index"] + 1
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "np") as f:
        head = f.get_tensor("language_model.lm_head.weight")
    np.testing.assert_allclose(head[-1], head[:-1].mean(0), rtol=1e-5, atol=1e-7)
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    ids = np.asarray([[1, 5, 9, 40, 77, 2]], np.int32)
    ours = np.asarray(model(jnp.asarray(ids), None, jnp.ones_like(jnp.asarray(ids))).logits[0])
    with torch.no_grad():
        theirs = hf(input_ids=torch.from_numpy(ids.astype(np.int64))).logits[0].numpy()
    assert np.abs(theirs[:, :-1] - ours).max() < 1e-4
    assert (theirs[:, -1] < theirs[:, :-1].max(-1)).all()


class _TokenEvaluator(Evaluator):
    """Our evaluator, also keeping each sample's generated token ids (what its records decode)."""

    def _record(self, item, r, local):
        self.tokens[item.sample["id"]] = _strip_after_eos(local["tokens"][r], self.tokenizer.eos_id)
        return super()._record(item, r, local)


def _jax_answers(exported):
    config, tok, model = exported["config"], exported["tok"], exported["model"]
    reader = video_lib.VideoReader(exported["video_root"], "original", size=config.model.vision.image_size)
    native = video_lib.VideoReader(exported["video_root"], "original", size=None)
    items, raw = [], {}
    for q in exported["questions"]:
        frames, _ = reader.read_clip(q["video_id"], q["start_timestamp"], q["stop_timestamp"],
                                     config.data.num_frames)
        raw[q["id"]] = native.read_clip(q["video_id"], q["start_timestamp"], q["stop_timestamp"],
                                        config.data.num_frames)[0]
        items.append(EvalItem(q, lambda frames=frames: frames))
    ev = _TokenEvaluator(model, tok, config, _mesh(), methods=("generate",))
    ev.tokens = {}
    records = {r["id"]: r for r in ev.evaluate(items, len(items))}
    return ev, items, raw, records


def _messages(ev, sample):
    """The user turn as a transformers chat: a video part, then our question text (time instruction included)."""
    question = sample["conversations"][0]["value"]
    duration = float(sample["stop_timestamp"]) - float(sample["start_timestamp"])
    question = prompts.insert_time_instruction(question, duration, ev.num_frames)
    assert question.startswith("<image>\n")
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question[len("<image>\n"):]}]}]


def _hf_generate(hf, ids, pix, max_new_tokens, eos):
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pix,
                          max_new_tokens=max_new_tokens, do_sample=False)
    return _strip_after_eos(out[0, ids.shape[1]:].numpy(), eos)


@pytest.fixture(scope="module")
def jax_answers(exported):
    return _jax_answers(exported)


def _check_parity(exported, jax_answers, hf_inputs, pixel_atol):
    """hf_inputs(messages, native_frames, our_frames) -> (input_ids [1, L], pixel_values_videos [1, F, 3, S, S] to
    generate from, the processor's pixels of the native-resolution frames), torch tensors."""
    from transformers import LlavaOnevisionForConditionalGeneration
    ev, items, raw, records = jax_answers
    tok = exported["tok"]
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(exported["out"], dtype=torch.float32).eval()
    distinct, answered = set(), 0
    for it in items:
        sid = it.sample["id"]
        ids, pix, pix_native = hf_inputs(_messages(ev, it.sample), raw[sid], it.load_frames())
        # Same token layout as our eval (system prompt, ChatML, 17 video slots, time instruction) ...
        assert ids[0].tolist() == ev.prompt_ids(it.sample, True), sid
        # ... and the same pixels: the processor resizing the native 64x64 frames itself agrees with ours.
        ours = normalize_frames(it.load_frames())
        np.testing.assert_allclose(pix_native[0].permute(0, 2, 3, 1).numpy(), ours, atol=pixel_atol, err_msg=sid)
        np.testing.assert_allclose(pix[0].permute(0, 2, 3, 1).numpy(), ours, atol=pixel_atol, err_msg=sid)
        hf_tokens = _hf_generate(hf, ids, pix, ev.max_new_tokens, tok.eos_id)
        assert hf_tokens == ev.tokens[sid], (sid, hf_tokens, ev.tokens[sid])
        assert tok.decode(hf_tokens) == records[sid]["raw_generation"]
        distinct.add(tuple(hf_tokens))
        answered += 1
    assert answered == NUM_QUESTIONS >= 20
    assert len(distinct) > 1          # the clips and options really change the answer
    return distinct


def test_generation_parity_tokenizer_and_image_processor(exported, jax_answers):
    """Runs everywhere: AutoTokenizer + chat template for the ids, the processor's own token-count code for the
    video expansion, AutoImageProcessor (PIL backend, no torchvision) for the pixels of each frame."""
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaOnevisionProcessor
    out = exported["out"]
    tk = AutoTokenizer.from_pretrained(out)
    ip = AutoImageProcessor.from_pretrained(out)
    pc = json.load(open(os.path.join(out, "processor_config.json")))
    counter = types.SimpleNamespace(num_image_tokens=pc["num_image_tokens"], video_token=pc["video_token"])

    def inputs(messages, native, ours):
        prompt = tk.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pix = ip(list(native), return_tensors="pt")["pixel_values"][:, 0]      # base (resized) view per frame
        expanded = LlavaOnevisionProcessor.replace_video_token(counter, {"pixel_values_videos": [pix]}, 0)
        ids = tk(prompt.replace(pc["video_token"], expanded), return_tensors="pt")["input_ids"]
        return ids, pix[None], pix[None]
    # The PIL backend (no torchvision) resizes exactly as llavaction_jax.data.video (PIL bicubic): equal up to float rounding.
    # With torchvision installed AutoImageProcessor picks its antialiased bicubic: within 1 grey level.
    _check_parity(exported, jax_answers, inputs, pixel_atol=1e-5 if type(ip).__name__.endswith("Pil") else 3 / 255)


def test_generation_parity_auto_processor(exported, jax_answers):
    """The user's path: AutoProcessor.from_pretrained(dir), chat template, processor(text, videos) -> generate."""
    pytest.importorskip("torchvision", reason="transformers' LlavaOnevisionVideoProcessor needs torchvision")
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(exported["out"])
    assert type(processor).__name__ == "LlavaOnevisionProcessor"

    def inputs(messages, native, ours):
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        batch = processor(text=prompt, videos=[ours], return_tensors="pt")       # already at size: no resize
        from_native = processor(text=prompt, videos=[native], return_tensors="pt")
        assert from_native["input_ids"].tolist() == batch["input_ids"].tolist()
        return batch["input_ids"], batch["pixel_values_videos"], from_native["pixel_values_videos"]
    # torchvision's antialiased bicubic vs PIL's on the 64 -> 32 resize: measured within 1 grey level (2/255).
    _check_parity(exported, jax_answers, inputs, pixel_atol=3 / 255)


def test_model_card_without_summary_and_latest_eval(tmp_path):
    cfg = _config()
    card = model_card.render(cfg.model, {"text_config": {"vocab_size": 512}, "video_token_index": 3,
                                         "image_token_index": 449}, num_frames=8)
    own, source = _card_sections(card)
    assert "Not measured yet" in own and source == "" and "8 x 4 + 1 = **33**" in card
    # The layout warning: a key the model config leaves out takes the model's default (newline "grid"), not
    # the layout transformers computes.
    hf_config = {"text_config": {"vocab_size": 512}, "video_token_index": 3, "image_token_index": 449}
    warning = lambda model: [line for line in model_card.render(model, hf_config).splitlines()   # noqa: E731
                             if "Trained with another layout" in line]
    hf_layout = ml_collections.ConfigDict(dict(cfg.model.to_dict(), newline_position="one_token",
                                               pool_mode="bilinear", action_token=False))
    assert warning(hf_layout) == []
    unset = hf_layout.to_dict()
    del unset["newline_position"]
    assert warning(ml_collections.ConfigDict(unset)) == [
        "- **Trained with another layout** (pool bilinear, newline grid, action token False): transformers computes "
        "the layout above, so its outputs differ from the JAX model's."]
    assert model_card.latest_eval_summary(str(tmp_path)) is None
    for step in (5, 40, 7):
        os.makedirs(tmp_path / "eval" / f"step_{step}")
        (tmp_path / "eval" / f"step_{step}" / "summary.json").write_text("{}")
    assert model_card.latest_eval_summary(str(tmp_path)).endswith("step_40/summary.json")


def test_tokenizer_plan_rejects_a_video_id_with_another_meaning(exported, tmp_path):
    """A tokenizer without <video> whose model video_token_id is a real token (here <|im_end|>) is an error."""
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(exported["tok"].source)
    vocab = tok.get_vocab(with_added_tokens=True)
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<video>"]
    data["model"]["vocab"].pop("<video>", None)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    cfg = _config()
    cfg.model.video_token_id = vocab["<|im_end|>"]
    with pytest.raises(ValueError, match="'<\\|im_end\\|>'"):
        hf_processor.plan_tokenizer(str(path), cfg.model)


def test_cli_export_of_a_training_run_takes_its_tokenizer_and_latest_eval(exported, tmp_path):
    """`convert export --format hf WORKDIR OUT`: the tokenizer is the run's data.tokenizer_path and the card shows the
    workdir's latest periodic eval (eval/step_N/summary.json)."""
    import jax.numpy as jnp
    from flax import nnx
    from llavaction_jax.convert.__main__ import main as convert_main
    from llavaction_jax.train.checkpointing import Checkpointer, config_to_dict
    config = base_config.get_base_config()
    config.model = exported["model_cfg"]
    config.data.tokenizer_path = os.path.dirname(exported["tok"].source)
    config.data.num_frames = 4
    params = nnx.to_pure_dict(nnx.state(exported["model"], nnx.Param))
    state = {"params": params, "opt_state": {}, "step": jnp.zeros((), jnp.int32), "rng": jnp.zeros((2,), jnp.uint32)}
    ckpt = Checkpointer(str(tmp_path / "work" / "checkpoints"), async_save=False)
    ckpt.save(7, state, {"epoch": 0}, config_to_dict(config))
    ckpt.close()
    for step, acc in ((3, 0.25), (7, 0.75)):
        os.makedirs(tmp_path / "work" / "eval" / f"step_{step}")
        (tmp_path / "work" / "eval" / f"step_{step}" / "summary.json").write_text(json.dumps(
            {"num_samples": 4, "chance": 0.2, "methods": ["letters"], "letters": {"accuracy": acc}}))
    convert_main(["export", "--format", "hf", str(tmp_path / "work"), str(tmp_path / "out")])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "75.0%" in card and "25.0%" not in card and "step_7" not in card and "(4 questions" in card
    assert "4 x 4 + 1 = **17**" in card
    assert json.load(open(tmp_path / "out" / "config.json"))["image_token_index"] == exported["tok"].vocab_size
    with open(tmp_path / "out" / "tokenizer.json") as f, open(os.path.join(exported["out"], "tokenizer.json")) as g:
        assert json.load(f) == json.load(g)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        api.export_checkpoint(str(tmp_path / "work"), str(tmp_path / "out2"), "hf", mesh=_mesh(),
                              tokenizer_path=str(tmp_path))


IMPORT_ORDER_SCRIPT = """
import sys
import llavaction_jax.input.train_iterator   # the input pipeline (TensorFlow) first, as in the demo and the eval CLI
import torchvision  # noqa: F401
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained(sys.argv[1])
print("processor", type(processor).__name__)
"""


def test_input_pipeline_then_torchvision_then_autoprocessor_in_one_process(exported):
    """torch 2.14's triton crashed a process that had loaded TensorFlow first (SIGSEGV, rc 139): importing
    llavaction_jax hides it, so this order, the one a user's script takes, loads the export's processor."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", IMPORT_ORDER_SCRIPT, exported["out"]], capture_output=True,
                          text=True, timeout=600, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert "processor LlavaOnevisionProcessor" in proc.stdout
