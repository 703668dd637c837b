"""Bad inputs through the real CLIs, as a new user would make them: each ends in exit status 2 and ONE
`error: <what> (<file>[:line] / <field>): <expected>` line on stderr (no traceback), and leaves no half-written
output. Most cases call the CLI's `main(argv)` in-process under llavaction_jax.cli.run (what `python -m` does);
the ones about process exit run the CLI in a subprocess."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import EK100_DIR, REPO_ROOT
from llavaction_jax import cli

VAL_LINES = open(os.path.join(EK100_DIR, "EPIC_100_validation.csv"), encoding="utf-8").read().splitlines()[:4]


def one_error(capsys) -> str:
    """The single `error:` line the CLI printed (progress lines may precede it; a traceback may not)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def mini_csv(tmp_path, name="ann.csv", raw: bytes = None) -> str:
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else ("\n".join(VAL_LINES) + "\n").encode())
    return str(path)


# ----------------------------------------------------------------------------------------------- data prep
def test_latin1_csv_names_file_and_line(tmp_path, capsys):
    from data_prep import make_mqa
    lines = [line.encode() for line in VAL_LINES]
    lines[2] = lines[2].replace(b",", b",caf\xe9 ", 8)          # latin-1 byte in line 3
    ann = mini_csv(tmp_path, raw=b"\n".join(lines) + b"\n")
    out = tmp_path / "q.jsonl"
    rc = cli.run(make_mqa.main, ["--annotations", ann, "--class_dir", EK100_DIR, "--label_csvs", ann,
                                 "--mode", "random", "--out", str(out)], user_errors=make_mqa.USER_ERRORS)
    assert rc == 2
    assert one_error(capsys).startswith(f"error: {ann}: line 3: not UTF-8 text (byte 0xe9 at column")
    assert not out.exists()


@pytest.mark.parametrize("keys, message", [
    ('"0": P, "1": P, "2": P, "02": P', "keys must be row indices without leading zeros"),
    ('"0": P, "1": P, "2": P, "2": P', "duplicate keys ['2']"),
    ('"0": P, "1": P, "2": P, "\u00b2": P', "keys must be row indices without leading zeros"),   # superscript 2
])
def test_prediction_keys_that_would_collide(tmp_path, capsys, keys, message):
    from data_prep import make_mqa
    ann = mini_csv(tmp_path)
    entry = json.dumps({"predictions": ["0:10", "1:3", "2:5", "3:7", "4:8"]})
    preds = tmp_path / "preds.json"
    preds.write_text("{" + keys.replace("P", entry) + "}")
    out = tmp_path / "q.jsonl"
    rc = cli.run(make_mqa.main, ["--annotations", ann, "--class-dir", EK100_DIR, "--label-csvs", ann,
                                 "--predictions", str(preds), "--mode", "benchmark", "--out", str(out)],
                 user_errors=make_mqa.USER_ERRORS)
    assert rc == 2 and one_error(capsys).startswith(f"error: {preds}: {message}")
    assert not out.exists()


def test_malformed_instruction_jsonl_names_line_and_field(tmp_path, capsys):
    from data_prep import make_instructions
    src = tmp_path / "orig.jsonl"
    good = {"video": "P01-P01_11", "question_type": "direct_narration", "start_timestamp": 0.0,
            "end_timestamp": 1.5, "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "x"}]}
    src.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, end_timestamp="soon")) + "\n")
    out = tmp_path / "out.jsonl"
    rc = cli.run(make_instructions.main, ["--task", "convert_ek100", "--input", str(src), "--annotations",
                                          mini_csv(tmp_path), "--class_dir", EK100_DIR, "--out", str(out)],
                 user_errors=make_instructions.USER_ERRORS)
    assert rc == 2
    assert one_error(capsys) == (f"error: {src}: line 2: field 'end_timestamp': expected a number of seconds, "
                                 "got 'soon'")
    assert not out.exists()


