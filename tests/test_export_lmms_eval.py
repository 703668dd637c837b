"""EK100-MQA as an lmms-eval task: the exported YAML / utils.py / local dataset / clips, validated structurally
(lmms-eval itself does not install beside this stack: it pins av<16 and needs torchvision), and the task's answer
parser against ours on tricky generations."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import yaml

from llavaction_jax.data import ek100, prompts
from data_prep import mqa, synthetic_videos
from llavaction_jax.data import video as video_lib
from llavaction_demo import data_stage
from llavaction_jax.eval import export_lmms_eval as exporter

# lmms-eval 0.7.3's TaskConfig fields (lmms_eval/api/task.py): a task YAML may use only these keys.
TASK_CONFIG_KEYS = {
    "task", "task_alias", "tag", "group", "group_alias", "dataset_path", "dataset_name", "dataset_kwargs",
    "training_split", "validation_split", "test_split", "fewshot_split", "full_docs", "process_results_use_image",
    "process_docs", "doc_to_visual", "doc_to_text", "doc_to_target", "doc_to_choice", "doc_to_messages",
    "process_results", "use_prompt", "description", "target_delimiter", "fewshot_delimiter", "fewshot_config",
    "num_fewshot", "metric_list", "output_type", "generation_kwargs", "repeats", "filter_list",
    "should_decontaminate", "doc_to_decontamination_query", "cluster_key", "score_key", "metadata",
    "lmms_eval_specific_kwargs", "model_specific_generation_kwargs", "model_specific_target_kwargs",
    "reasoning_tags", "auto_strip_thinking"}
NUM_FRAMES = 8


def _load_task_yaml(path):
    """As lmms-eval's load_yaml_config: `!function utils.f` imports f from utils.py beside the YAML."""
    task_dir = os.path.dirname(path)

    def function(loader, node):
        module_name, func = loader.construct_scalar(node).rsplit(".", 1)
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(task_dir, module_name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, func)

    loader = type("TaskLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", function)
    with open(path) as f:
        return yaml.load(f, Loader=loader)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    segments, space = data_stage.load_rows()
    rows = [s for s in segments if s.verb_class in (0, 1, 3) and s.noun_class in (3, 137, 12, 8)][:6]
    drawn = synthetic_videos.make_synthetic_dataset(
        [dict(id=s.narration_id, video_id=s.video_id, verb_class=s.verb_class, noun_class=s.noun_class,
              start_timestamp=s.start, stop_timestamp=s.stop) for s in rows],
        str(root / "videos"), fps=10.0, size=64, compact=True, gap=0.25, max_clip_seconds=1.5, tail=0.25)["rows"]
    rows = [dataclasses.replace(s, start=d["start_timestamp"], stop=d["stop_timestamp"]) for s, d in zip(rows, drawn)]
    ann = ek100.Annotations(path="x", segments=rows, label_space=ek100.LabelSpace(space.verb_texts,
                                                                                  space.noun_texts, segments))
    questions = mqa.generate_questions(ann, None, mode="random", k=5, representation="official_key",
                                       source="random", seed=0)
    mqa_file = root / "mqa.jsonl"
    mqa_file.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = root / "task"
    rc = exporter.main(["--mqa", str(mqa_file), "--out", str(out), "--video_root", str(root / "videos"),
                        "--num_frames", str(NUM_FRAMES)])
    assert rc == 0
    return dict(out=str(out), questions=questions, mqa=str(mqa_file), root=root)


def test_task_yaml_has_the_keys_lmms_eval_reads(task):
    cfg = _load_task_yaml(os.path.join(task["out"], "ek100_mqa.yaml"))
    assert set(cfg) <= TASK_CONFIG_KEYS, set(cfg) - TASK_CONFIG_KEYS
    assert cfg["task"] == "ek100_mqa" and cfg["output_type"] == "generate_until" and cfg["test_split"] == "test"
    for key in ("doc_to_visual", "doc_to_text", "doc_to_target", "process_results"):
        assert callable(cfg[key]), key
    assert cfg["generation_kwargs"]["do_sample"] is False and cfg["generation_kwargs"]["max_new_tokens"] == 32
    assert [m["metric"] for m in cfg["metric_list"]] == ["accuracy", "strict_accuracy"]
    assert all(callable(m["aggregation"]) and m["higher_is_better"] is True for m in cfg["metric_list"])
    assert cfg["lmms_eval_specific_kwargs"]["default"]["num_frames"] == NUM_FRAMES
    # The header names the lmms-eval model and arguments that run an HF export on these clips.
    head = open(os.path.join(task["out"], "ek100_mqa.yaml")).read().split("\ntask:")[0]
    assert f"--model llava_hf --force_simple --model_args pretrained=MODEL_DIR,max_frames_num={NUM_FRAMES}," \
        in head and f"--include_path {task['out']}" in head
    # The local dataset: `datasets.load_dataset(dataset_path, data_files=...)` -> split "test".
    assert cfg["dataset_path"] == "json" and os.path.isabs(cfg["dataset_kwargs"]["data_files"]["test"])
    data_file = cfg["dataset_kwargs"]["data_files"]["test"]
    docs = [json.loads(line) for line in open(data_file)]
    assert [d["id"] for d in docs] == [q["id"] for q in task["questions"]]
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        loaded = datasets.load_dataset(cfg["dataset_path"], **cfg["dataset_kwargs"])["test"]
        assert loaded["id"] == [d["id"] for d in docs]


