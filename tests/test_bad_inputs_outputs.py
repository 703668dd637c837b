"""Bad inputs that used to go wrong without a word (issue 22), through the real CLIs as processes: outputs never
land in the wrong place, eval predictions are tied to what made them, imported tensors are checked, and a
llava_qwen export (the released checkpoints' format) evaluates directly. Each case: exit status 2, no traceback,
ONE `error:` line naming the file / field, and nothing written where it should not be.

One tiny setup per module (two models as llava_qwen exports with their tokenizer, 8 MQA TFRecord samples); every
case is one process (~5-10 s to start JAX)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from safetensors.numpy import load_file, save_file

from conftest import REPO_ROOT
from configs import tiny
from llavaction_jax.data import prompts, records
from llavaction_jax.convert import api
from llavaction_jax.convert.formats import llava_qwen
from llavaction_jax.input.tokenizer import train_tiny_tokenizer
from llavaction_jax.model.llava import LlavaActionModel

FRAMES = 4          # the tiny config's; a llava_qwen dir carries no data section (base: 16)
OPTIONS = ["A. cut tomato", "B. open fridge", "C. wash plate", "D. take knife", "E. pour water"]
# Offline and deterministic for gs://: every HTTP request goes to a closed local port.
NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
              "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_GCE_CHECK": "true"}


def run_cli(module, *args, cwd=REPO_ROOT, env=None, timeout=300, patch=None):
    """`python -m module args` as a process. `patch`: Python source run first in that process (a failure
    injected where the real one would happen: a full disk, an internal bug)."""
    full_env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", **(env or {}))
    start = ["-m", module] if patch is None else [
        "-c", f"{patch}\nimport runpy, sys\nsys.argv[0] = {module!r}\nrunpy.run_module({module!r}, "
              "run_name='__main__', alter_sys=True)"]
    return subprocess.run([sys.executable, *start, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_error(proc) -> str:
    """The one `error:` line of a process that exited 2 with no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _sample(i):
    return {"id": f"s{i}", "video_id": "P01_01", "start_timestamp": 1.0, "stop_timestamp": 2.0 + i,
            "conversations": [{"from": "human", "value": "<image>\n" + prompts.mcq_prompt(OPTIONS)},
                              {"from": "gpt", "value": "ABCDE"[i % 5]}],
            "options": OPTIONS, "answer": "ABCDE"[i % 5], "source": "avion", "mode": "benchmark",
            "verb_class": i % 3, "noun_class": 1, "action_id": 0, "option_actions": [f"0:{j}" for j in range(5)]}