def test_to_tfrecord_mistyped_video_root(tmp_path, capsys):
    from data_prep import to_tfrecord
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"id": "a", "video_id": "P01_01", "start_timestamp": 0, "stop_timestamp": 1,
                                   "conversations": []}) + "\n")
    out = tmp_path / "out"
    rc = cli.run(to_tfrecord.main, ["--samples", str(samples), "--video-root", str(tmp_path / "vidoes"),
                                    "--layout", "original", "--out", str(out), "--workers", "0"])
    assert rc == 2 and one_error(capsys) == (f"error: not a directory (--video_root {tmp_path / 'vidoes'}): the "
                                             "root of the 'original' video layout")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- convert
def test_convert_truncated_safetensors_names_the_file(tmp_path, capsys):
    from safetensors.numpy import save_file
    from llavaction_jax.convert import __main__ as convert_cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llava_qwen", "mm_vision_tower": "siglip"}))
    save_file({"model.norm.weight": np.zeros(1000, np.float32)}, str(src / "model.safetensors"))
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[:len(data) // 2])
    dst = tmp_path / "dst"
    rc = cli.run(convert_cli.main, ["import", "--format", "llava_qwen", "--src", str(src), "--dst", str(dst)],
                 user_errors=convert_cli._user_errors())
    assert rc == 2
    assert one_error(capsys).startswith(f"error: not a readable safetensors file (Error while deserializing "
                                        f"header: incomplete metadata, file not fully covered) "
                                        f"({src / 'model.safetensors'}): an intact .safetensors file")
    assert not dst.exists()
    # Two different sources, by flag and positionally: refused before anything is read.
    rc = cli.run(convert_cli.main, ["import", "--format", "llava_qwen", "--src", str(src), str(tmp_path / "x"),
                                    str(dst)], user_errors=convert_cli._user_errors())
    assert rc == 2 and "two src paths given" in one_error(capsys)


# ----------------------------------------------------------------------------------------------- train
@pytest.fixture()
def train_flags():
    """The train CLI with its flags bound (what `llavaction-train ARGS` runs): `.main()` parses them (config file,
    --config.<key> overrides) and trains, returning the exit status."""
    from llavaction_jax.train import __main__ as train_cli

    def parse(*args):
        argv = ["--config", os.path.join(REPO_ROOT, "configs", "tiny.py"), *args]
        return types.SimpleNamespace(main=lambda _argv=None: train_cli.main(argv))
    return parse


@pytest.mark.parametrize("override, field", [
    ("--config.optim.lr=-1e-3", "error: bad config value -0.001 (config.optim.lr): a finite learning rate > 0"),
    ("--config.optim.warmup_ratio=1.5", "error: bad config value 1.5 (config.optim.warmup_ratio): 0 <= "
                                        "warmup_ratio <= 1"),
    ("--config.optim.b2=1.0", "error: bad config value 1.0 (config.optim.b2): 0 <= b2 < 1"),
    ("--config.train.num_steps=0", "error: bad config value 0 (config.train.num_steps): an integer >= 1"),
    ("--config.train.action_loss_layers=first_layer", "error: bad config value 'first_layer' "
     "(config.train.action_loss_layers): one of ('last_layer', 'all_layers')"),
])
def test_train_refuses_bad_optimizer_values(tmp_path, capsys, train_flags, override, field):
    cli_mod = train_flags("--workdir", str(tmp_path / "w"), override)
    assert cli_mod.main([]) == 2
    assert one_error(capsys) == field
    assert not (tmp_path / "w").exists()          # refused before the config is saved or anything built


REMAT_POLICIES = ("('none', 'full', 'save_qkv_proj', 'save_dot_except_mlp', 'save_all_named', "
                  "'offload_dot_except_mlp', 'dots_saveable', 'dots_with_no_batch_dims_saveable')")


@pytest.mark.parametrize("override, line", [
    # unknown key, with the closest known key
    ("--config.train.num_step=5", "error: unknown config key 'num_step' (config.train.num_step): did you mean "
                                  "config.train.num_steps?"),
    ("--config.trian.num_steps=5", "error: unknown config key 'trian' (config.trian): did you mean config.train?"),
    # wrong type (the override parses as the type of the config file's value)
    ("--config.train.num_steps=1.5", "error: bad config value '1.5' (config.train.num_steps): an int (invalid "
                                     "literal for int() with base 10: '1.5')"),
    ("--config.train.progress_bar=maybe", "error: bad config value 'maybe' (config.train.progress_bar): a bool "
                                          "(true or false)"),
    ("--config.data.length_buckets=(128,x)", "error: bad config value '(128,x)' (config.data.length_buckets): a "
                                             "tuple (a Python literal) (malformed node or string on line 1: "
                                             "<ast.Name object at"),
    # out of range, bad enum (configs/validate.py)
    ("--config.data.num_frames=0", "error: bad config value 0 (config.data.num_frames): >= 1"),
    ("--config.eval.max_samples=-1", "error: bad config value -1 (config.eval.max_samples): >= 0"),
    ("--config.model.remat_policy=sometimes", "error: bad config value 'sometimes' (config.model.remat_policy): "
                                              f"expected one of {REMAT_POLICIES}"),
    ("--config.train.lm_loss=half", "error: bad config value 'half' (config.train.lm_loss): one of ('full', "
                                    "'chunked', 'supervised')"),
    ("--config.model.dtype=int8", "error: bad config value 'int8' (config.model.dtype): expected one of "
                                  "('float32', 'bfloat16', 'float16')"),
    # cross-field
    ("--config.model.text.num_kv_heads=3", "error: bad config value 4 (config.model.text.num_heads): a multiple "
                                           "of model.text.num_kv_heads (3)"),
    ("--config.data.num_frames=200", "error: bad config value 256 (config.data.max_length): more than the 1201 "
                                     "video tokens of one 200-frame clip (+ the text)"),
    ("--config.mesh.fsdp=-1", "error: mesh config {'data': -1, 'fsdp': -1, 'tensor': 1}: at most one axis may be "
                              "-1, got ['data', 'fsdp'] (config.mesh)"),
    # a mesh of another size than the 8 (fake) devices: one line at start, nothing written
    ("--config.mesh.data=3", "error: mesh config {'data': 3, 'fsdp': 1, 'tensor': 1, 'dcn_data': -1, 'dcn_fsdp': 1} "
                             "needs 3 devices but 8 are available; expected data x fsdp x tensor = 8 (config.mesh)"),
    ("--config.mesh.dcn_data=0", "error: bad config value 0 (config.mesh.dcn_data): a positive size or -1 (the "
                                 "number of slices)"),
])
def test_train_refuses_bad_config(tmp_path, capsys, train_flags, override, line):
    """Every class of config error through the train CLI's own flag parsing and main: exit 2, one line naming
    the key, nothing written."""
    assert cli.run(lambda: train_flags("--workdir", str(tmp_path / "w"), override).main([])) == 2
    assert one_error(capsys).startswith(line) if "<ast." in line else one_error(capsys) == line
    assert not (tmp_path / "w").exists()


def test_train_mesh_smaller_than_the_devices_is_one_line(tmp_path, capsys, train_flags):
    """2 x 2 on 8 devices: refused at start with the sizes, before the workdir is made."""
    cli_mod = train_flags("--workdir", str(tmp_path / "w"), "--config.mesh.data=2", "--config.mesh.fsdp=2")
    assert cli_mod.main([]) == 2
    assert one_error(capsys) == ("error: mesh config {'data': 2, 'fsdp': 2, 'tensor': 1, 'dcn_data': -1, 'dcn_fsdp': "
                                 "1} needs 4 devices but 8 are available; expected data x fsdp x tensor = 8 "
                                 "(config.mesh)")
    assert not (tmp_path / "w").exists()


def test_train_unparseable_tokenizer_names_the_file(tmp_path, capsys, train_flags):
    """A corrupt / wrong-schema TFRecord is the same kind of error (file and byte offset named), raised by the
    reader the trainer uses: see tests/test_input_recordio.py (cheaper there than behind a model init)."""
    from llavaction_jax.input import synthetic_records
    shard = synthetic_records.write_shards(str(tmp_path / "data"), 8, 1, 4, 32)[0][0]
    bad = tmp_path / "badtok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    w = tmp_path / "w"
    cli_mod = train_flags("--workdir", str(w), f"--config.data.train_files={shard}",
                          f"--config.data.tokenizer_path={bad}", "--config.train.progress_bar=False")
    assert cli_mod.main([]) == 2
    line = one_error(capsys)
    assert line.startswith("error: cannot parse the tokenizer: ")
    assert line.endswith(f"({bad / 'tokenizer.json'}): a Hugging Face tokenizers JSON file (tokenizer.json)")
    assert not [d for d in os.listdir(w / "checkpoints") if d.isdigit()]       # nothing saved


def test_train_init_from_another_model_size_is_one_line(capsys):
    """The mismatch itself is raised by loop.train (tests/test_train_checkpoint.py, which builds the checkpoint);
    here: the train CLI reports it under the convention, as one line (the message spans several)."""
    from llavaction_jax.train import __main__ as train_cli
    from llavaction_jax.train.checkpointing import CheckpointMismatchError

    def main():
        raise CheckpointMismatchError("init_from /ckpt: parameter 'llm/norm/scale' has shape (64,) in the\n"
                                      "checkpoint but (32,) in this model (checkpoint from another model size?)")
    assert cli.run(main, user_errors=train_cli.USER_ERRORS) == 2
    assert one_error(capsys) == ("error: init_from /ckpt: parameter 'llm/norm/scale' has shape (64,) in the "
                                 "checkpoint but (32,) in this model (checkpoint from another model size?)")


def test_train_workdir_urls(tmp_path, capsys, train_flags):
    """file:// is the local path; a scheme no filesystem serves (or one Orbax cannot checkpoint to) is one
    line before anything is written. Runs on file:// and ram:// workdirs: tests/test_train_workdir_fs.py."""
    from llavaction_jax.train.loop import resolve_workdir
    assert resolve_workdir(f"file://{tmp_path}/w") == f"{tmp_path}/w"
    cli_mod = train_flags("--workdir", "foo://bucket/run")
    assert cli_mod.main([]) == 2
    assert one_error(capsys) == ("error: no filesystem for the scheme foo:// (--workdir foo://bucket/run): a local "
                                 "path, file://... or a scheme tf.io.gfile serves (gs://, ...)")
    assert not os.path.exists("foo:")                # no local 'foo:' directory made
    cli_mod = train_flags("--workdir", "ram://run")
    assert cli_mod.main([]) == 2
    assert one_error(capsys) == ("error: Orbax cannot write checkpoints to ram:// URLs (ram://run/checkpoints): "
                                 "a local path, file://... or gs://... workdir")
    import tensorflow as tf
    assert not tf.io.gfile.exists("ram://run")       # refused before the config is saved


def _env():
    return dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")


def test_train_init_from_missing_exits_cleanly(tmp_path):
    """The message, then a clean exit: no `Fatal Python error: Aborted` (rc 134) from threads left running."""
    proc = subprocess.run([sys.executable, "-m", "llavaction_jax.train", "--config", "configs/tiny.py",
                           "--workdir", str(tmp_path / "w"), "--config.train.init_from=/nonexistent/ckpt",
                           "--config.train.synthetic_samples=8", "--config.train.progress_bar=False"],
                          cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Fatal Python error" not in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot load init_from '/nonexistent/ckpt': /nonexistent/ckpt: not a directory "
                      "(config.train.init_from): an Orbax dir from `python -m llavaction_jax.convert import`, an "
                      "HF / llava_qwen safetensors dir or a training workdir"]
    # Refused before anything is built: no checkpoint (nor Orbax's background threads) ever made.
    ckpts = tmp_path / "w" / "checkpoints"
    assert not ckpts.exists() or not [d for d in os.listdir(ckpts) if d.isdigit()]


def test_train_help_and_flag_errors_follow_the_convention():
    run = lambda *a: subprocess.run([sys.executable, "-m", "llavaction_jax.train", *a], cwd=REPO_ROOT, env=_env(),
                                    capture_output=True, text=True, timeout=120)
    proc = run("--help")
    assert proc.returncode == 0 and "--workdir" in proc.stdout and "--config.train.num_steps=1000" in proc.stdout
    proc = run("--config", "configs/tiny.py", "--workdir", "/tmp/unused", "--config.optim.lr=fast")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: bad config value 'fast' (config.optim.lr): a float (or "
                                                     "an int) (could not convert string to float: 'fast')")


# ----------------------------------------------------------------------------------------------- eval
def test_eval_validates_the_checkpoints_config_before_building(tmp_path, capsys):
    """The eval CLI checks the training workdir's saved config (with its own overrides) before any model is
    built: a bad saved value and a --num_frames too many for max_length are each one line naming the key."""
    from configs import tiny
    from llavaction_jax.eval import __main__ as eval_cli
    from llavaction_jax.train import checkpointing
    config = checkpointing.config_to_dict(tiny.get_config())
    config["train"]["lm_loss"] = "half"
    ckpt = checkpointing.Checkpointer(str(tmp_path / "w" / "checkpoints"), async_save=False)
    ckpt.save(1, {"step": np.zeros((), np.int32)}, {}, config)
    ckpt.close()
    args = ["--checkpoint", str(tmp_path / "w"), "--data", "x-*.tfrecord", "--out", str(tmp_path / "out")]
    assert cli.run(eval_cli.main, args) == 2
    assert one_error(capsys) == ("error: bad config value 'half' (config.train.lm_loss): one of ('full', "
                                 "'chunked', 'supervised')")
    config["train"]["lm_loss"] = "supervised"
    ckpt = checkpointing.Checkpointer(str(tmp_path / "w2" / "checkpoints"), async_save=False)
    ckpt.save(1, {"step": np.zeros((), np.int32)}, {}, config)
    ckpt.close()
    args[1] = str(tmp_path / "w2")
    assert cli.run(eval_cli.main, args + ["--num_frames", "200"]) == 2
    assert one_error(capsys) == ("error: bad config value 256 (config.data.max_length): more than the 1201 video "
                                 "tokens of one 200-frame clip (+ the text)")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- predict
@pytest.mark.parametrize("args, message", [
    (["--start", "-5"], "--start -5.0 is negative"),
    (["--start", "1", "--end", "9"], "--end 9.0 is past the end of the video (3.000 s; tolerance 1.0 s)"),
    (["--start", "2", "--end", "1"], "--end 1.0 is before --start 2.0"),
])
def test_predict_out_of_range_clip(tmp_path, capsys, args, message):
    from data_prep import synthetic_videos
    from llavaction_jax import predict
    video = synthetic_videos.frame_index_video(str(tmp_path / "v"), "original", "P01_01", num_frames=45, fps=15.0,
                                        size=32)[0]
    rc = cli.run(predict.main, ["--checkpoint", str(tmp_path / "never_loaded"), "--video", video, *args,
                                "--options", "a", "b"], user_errors=predict._user_errors())
    assert rc == 2
    assert one_error(capsys) == (f"error: {message} ({video}): 0 <= --start <= --end <= the video's length "
                                 "(3.000 s)")
