"""The package's outside, as a new user meets it: every console script answers --help / --version with help on
every flag, config errors are one line, a run works from any working directory, and eval / predict read a
training run from its workdir, a step dir or --step N with the run's own tokenizer and frame count."""
import importlib
import json
import logging
import os
import sys
import tomllib

import pytest

from conftest import REPO_ROOT
from llavaction_jax import __version__, argparsing, cli

with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as _f:
    _PROJECT = tomllib.load(_f)["project"]
SCRIPTS = _PROJECT["scripts"]
PREP_SUBCOMMANDS = ("mqa", "instructions", "tfrecord", "synthetic")


def _entry(name):
    module, func = SCRIPTS[name].split(":")
    return getattr(importlib.import_module(module), func)


def _option_lines_without_help(text: str):
    """Option lines of an argparse --help with no help text: the invocation alone on its line, and the next line
    not a more-indented continuation."""
    lines = text.splitlines()
    bad = []
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped.startswith("-") or len(line) - len(stripped) != 2:
            continue
        has_inline_help = "  " in stripped
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        continued = nxt.strip() and len(nxt) - len(nxt.lstrip()) > 2 and not nxt.lstrip().startswith("-")
        if not has_inline_help and not continued:
            bad.append(stripped)
    return bad


def test_the_console_scripts_are_the_fixed_names():
    assert sorted(SCRIPTS) == sorted(["llavaction-demo", "llavaction-train", "llavaction-eval", "llavaction-predict",
                                      "llavaction-convert", "llavaction-aot", "llavaction-plan",
                                      "llavaction-prep"])
    assert _PROJECT["requires-python"] == ">=3.11,<3.14"
    assert {"tpu", "cuda", "hf", "test"} <= set(_PROJECT["optional-dependencies"])
    assert not [d for d in _PROJECT["dependencies"] if d.split(">")[0].split("=")[0] in ("torch", "transformers",
                                                                                          "torchvision")]


@pytest.mark.parametrize("argv", [[name] for name in SCRIPTS if name != "llavaction-prep"]
                         + [["llavaction-prep", sub] for sub in PREP_SUBCOMMANDS] + [["llavaction-prep"]]
                         + [["llavaction-convert", sub] for sub in ("import", "export")])
def test_every_flag_of_every_console_script_has_help(capsys, argv):
    handlers = list(logging.root.handlers)
    with pytest.raises(SystemExit) as e:
        _entry(argv[0])(argv[1:] + ["--help"])
    assert e.value.code == 0
    # Run in-process, a script keeps the caller's root handlers (a forced basicConfig would swap pytest's for one
    # on this test's captured stderr, closed after it: later log lines then print "--- Logging error ---").
    assert logging.root.handlers == handlers
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert _option_lines_without_help(out) == [], out
    if argv == ["llavaction-eval"]:          # the whole description, examples included (it was cut mid-sentence)
        assert "EK100 recognition top-k, or generic video multiple choice." in out and "--step 10" in out
    if argv == ["llavaction-train"]:         # the config keys with their defaults
        assert "--config.train.num_steps=1000" in out and "--config.optim.lr=" in out


