"""predict CLI and eval CLI on a converted-format (Orbax) checkpoint of a random tiny model."""
import json
import os

import pytest
from flax import nnx

from configs import base, tiny
from data_prep import synthetic_videos
from llavaction_jax import predict
from llavaction_jax.convert.formats import orbax as orbax_format
from llavaction_jax.eval import __main__ as eval_cli
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.model.llava import LlavaActionModel

OPTIONS = ["take plate", "open fridge", "wash knife"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    config = tiny.get_config()
    ckpt = str(root / "ckpt")
    texts = [f"A. {o}, B. {o}" for o in OPTIONS] * 10 + ["You are a helpful assistant. assistant user system"] * 5
    tok = train_tiny_tokenizer(texts, str(root / "tok"), vocab_size=config.model.text.vocab_size)
    model = LlavaActionModel(config.model, rngs=nnx.Rngs(0))
    orbax_format.save_orbax(ckpt, model, config.model, {"source": "random tiny model for tests"})
    tok.save(ckpt)
    video = synthetic_videos.frame_index_video(str(root / "videos"), "original", "P01_01", num_frames=45, fps=15.0,
                                        size=32)[0]
    return ckpt, video, root


def test_predict_cli_options(checkpoint, capsys):
    ckpt, video, _ = checkpoint
    assert predict.main(["--checkpoint", ckpt, "--video", video, "--start", "0.5", "--end", "2.5",
                         "--num_frames", "4", "--options", *OPTIONS]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "options: A. take plate, B. open fridge, C. wash knife"
    answer = [line for line in out if line.startswith("answer: ")]
    assert len(answer) == 1 and answer[0][len("answer: "):] in ("A. take plate", "B. open fridge", "C. wash knife")
    assert any(line.startswith("generated: ") for line in out)


def test_predict_cli_question(checkpoint, capsys):
    ckpt, video, _ = checkpoint
    assert predict.main(["--checkpoint", ckpt, "--video", video, "--num_frames", "4", "--max_new_tokens", "3",
                         "--question", "What am I doing?"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("answer: ")


def test_predict_question_goes_through_the_eval_batching(checkpoint):
    """--question: uint8 frames normalised on the device by the eval batching give exactly the tokens of a direct
    greedy generate on host-normalised frames (the training input's table), decoded without special tokens."""
    import jax
    import numpy as np
    from llavaction_jax.eval.loading import load_for_eval
    from llavaction_jax.eval.evaluator import Evaluator, _strip_after_eos
    from llavaction_jax.eval.items import normalize_frames
    from llavaction_jax.eval.samples import read_video_file
    from llavaction_jax.model import generate
    ckpt, video, _ = checkpoint
    model, tok, config, mesh = load_for_eval(ckpt, defaults=base.get_base_config())
    config.data.num_frames = 4
    frames = read_video_file(video, 0.5, 2.5, 4, int(config.model.vision.image_size))
    answer = predict.answer_question(model, tok, config, mesh, frames, "What am I doing?", 0.5, 2.5, 6)
    n = predict._batch_devices(mesh)
    ev = Evaluator(model, tok, config, mesh, methods=("generate",), batch_size=n, max_new_tokens=6)
    sample = {"id": "x", "start_timestamp": 0.5, "stop_timestamp": 2.5,
              "conversations": [{"from": "human", "value": "<image>\nWhat am I doing?"}]}
    ids = np.tile(np.asarray([ev.prompt_ids(sample, has_video=True)], np.int32), (n, 1))
    pix = np.tile(normalize_frames(frames)[None], (n, 1, 1, 1, 1))
    put = lambda x: jax.device_put(x, ev.batch_sharding)   # noqa: E731
    tokens = generate(model, put(ids), put(pix), put(np.ones_like(ids)), 6, tok.eos_id, tok.pad_id)
    expected = tok.decode(_strip_after_eos(np.asarray(tokens)[0], tok.eos_id), skip_special_tokens=True)
    assert answer == expected and len(_strip_after_eos(np.asarray(tokens)[0], tok.eos_id)) > 0


def test_letter_scoring_refuses_a_sample_without_options(checkpoint):
    from llavaction_jax.cli import UserError
    from llavaction_jax.eval.loading import load_for_eval
    from llavaction_jax.eval.evaluator import Evaluator
    from llavaction_jax.eval.items import EvalItem
    ckpt, _, _ = checkpoint
    model, tok, config, mesh = load_for_eval(ckpt, defaults=base.get_base_config())
    ev = Evaluator(model, tok, config, mesh, methods=("letters",), batch_size=predict._batch_devices(mesh))
    sample = {"id": "q", "conversations": [{"from": "human", "value": "What am I doing?"}]}
    with pytest.raises(UserError, match="sample 'q' has no options"):
        ev.evaluate([EvalItem(sample)], 1)


def test_predict_rejects_bad_input(checkpoint):
    ckpt, video, root = checkpoint
    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", ckpt, "--video", video, "--options", "a", "--question", "q"])
    with pytest.raises(Exception, match="not found"):
        predict.main(["--checkpoint", ckpt, "--video", str(root / "missing.mp4"), "--num_frames", "4",
                      "--options", "a", "b"])


def test_eval_cli_on_mqa_jsonl(checkpoint, tmp_path, capsys):
    """MQA JSONL + video root (llavaction_jax.data.video 'original' layout) through the eval CLI."""
    ckpt, _, root = checkpoint
    vroot = str(tmp_path / "videos")
    rows = [{"id": f"P02_01_{i}", "video_id": "P02_01", "verb_class": i % 2, "noun_class": i % 3,
             "start_timestamp": 0.5 + 1.5 * i, "stop_timestamp": 1.5 + 1.5 * i} for i in range(3)]
    synthetic_videos.make_synthetic_dataset(rows, vroot, layout="original", fps=10.0, size=32)
    data = tmp_path / "mqa.jsonl"
    with open(data, "w") as f:
        for i, r in enumerate(rows):
            opts = [f"{chr(65 + j)}. {o}" for j, o in enumerate(OPTIONS)]
            f.write(json.dumps({
                "id": r["id"], "video_id": "P02_01", "participant_id": "P02", "start_timestamp": r["start_timestamp"],
                "stop_timestamp": r["stop_timestamp"], "options": opts, "answer": "ABC"[i], "source": "random",
                "mode": "benchmark", "verb_class": r["verb_class"], "noun_class": r["noun_class"], "action_id": i,
                "option_actions": ["0:0", "1:1", "0:2"],
                "conversations": [{"from": "human", "value": "<image>\n" + ", ".join(opts)},
                                  {"from": "gpt", "value": opts[i]}]}) + "\n")
    out = str(tmp_path / "out")
    assert eval_cli.main(["--checkpoint", ckpt, "--data", str(data), "--video_root", vroot, "--out", out,
                          "--num_frames", "4", "--max_new_tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "MQA accuracy (b) letter scoring [letters]" in printed
    assert "MQA accuracy (a) reference protocol [generate]" in printed and "(c) strict generation [strict]" in printed
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["num_samples"] == 3 and summary["letters"]["by_source"]["random"]["n"] == 3
    preds = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    for p in preds:
        assert {"letter_pred", "gen_pred", "raw_generation", "letter_correct", "gen_correct", "options",
                "answer"} <= set(p)
    html = open(os.path.join(out, "report.html")).read()
    assert 'href="samples.png"' in html and os.path.getsize(os.path.join(out, "samples.png")) > 1000


def test_eval_cli_frames_layout_needs_and_takes_fps(checkpoint, tmp_path, capsys):
    """Extracted JPEG frames carry no frame rate: --fps (or --fps_csv) gives it; without it the error says so."""
    ckpt, _, _ = checkpoint
    vroot = str(tmp_path / "frames")
    rows = [{"id": "P03_01_0", "video_id": "P03_01", "verb_class": 0, "noun_class": 1,
             "start_timestamp": 0.5, "stop_timestamp": 2.0}]
    synthetic_videos.make_synthetic_dataset(rows, vroot, layout="frames", fps=10.0, size=32)
    opts = [f"{chr(65 + j)}. {o}" for j, o in enumerate(OPTIONS)]
    data = tmp_path / "mqa.jsonl"
    data.write_text(json.dumps({
        "id": "P03_01_0", "video_id": "P03_01", "participant_id": "P03", "start_timestamp": 0.5,
        "stop_timestamp": 2.0, "options": opts, "answer": "A", "source": "random", "mode": "benchmark",
        "verb_class": 0, "noun_class": 1, "action_id": 1,
        "conversations": [{"from": "human", "value": "<image>\n" + ", ".join(opts)},
                          {"from": "gpt", "value": opts[0]}]}) + "\n")
    base = ["--checkpoint", ckpt, "--data", str(data), "--video_root", vroot, "--video_layout", "frames",
            "--num_frames", "4", "--max_new_tokens", "2", "--methods", "letters"]
    with pytest.raises(Exception, match="fps"):
        eval_cli.main(base + ["--out", str(tmp_path / "no_fps")])
    csv_path = tmp_path / "video_info.csv"
    csv_path.write_text("video_id,duration,fps,resolution\nP03_01,5.0,10.0,32x32\n")
    for flag in (["--fps", "10"], ["--fps_csv", str(csv_path)]):
        out = tmp_path / ("out" + flag[0])
        assert eval_cli.main(base + flag + ["--out", str(out)]) == 0
        assert json.load(open(out / "summary.json"))["num_samples"] == 1