def test_docs_give_our_prompt_and_a_clip_of_the_segment(task):
    cfg = _load_task_yaml(os.path.join(task["out"], "ek100_mqa.yaml"))
    kwargs = cfg["lmms_eval_specific_kwargs"]["default"]
    docs = [json.loads(line) for line in open(cfg["dataset_kwargs"]["data_files"]["test"])]
    for doc, q in zip(docs, task["questions"]):
        duration = q["stop_timestamp"] - q["start_timestamp"]
        ours = prompts.insert_time_instruction(q["conversations"][0]["value"], duration, NUM_FRAMES)
        assert "<image>\n" + cfg["doc_to_text"](doc, kwargs) == ours        # our eval's prompt, minus the placeholder
        assert cfg["doc_to_text"](doc, {"num_frames": 0}) == q["conversations"][0]["value"][len("<image>\n"):]
        assert cfg["doc_to_target"](doc) == q["conversations"][1]["value"]
        (clip,) = cfg["doc_to_visual"](doc)
        with av.open(clip) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        # Exactly the frames our eval takes (segment midpoints, native size here: no --clip_size), losslessly.
        ours, _ = video_lib.read_clip(str(task["root"] / "videos"), "original", q["video_id"], q["start_timestamp"],
                                      q["stop_timestamp"], NUM_FRAMES, size=None)
        assert frames.shape == (NUM_FRAMES, 64, 64, 3) and np.array_equal(frames, ours)
    os.rename(os.path.join(task["out"], "clips"), os.path.join(task["out"], "moved"))
    try:
        with pytest.raises(FileNotFoundError, match="EK100_MQA_CLIP_DIR"):
            cfg["doc_to_visual"](docs[0])
    finally:
        os.rename(os.path.join(task["out"], "moved"), os.path.join(task["out"], "clips"))


TRICKY = [
    "A. take pie", "C. take pie", "The answer is B. open fridge.", "B. open fridge, C. take box",
    "b. open fridge", "open fridge", "open fridge,", "None. take pie", "None of these", "A.take pie",
    "A. take pie. Because the pie moves", "A. take pie\nB. open fridge", "", "A.  take pie", "A. take pie, ",
    "I think D. open drawer,", "E. put plate", "Answer: (A) take pie", "A. TAKE PIE", "A. take pie and more",
]


def test_parser_and_metrics_match_ours_on_tricky_generations(task):
    cfg = _load_task_yaml(os.path.join(task["out"], "ek100_mqa.yaml"))
    process = cfg["process_results"]
    options = ["A. take pie", "B. open fridge", "C. take box", "D. open drawer", "E. put plate"]
    doc = {"id": "q", "source": "tim", "options": options, "answer": "A", "answer_text": "take pie"}
    got = {g: process(doc, [g]) for g in TRICKY}
    for g, res in got.items():
        ours = prompts.parse_answer(g, options)
        assert res["accuracy"]["parsed"] == ours, g
        assert res["accuracy"]["correct"] == (ours == "A"), g
    # Reference protocol = the text; strict = the letter too ("C. take pie" is right by text only).
    assert got["C. take pie"]["accuracy"]["correct"] and not got["C. take pie"]["strict_accuracy"]["correct"]
    assert got["A. take pie"]["strict_accuracy"]["correct"]
    assert got["A. take pie. Because the pie moves"]["strict_accuracy"]["correct"]
    assert not got["A. take pie\nB. open fridge"]["accuracy"]["correct"]         # the LAST match counts
    assert got["open fridge"]["accuracy"]["parsed"] == "B" and got["None. take pie"]["accuracy"]["parsed"] == "A"
    assert not got["None. take pie"]["strict_accuracy"]["correct"]
    assert sum(r["accuracy"]["parsed"] is not None for r in got.values()) >= 8    # the list really exercises it
    # Recognition-style question (truth not among the options): always wrong, as in our metrics.
    assert not process(dict(doc, answer=None), ["A. take pie"])["accuracy"]["correct"]
    agg = {m["metric"]: m["aggregation"] for m in cfg["metric_list"]}
    results = [got[g] for g in TRICKY]
    acc = agg["accuracy"]([r["accuracy"] for r in results])
    strict = agg["strict_accuracy"]([r["strict_accuracy"] for r in results])
    assert acc == np.mean([prompts.parse_answer(g, options) == "A" for g in TRICKY]) and 0 < strict < acc
    with pytest.raises(ValueError, match="no results"):
        agg["accuracy"]([])