@pytest.mark.parametrize("name", [n for n in SCRIPTS])
def test_every_console_script_has_version(capsys, name):
    with pytest.raises(SystemExit) as e:
        _entry(name)(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().endswith(__version__)


def test_a_flag_without_help_is_refused_when_the_parser_is_built():
    p = argparsing.ArgumentParser(prog="x")
    with pytest.raises(TypeError, match="--seed has no help text"):
        p.add_argument("--seed", type=int, default=0)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_or_broken_config_is_one_line_exit_2(tmp_path, capsys):
    from llavaction_jax.train import __main__ as train_cli
    w = str(tmp_path / "w")
    assert train_cli.main(["--config", str(tmp_path / "nope.py"), "--workdir", w]) == cli.EXIT_USER
    assert _one_error(capsys) == (f"error: config file not found: {tmp_path / 'nope.py'} (--config): a Python "
                                  "file with get_config(), e.g. configs/tiny.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    return (\n")
    assert train_cli.main(["--config", str(broken), "--workdir", w]) == cli.EXIT_USER
    assert _one_error(capsys).startswith(f"error: config file does not parse: '(' was never closed ({broken}:2)")
    nothing = tmp_path / "nothing.py"
    nothing.write_text("X = 1\n")
    assert train_cli.main(["--config", str(nothing), "--workdir", w]) == cli.EXIT_USER
    assert _one_error(capsys) == (f"error: the config file has no get_config() ({nothing}): def get_config(): "
                                  "returning a ConfigDict")
    tiny = os.path.join(REPO_ROOT, "configs", "tiny.py")
    assert train_cli.main(["--config", tiny, "--workdir", w, "--config.train.num_steps=many"]) == cli.EXIT_USER
    assert _one_error(capsys) == ("error: bad config value 'many' (config.train.num_steps): an int (invalid literal "
                                  "for int() with base 10: 'many')")
    assert train_cli.main(["--config", tiny, "--workdir", w, "--config.train.num_steps"]) == cli.EXIT_USER
    assert _one_error(capsys) == ("error: a config override without a value (--config.train.num_steps): "
                                  "--config.train.num_steps=VALUE")
    assert not os.path.exists(w)


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """A tiny run trained from its own directory with relative --workdir and tokenizer paths (2 checkpoints)."""
    from llavaction_jax.input.tokenizer import train_tiny_tokenizer
    from llavaction_jax.train import __main__ as train_cli
    root = tmp_path_factory.mktemp("relrun")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train_tiny_tokenizer(["take plate", "open fridge", "You are a helpful assistant. assistant user system"] * 5,
                             "tok", vocab_size=512, video_token_id=3)
        rc = train_cli.main(["--config", os.path.join(REPO_ROOT, "configs", "tiny.py"), "--workdir", "run",
                             "--config.data.tokenizer_path=tok", "--config.train.synthetic_samples=16",
                             "--config.train.num_steps=2", "--config.train.checkpoint_every=1",
                             "--config.train.progress_bar=False", "--config.data.num_frames=2"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    return root


def test_saved_config_paths_are_absolute(relative_run):
    saved = json.load(open(relative_run / "run" / "config.json"))
    assert saved["data"]["tokenizer_path"] == str(relative_run / "tok")
    from llavaction_jax.convert.formats import train as train_format
    assert train_format.saved_config(str(relative_run / "run"))["data"]["tokenizer_path"] == str(relative_run / "tok")


def test_eval_and_predict_on_a_step_dir_from_another_directory(relative_run, tmp_path, monkeypatch, capsys):
    """From another working directory: the step dir and --step N each load that step with the run's tokenizer
    and its 2-frame clips (the tiny config says 4)."""
    from data_prep import synthetic_videos
    from llavaction_jax.eval.loading import load_for_eval
    from llavaction_jax import predict
    monkeypatch.chdir(tmp_path)
    step_dir = str(relative_run / "run" / "checkpoints" / "1")
    model, tok, config, mesh, prov = load_for_eval(step_dir, with_provenance=True)
    assert (prov["step"], int(config.data.num_frames)) == (1, 2)
    assert tok.source == str(relative_run / "tok" / "tokenizer.json")
    _, _, _, _, prov = load_for_eval(str(relative_run / "run"), with_provenance=True)
    assert prov["step"] == 2
    _, _, _, _, prov = load_for_eval(str(relative_run / "run"), with_provenance=True, step=1)
    assert prov["step"] == 1
    with pytest.raises(cli.UserError, match=r"no committed checkpoint step 7 .*: one of the run's steps \[1, 2\]"):
        load_for_eval(str(relative_run / "run"), step=7)
    video = synthetic_videos.frame_index_video(str(tmp_path / "videos"), "original", "P01_01", num_frames=30, fps=15.0,
                                        size=32)[0]
    capsys.readouterr()
    assert predict.console_main(["--checkpoint", step_dir, "--video", video, "--options", "take plate",
                                 "open fridge", "--max_new_tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "options: A. take plate, B. open fridge" in out or "answer: " in out