def _llava_qwen_export(model, config, tok, dst):
    api.export_model(model, config.model, dst, "llava_qwen")
    shutil.copy(tok.source, os.path.join(dst, "tokenizer.json"))     # eval reads the tokenizer from the dir
    return dst


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    config = tiny.get_config()
    texts = [" ".join(o for o in OPTIONS)] * 4 + [prompts.mcq_prompt(OPTIONS)]
    tok = train_tiny_tokenizer(texts, str(root / "tok"), vocab_size=config.model.text.vocab_size)
    letters = np.random.default_rng(0).integers(97, 123, (5000, 6))
    words = " ".join("".join(map(chr, w)) for w in letters)          # enough distinct text for > 512 merges
    big = train_tiny_tokenizer(texts + [words], str(root / "bigtok"), vocab_size=config.model.text.vocab_size + 200)
    assert big.vocab_size > config.model.text.vocab_size
    ckpt_a = _llava_qwen_export(LlavaActionModel(config.model, rngs=nnx.Rngs(0)), config, tok, str(root / "a"))
    ckpt_b = _llava_qwen_export(LlavaActionModel(config.model, rngs=nnx.Rngs(1)), config, tok, str(root / "b"))
    side, frames = config.model.vision.image_size, FRAMES
    rng = np.random.default_rng(0)
    for shard in range(2):
        with tf.io.TFRecordWriter(str(root / f"val-{shard:05d}-of-00002.tfrecord")) as w:
            for i in range(4 * shard, 4 * shard + 4):
                jpegs = [records.encode_jpeg(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
                         for _ in range(frames)]
                w.write(records.encode_example(_sample(i), jpegs, [0.5 * t for t in range(frames)]))
    return dict(root=root, a=ckpt_a, b=ckpt_b, data=str(root / "val-*.tfrecord"), tok=tok, bigtok=str(root / "bigtok"))


def _eval(made, ckpt, out, *extra, **kw):
    return run_cli("llavaction_jax.eval", "--checkpoint", ckpt, "--data", made["data"], "--out", out,
                   "--methods", "letters", "--num_frames", FRAMES, "--no_progress", *extra, **kw)


# ----------------------------------------------------------------------------------------------- eval
def test_llava_qwen_export_evaluates_and_resumes_only_its_own_predictions(made, tmp_path):
    """A llava_qwen dir (LLaVA's IMAGE_TOKEN_INDEX -200 as the video slot id) evaluates directly; its outputs
    carry a fingerprint; another checkpoint into the same --out is refused, --no_resume evaluates afresh."""
    out = tmp_path / "out"
    proc = _eval(made, made["a"], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 8 and summary["num_resumed"] == 0
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["checkpoint"]["path"] == made["a"] and fp["checkpoint"]["step"] is None
    assert sorted(fp["data"]) == [str(made["root"] / f"val-{s:05d}-of-00002.tfrecord") for s in range(2)]
    assert fp["methods"] == ["letters"] and fp["num_frames"] == FRAMES
    before = (out / "predictions.jsonl").read_text()

    line = one_error(_eval(made, made["b"], out))
    assert line.startswith(f"error: 8 saved predictions come from another evaluation: the checkpoint's files "
                           f"(names, sizes, mtimes) changed; checkpoint.path {made['a']!r} -> {made['b']!r} (")
    assert line.endswith(f"({out / 'fingerprint.json'}): the same checkpoint, data, frames, methods and "
                         "max_new_tokens to resume; or --no_resume to evaluate afresh into this --out, or a new --out")
    assert (out / "predictions.jsonl").read_text() == before            # refused before anything was touched

    proc = _eval(made, made["b"], out, "--no_resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["num_resumed"] == 0
    assert json.loads((out / "fingerprint.json").read_text())["checkpoint"]["path"] == made["b"]
    # The same evaluation again resumes all of it.
    proc = _eval(made, made["b"], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["num_resumed"] == 8


def test_eval_glob_that_matches_nothing_and_bad_out_paths(made, tmp_path):
    """One of two comma-separated globs matching nothing, --out on a file, on ram:// and on gs:// without
    credentials (network blocked): each one line, and no local folder named after the URL."""
    line = one_error(run_cli("llavaction_jax.eval", "--checkpoint", made["a"], "--out", tmp_path / "o1",
                             "--data", f"{made['data']},{made['root']}/tset-*.tfrecord"))
    assert line == (f"error: no TFRecord files match '{made['root']}/tset-*.tfrecord' (one of the 2 comma-separated "
                    "globs) (--data): a .jsonl file or TFRecord glob(s), each matching at least one file")
    assert not (tmp_path / "o1").exists()
    (tmp_path / "file").write_text("x")
    line = one_error(_eval(made, made["a"], tmp_path / "file"))
    assert line == (f"error: exists and is not a directory (--out {tmp_path / 'file'}): a directory for "
                    "predictions.jsonl, summary.json and the report (new, or one this tool wrote)")
    line = one_error(_eval(made, made["a"], "ram://evals/x", cwd=tmp_path))
    assert line == ("error: ram:// is in-memory and vanishes when the process exits (--out ram://evals/x): a local "
                    "path, file://... or a persistent store such as gs://...")
    line = one_error(_eval(made, made["a"], "gs://no-such-bucket/x", cwd=tmp_path, env=NO_NETWORK))
    assert line.startswith("error: cannot reach gs://no-such-bucket/x (")
    assert line.endswith("(--out gs://no-such-bucket/x): a reachable location (for gs://: credentials, e.g. `gcloud "
                         "auth application-default login`, and network access)")
    assert sorted(os.listdir(tmp_path)) == ["file"]                     # no ./gs:/ nor ./ram:/ folder


def test_eval_refuses_a_tokenizer_larger_than_the_vocab(made, tmp_path):
    line = one_error(_eval(made, made["a"], tmp_path / "o", "--tokenizer", made["bigtok"]))
    assert line == (f"error: the tokenizer has {made_vocab(made['bigtok'])} ids but the model's vocabulary only 512 "
                    f"({made['bigtok']}/tokenizer.json / the model of {made['a']}): the tokenizer the checkpoint was "
                    "trained with (at most model.text.vocab_size ids)")
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def made_vocab(tok_dir):
    import tokenizers
    return tokenizers.Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json")).get_vocab_size(True)


# ----------------------------------------------------------------------------------------------- convert
def test_export_destinations(made, tmp_path):
    """gs:// without credentials and ram:// are one line and no local './gs:/...' folder; a non-empty --dst is
    refused; --overwrite replaces it whole (written aside, then swapped in)."""
    export = lambda dst, *a, **kw: run_cli("llavaction_jax.convert", "export", "--format", "llava_qwen", "--src",
                                           made["a"], "--dst", dst, *a, **kw)
    line = one_error(export("gs://no-such-bucket/x", cwd=tmp_path, env=NO_NETWORK))
    assert line.startswith("error: cannot reach gs://no-such-bucket/x (") and "(--dst gs://no-such-bucket/x)" in line
    line = one_error(export("ram://x", cwd=tmp_path))
    assert line.startswith("error: ram:// is in-memory and vanishes when the process exits (--dst ram://x)")
    assert os.listdir(tmp_path) == []
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    line = one_error(export(dst))
    assert line == (f"error: destination is not empty (--dst {dst}): a new or empty directory, or --overwrite to "
                    "replace it (the old one stays whole until the new one is complete)")
    assert os.listdir(dst) == ["notes.txt"]
    proc = export(dst, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "notes.txt" not in os.listdir(dst) and (dst / "config.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["dst"]                     # no staging sibling left
    a = load_file(os.path.join(made["a"], "model.safetensors"))
    b = load_file(str(dst / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _broken_copy(made, tmp_path, name, change):
    src = tmp_path / name
    shutil.copytree(made["a"], src)
    tensors = load_file(str(src / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(src / "model.safetensors"))
    return src


@pytest.mark.parametrize("name, change, message", [
    ("int32", lambda t: t.update({"model.norm.weight": t["model.norm.weight"].astype(np.int32)}),
     "error: tensor 'model.norm.weight' is int32 (for parameter llm/norm/scale) ({f}): a floating-point tensor "
     "(float32 / bfloat16 / float16)"),
    ("nan", lambda t: t["model.norm.weight"].__setitem__(3, np.nan),
     "error: tensor 'model.norm.weight' holds NaN or inf values (for parameter llm/norm/scale) ({f}): finite "
     "weights (a broken or overflowed checkpoint?), or --allow_nonfinite to import it anyway"),
    ("float64", lambda t: t.update({k: v.astype(np.float64) for k, v in t.items()}),
     "error: tensor '{first}' (and the bulk of the weights) is float64 ({f}): one of ('float32', 'bfloat16', "
     "'float16'), or --dtype float32 to cast it"),
])
def test_import_checks_tensor_dtypes_and_values(made, tmp_path, name, change, message):
    src = _broken_copy(made, tmp_path, name, change)
    dst = tmp_path / "imported"
    line = one_error(run_cli("llavaction_jax.convert", "import", "--format", "llava_qwen", "--src", src,
                             "--dst", dst))
    first = sorted(load_file(str(src / "model.safetensors")))[0]
    assert line == message.format(f=src / "model.safetensors", first=first)
    assert not dst.exists()


def test_import_allow_nonfinite_warns_naming_the_tensors_and_imports(made, tmp_path):
    def poison(t):
        t["model.norm.weight"][3] = np.inf
        t["model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
    src = _broken_copy(made, tmp_path, "nan", poison)
    dst = tmp_path / "imported"
    proc = run_cli("llavaction_jax.convert", "import", "--format", "llava_qwen", "--src", src, "--dst", dst,
                   "--allow_nonfinite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "--allow_nonfinite" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING "), proc.stderr[-3000:]
    assert warnings[0].endswith(f"{src}: tensors holding NaN or inf values, imported as they are "
                                "(--allow_nonfinite): model.layers.1.mlp.up_proj.weight, model.norm.weight") or \
        warnings[0].endswith(f"{src}: tensors holding NaN or inf values, imported as they are "
                             "(--allow_nonfinite): model.norm.weight, model.layers.1.mlp.up_proj.weight")
    assert (dst / "params").is_dir() and json.loads(proc.stdout)


def test_convert_user_errors_are_one_line_and_bugs_keep_their_traceback(made, tmp_path):
    """The convert CLI turns only the user-error family into one line: a checkpoint of another format, an
    override of no field; an internal ValueError (injected: a bug) is a traceback, exit 1."""
    imp = lambda *a, **kw: run_cli("llavaction_jax.convert", "import", "--src", made["a"], "--dst", tmp_path / "o",
                                   *a, **kw)
    assert one_error(imp("--format", "hf")) == f"error: {made['a']}: looks like a 'llava_qwen' checkpoint, not 'hf'"
    line = one_error(imp("--format", "llava_qwen", "--override", "text.no_such_field=3"))
    assert line.startswith("error: config override 'text.no_such_field': no field 'no_such_field' (known: [")
    proc = imp("--format", "llava_qwen", patch=(
        "from llavaction_jax.convert.formats import llava_qwen\n"
        "def parse_config(*a, **k):\n    raise ValueError('an internal bug')\n"
        "llava_qwen.parse_config = parse_config"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr and proc.stderr.rstrip().endswith("ValueError: an internal bug")
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert not (tmp_path / "o").exists()


def test_llava_qwen_config_disagreeing_with_its_tensors_names_both_files(made, tmp_path):
    """config.json without vision sizes (as the released ones): the tower is read off the tensors, and a
    config.json key that disagrees with them is one line naming config.json, the safetensors file and the key."""
    src = tmp_path / "src"
    shutil.copytree(made["a"], src)
    cj = json.loads((src / "config.json").read_text())
    cj.pop("vision_config", None)
    cj["mm_hidden_size"] = 48
    (src / "config.json").write_text(json.dumps(cj))
    line = one_error(run_cli("llavaction_jax.convert", "import", "--format", "llava_qwen", "--src", src,
                             "--dst", tmp_path / "o"))
    hidden = tiny.get_config().model.vision.hidden_size
    assert line == (f"error: mm_hidden_size=48 but tensor '{llava_qwen.VISION_PREFIX}embeddings.patch_embedding."
                    f"weight' has {hidden} channels ({src / 'config.json'} / {src / 'model.safetensors'}): "
                    "mm_hidden_size equal to the vision tower's width")
    assert not (tmp_path / "o").exists()


def test_released_llavaction_7b_config_reads_and_validates():
    """The shape of the released LLaVAction-7B config.json (Qwen2-7B + SigLIP so400m, LLaVA-NeXT keys, written
    out here; no weights): read as the original does, with IMAGE_TOKEN_INDEX -200 as the video slot sentinel, and
    the whole config passes configs/validate.py (it failed on `video_token_id >= 0` before)."""
    from configs import base, validate
    from llavaction_jax.convert.formats import llava_qwen
    from llavaction_jax.model import config as model_config_lib
    cj = {"architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen", "hidden_act": "silu",
          "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
          "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
          "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
          "image_token_index": -200, "mm_vision_tower": "google/siglip-so400m-patch14-384",
          "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 1152, "mm_vision_select_layer": -2,
          "mm_patch_merge_type": "spatial_unpad", "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2,
          "mm_newline_position": "grid", "image_aspect_ratio": "anyres_max_9", "add_time_instruction": True,
          "vision_supervision": "one_token", "action_types": "97,300,3806"}
    pre = llava_qwen.VISION_PREFIX
    shapes = {pre + "embeddings.patch_embedding.weight": (1152, 3, 14, 14),
              pre + "embeddings.position_embedding.weight": (729, 1152),
              "model.embed_tokens.weight": (152064, 3584), "lm_head.weight": (152064, 3584)}
    shapes.update({pre + f"encoder.layers.{i}.mlp.fc1.weight": (4304, 1152) for i in range(27)})
    model_cfg = model_config_lib.model_config()
    llava_qwen.parse_config(cj, shapes, model_cfg)
    t, v = model_cfg.text, model_cfg.vision
    assert model_cfg.video_token_id == -200
    assert (t.vocab_size, t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.intermediate_size,
            t.head_dim) == (152064, 3584, 28, 28, 4, 18944, 128)
    assert (v.hidden_size, v.num_layers, v.num_heads, v.image_size, v.patch_size) == (1152, 26, 16, 384, 14)
    assert (model_cfg.pool_mode, model_cfg.newline_position, model_cfg.action_token,
            tuple(model_cfg.action_types)) == ("bilinear", "grid", True, (97, 300, 3806))
    config = base.get_base_config()
    config.model = model_cfg
    assert validate.validate(config) is config
    config.model.video_token_id = -1                                    # any other negative id is still refused
    with pytest.raises(Exception, match=r"bad config value -1 \(config.model.video_token_id\): >= 0 \(a vocab id\) "
                                        r"or -200 \(LLaVA's IMAGE_TOKEN_INDEX sentinel\)"):
        validate.validate(config)


# ENOSPC half-way through writing the shards: the shard writer writes part of a file, then the write raises as a
# full disk does.
_FULL_DISK_IN_EXPORT = """
import errno, os
from llavaction_jax.convert import safetensors_format
def full_disk(tensors, out_dir, max_shard_bytes):
    path = os.path.join(out_dir, "model.safetensors")
    with open(path, "wb") as f:
        f.write(b"\\0" * 1000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
safetensors_format.write_sharded = full_disk
"""


def test_disk_full_during_export_leaves_the_previous_export_whole(made, tmp_path):
    """ENOSPC while `convert export --overwrite` writes (injected in the process): one line naming the file, the
    previous export byte for byte as it was, no staging dir left."""
    dst = tmp_path / "dst"
    shutil.copytree(made["a"], dst)
    before = {name: (dst / name).read_bytes() for name in os.listdir(dst)}
    proc = run_cli("llavaction_jax.convert", "export", "--format", "llava_qwen", "--src", made["b"], "--dst", dst,
                   "--overwrite", patch=_FULL_DISK_IN_EXPORT)
    assert one_error(proc) == (f"error: no space left on the device (No space left on device) "
                               f"({tmp_path / '.dst.incomplete'}/model.safetensors): free space there and run again")
    assert {name: (dst / name).read_bytes() for name in os.listdir(dst)} == before
    assert sorted(os.listdir(tmp_path)) == ["dst"]


# ----------------------------------------------------------------------------------------------- eval / predict
def _not_checkpoints(root):
    """Folders people point --checkpoint at by mistake: empty, a folder of videos, an Orbax dir without params/,
    and one whose model_config.json is broken."""
    dirs = {name: root / name for name in ("empty", "videos", "no_params", "broken_config")}
    for d in dirs.values():
        d.mkdir()
    (dirs["videos"] / "P01_01.MP4").write_bytes(b"\0" * 64)
    (dirs["no_params"] / "model_config.json").write_text("{}")
    (dirs["broken_config"] / "model_config.json").write_text('{"text": {"vocab_size": 5')
    (dirs["broken_config"] / "params").mkdir()
    return dirs


@pytest.mark.parametrize("name", ["empty", "videos", "no_params"])
def test_eval_on_a_folder_that_is_no_checkpoint(made, tmp_path, name):
    d = _not_checkpoints(tmp_path)[name]
    line = one_error(_eval(made, d, tmp_path / "o"))
    assert line.startswith(f"error: {d}: not a recognised checkpoint; expected one of: hf: ")
    assert not (tmp_path / "o").exists()


def test_broken_model_config_and_empty_predict_options(made, tmp_path):
    d = _not_checkpoints(tmp_path)["broken_config"]
    line = one_error(_eval(made, d, tmp_path / "o"))      # (predict checks its clip first, then loads the same way)
    assert line.startswith("error: invalid JSON (Expecting ")
    assert line.endswith(f"({d / 'model_config.json'}): the JSON file the converter / trainer wrote (re-export the "
                         "checkpoint)")
    line = one_error(run_cli("llavaction_jax.predict", "--checkpoint", d, "--video", tmp_path / "v.mp4",
                             "--options", "", " "))
    assert line == ("error: option A is empty (--options (option 1 of 2)): each option a non-empty text, e.g. "
                    "--options 'take plate' 'open fridge'")


def test_generic_mc_question_with_a_literal_image_placeholder(made, tmp_path):
    data = tmp_path / "mc.jsonl"
    row = {"video": "clip.mp4", "question": "What is shown in <image>?", "options": ["a cat", "a dog"], "answer": 0}
    data.write_text(json.dumps(row) + "\n")
    line = one_error(run_cli("llavaction_jax.eval", "--checkpoint", made["a"], "--data", data, "--video_root",
                             tmp_path, "--out", tmp_path / "o", "--num_frames", FRAMES, "--no_progress"))
    assert line == (f"error: field 'question' contains '<image>', the video's placeholder (the prompt adds it once, "
                    f"before the question): remove it from the text ({data}: row 1)")


# ----------------------------------------------------------------------------------------------- train, data prep
def test_train_on_a_zero_byte_shard(made, tmp_path):
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    shard.write_bytes(b"")
    line = one_error(run_cli("llavaction_jax.train", "--config", "configs/tiny.py", "--workdir", tmp_path / "w",
                             f"--config.data.train_files={shard}", f"--config.data.tokenizer_path={made['tok'].source}",
                             "--config.train.progress_bar=False"))
    assert line == (f"error: no training records in {shard} for process 0 of 1 (config.data.train_files): TFRecord "
                    "shards holding records (a zero-byte shard is empty: rewrite it with llavaction-prep tfrecord)")


# A full disk while Orbax writes the `data` item of checkpoint step 4 (after half its file), as its async
# save thread would meet it; the other steps are written as usual.
_FULL_DISK_AT_STEP_4 = """
import errno, os
from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
real_save = jch.JsonCheckpointHandler._save_fn
async def _save_fn(self, x, directory):
    if os.path.basename(str(directory.parent)).split(".")[0] == "4":
        path = str(directory / self._filename)
        with open(path, "w") as f:
            f.write('{"half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return await real_save(self, x, directory)
jch.JsonCheckpointHandler._save_fn = _save_fn
"""


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one(made, tmp_path):
    """ENOSPC inside Orbax's save of step 4: one line naming the checkpoint directory (no traceback from
    Orbax's threads), step 2 whole; the next run resumes from step 2 and finishes."""
    work = tmp_path / "w"
    train = lambda **kw: run_cli(
        "llavaction_jax.train", "--config", "configs/tiny.py", "--workdir", work,
        f"--config.data.train_files={made['data']}", f"--config.data.tokenizer_path={made['tok'].source}",
        "--config.train.num_steps=4", "--config.train.checkpoint_every=2", "--config.data.global_batch_size=8",
        "--config.train.progress_bar=False", **kw)
    line = one_error(train(patch=_FULL_DISK_AT_STEP_4))
    ckdir = work / "checkpoints"
    assert line.startswith(f"error: no space left on the device while saving a checkpoint (No space left on "
                           f"device: {ckdir}/4.")
    assert line.endswith(f"({ckdir}): free space there and run again: the run resumes from its last committed "
                         "checkpoint (the unfinished one is not used)")
    assert "2" in os.listdir(ckdir) and "4" not in os.listdir(ckdir)
    proc = train()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {ckdir}/2" in proc.stderr
    assert {"2", "4"} <= set(os.listdir(ckdir))


def test_train_gs_workdir_without_credentials_is_one_line(made, tmp_path):
    """No credentials and no network (every request to a closed local port): one line naming the workdir, not
    TensorFlow's FailedPreconditionError traceback, and no local './gs:/...' folder."""
    line = one_error(run_cli("llavaction_jax.train", "--config", os.path.join(REPO_ROOT, "configs/tiny.py"),
                             "--workdir", "gs://no-such-bucket/run", f"--config.data.train_files={made['data']}",
                             f"--config.data.tokenizer_path={made['tok'].source}",
                             "--config.train.progress_bar=False", cwd=tmp_path, env=NO_NETWORK))
    assert line.startswith("error: cannot reach gs://no-such-bucket/run (")
    assert line.endswith("(--workdir gs://no-such-bucket/run): a reachable location (for gs://: credentials, e.g. "
                         "`gcloud auth application-default login`, and network access)")
    assert os.listdir(tmp_path) == []


def _max_length_line(made, max_length, frames, with_answer):
    from llavaction_jax.input import chat
    from llavaction_jax.model.spec import num_video_tokens
    video = num_video_tokens(tiny.get_config().model, frames)
    need = chat.shortest_length(made["tok"], video, "You are a helpful assistant.", with_answer)
    assert video < max_length < need             # passes configs/validate.py's video-token rule
    part = "and a one-token answer" if with_answer else "and the assistant header"
    return (f"error: max_length {max_length} cannot hold the chat template ({need - video} tokens with the system "
            f"prompt {part}) + the {video} video tokens of a {frames}-frame clip = {need} tokens "
            f"(config.data.max_length): at least {need}, plus room for the question and answer text")


def test_max_length_below_the_chat_template_is_refused_at_start(made, tmp_path):
    """Room for the video tokens but not for the template around them: one line at train and eval start, with
    the numbers (train: tiny's 4 frames, 25 video tokens; eval: a llava_qwen export's base max_length 4096)."""
    line = one_error(run_cli("llavaction_jax.train", "--config", "configs/tiny.py", "--workdir", tmp_path / "w",
                             f"--config.data.train_files={made['data']}",
                             f"--config.data.tokenizer_path={made['tok'].source}", "--config.data.max_length=30",
                             "--config.data.length_buckets=()", "--config.train.progress_bar=False"))
    assert line == _max_length_line(made, 30, 4, with_answer=True)
    line = one_error(run_cli("llavaction_jax.eval", "--checkpoint", made["a"], "--data", made["data"], "--out",
                             tmp_path / "o", "--methods", "letters", "--num_frames", 681, "--no_progress"))
    assert line == _max_length_line(made, 4096, 681, with_answer=False)


@pytest.mark.parametrize("k, line", [
    ("0", "error: k=0 options per question (--k): 2..26 (one letter A-Z per option)"),
    ("27", "error: k=27 options per question (--k): 2..26 (one letter A-Z per option)"),
    ("1", "error: k=1 options per question (--k): 2..26 (one letter A-Z per option)"),
    ("5", "error: k=5 options per question but the label space has only 3 actions (--k): at most 3 for --mode "
          "random (distinct actions per question)"),
])
def test_make_mqa_k_out_of_range(tmp_path, k, line):
    from conftest import EK100_DIR
    rows = open(os.path.join(EK100_DIR, "EPIC_100_validation.csv"), encoding="utf-8").read().splitlines()[:4]
    ann = tmp_path / "ann.csv"
    ann.write_text("\n".join(rows) + "\n")
    actions = len({tuple(r.split(",")[10:13:2]) for r in rows[1:]})
    proc = run_cli("data_prep.make_mqa", "--annotations", ann, "--class_dir", EK100_DIR, "--label_csvs", ann,
                   "--mode", "random", "--k", k, "--out", tmp_path / "q.jsonl")
    assert one_error(proc) == line.replace("only 3", f"only {actions}").replace("at most 3", f"at most {actions}")
    assert not (tmp_path / "q.jsonl").exists()


def test_make_mqa_prediction_key_that_is_no_row_index(tmp_path):
    """A key int() would read as a row (the superscript two '\u00b2' is a digit to Python): one line naming the
    predictions file, as a process."""
    from conftest import EK100_DIR
    rows = open(os.path.join(EK100_DIR, "EPIC_100_validation.csv"), encoding="utf-8").read().splitlines()[:4]
    ann = tmp_path / "ann.csv"
    ann.write_text("\n".join(rows) + "\n")
    entry = {"predictions": ["0:10", "1:3", "2:5", "3:7", "4:8"]}
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"0": entry, "1": entry, "2": entry, "\u00b2": entry}, ensure_ascii=False))
    line = one_error(run_cli("data_prep.make_mqa", "--annotations", ann, "--class_dir", EK100_DIR, "--label_csvs",
                             ann, "--predictions", preds, "--mode", "benchmark", "--out", tmp_path / "q.jsonl"))
    assert line.startswith(f"error: {preds}: keys must be row indices without leading zeros")
    assert not (tmp_path / "q.jsonl").exists()


@pytest.mark.parametrize("args, line", [
    (["--config.mesh.data=3"], "error: mesh config {'data': 3, 'fsdp': 1, 'tensor': 1, 'dcn_data': -1, 'dcn_fsdp': 1} "
                               "needs 3 devices but 8 are available; expected data x fsdp x tensor = 8 (config.mesh)"),
    (["--config.mesh.data=2", "--config.mesh.fsdp=2"],
     "error: mesh config {'data': 2, 'fsdp': 2, 'tensor': 1, 'dcn_data': -1, 'dcn_fsdp': 1} needs 4 devices but 8 "
     "are available; expected data x fsdp x tensor = 8 (config.mesh)"),
    (["--config", "{tmp}/nope.py"], "error: config file not found: {tmp}/nope.py (--config): a Python file with "
                                    "get_config(), e.g. configs/tiny.py"),
    (["--config", "{tmp}/broken.py"], "error: config file does not parse: '(' was never closed ({tmp}/broken.py:2): "
                                      "valid Python"),
])
def test_train_mesh_and_config_file_errors_as_processes(tmp_path, args, line):
    """On 8 (fake) devices: a mesh of another size, a missing config file and one that does not parse are each
    one line at start, and no workdir is made."""
    (tmp_path / "broken.py").write_text("def get_config():\n    return (\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    config = [] if "--config" in args else ["--config", "configs/tiny.py"]
    proc = run_cli("llavaction_jax.train", *config, *args, "--workdir", tmp_path / "w",
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert one_error(proc) == line.replace("{tmp}", str(tmp_path))
    assert not (tmp_path / "w").exists()


def test_predict_on_folders_that_are_no_checkpoint(tmp_path):
    """predict, as eval: an empty folder, a folder of videos, an Orbax dir without params/ and a broken
    model_config.json are each one line naming the folder or the file."""
    from data_prep import synthetic_videos
    video = synthetic_videos.frame_index_video(str(tmp_path / "v"), "original", "P01_01", num_frames=30, fps=15.0,
                                               size=32)[0]
    dirs = _not_checkpoints(tmp_path)
    for name in ("empty", "videos", "no_params"):
        line = one_error(run_cli("llavaction_jax.predict", "--checkpoint", dirs[name], "--video", video,
                                 "--options", "a", "b"))
        assert line.startswith(f"error: {dirs[name]}: not a recognised checkpoint; expected one of: hf: ")
    line = one_error(run_cli("llavaction_jax.predict", "--checkpoint", dirs["broken_config"], "--video", video,
                             "--options", "a", "b"))
    assert line.startswith("error: invalid JSON (Expecting ")
    assert line.endswith(f"({dirs['broken_config'] / 'model_config.json'}): the JSON file the converter / trainer "
                         "wrote (re-export the checkpoint)")