def test_cli_user_errors_are_one_line(task, tmp_path, capsys):
    from llavaction_jax import cli
    bad = tmp_path / "bad.jsonl"
    q = dict(task["questions"][0])
    q["options"] = ["take pie"]
    bad.write_text(json.dumps(q) + "\n")
    for args, needle in ((["--mqa", str(bad)], "option 0 must start with 'A. '"),
                         (["--mqa", task["mqa"], "--task", "a b"], "not a plain identifier"),
                         (["--mqa", task["mqa"], "--num_frames", "0"], "--num_frames must be positive"),
                         (["--mqa", task["mqa"], "--hf_export", str(tmp_path)], "no 'llavaction' block")):
        assert cli.run(exporter.main, ["--out", str(tmp_path / "o")] + args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1, err
    # The module's entry point, as a user runs it.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "llavaction_jax.eval.export_lmms_eval", "--out", str(tmp_path / "o"),
                        "--mqa", str(tmp_path / "missing.jsonl")], capture_output=True, text=True, cwd=repo,
                       env=dict(os.environ, PYTHONPATH=repo))
    assert r.returncode == 2 and r.stderr == f"error: no such file {str(tmp_path / 'missing.jsonl')!r} (--mqa): " \
        "an EK100-MQA JSONL file\n", r.stderr


def test_lmms_eval_loads_the_task(task):
    """With lmms-eval importable (not in requirements: see the module docstring), its TaskManager finds the task
    through --include_path, `datasets` loads the local data and the hooks score a right answer."""
    pytest.importorskip("lmms_eval.tasks", reason="lmms-eval is not installed")
    from lmms_eval.tasks import TaskManager, get_task_dict
    manager = TaskManager(include_path=task["out"])
    loaded = get_task_dict(["ek100_mqa"], manager)["ek100_mqa"]
    docs = list(loaded.test_docs())
    assert [d["id"] for d in docs] == [q["id"] for q in task["questions"]]
    doc = docs[0]
    assert os.path.isfile(loaded.config.doc_to_visual(doc)[0])
    assert loaded.doc_to_text(doc).endswith(task["questions"][0]["conversations"][0]["value"][len("<image>\n"):])
    right = doc["options"][ord(doc["answer"]) - ord("A")]
    scores = loaded.process_results(doc, [right])
    assert {k: f([scores[k]]) for k, f in loaded.aggregation().items()} == {"accuracy": 1.0, "strict_accuracy": 1.0}


def test_a_failure_half_way_leaves_the_task_as_it_was(task, tmp_path, monkeypatch):
    """The task is written into a stage and put in place file by file when complete: a full disk while cutting
    the third clip (injected: half a file, then ENOSPC) leaves the earlier export byte for byte, no stage."""
    import errno
    import shutil
    out = tmp_path / "task"
    shutil.copytree(task["out"], out)

    def snapshot():
        return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
                for d, _, files in os.walk(out) for f in files}
    before = snapshot()
    real_cut, calls = exporter.cut_clip, []

    def cut_then_fill_the_disk(reader, doc, path, num_frames):
        calls.append(path)
        if len(calls) < 3:
            return real_cut(reader, doc, path, num_frames)
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(exporter, "cut_clip", cut_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        exporter.export(task["mqa"], str(out), video_root=str(task["root"] / "videos"), num_frames=4)
    assert len(calls) == 3 and not str(calls[0]).startswith(str(out / "clips"))   # written aside
    assert snapshot() == before
