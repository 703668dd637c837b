"""The checkpoint format registry: every format claims only its own directories, a new format is one module plus
one registry line (detect_format, load_pretrained and the CLI pick it up), an unwritable format says so."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from conftest import load_test_data_module
from llavaction_jax import sharding as shd
from llavaction_jax.cli import UserError
from llavaction_jax.convert import api, common, formats
from llavaction_jax.convert.__main__ import main as convert_main
from llavaction_jax.model import build as model_build


def _npz_format():
    return load_test_data_module("npz_format")


def _mesh():
    return shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def _params(model):
    return {p: np.asarray(v.get_value()) for p, v in common.flat_params(nnx.state(model, nnx.Param)).items()}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """One directory of each format (and of the test-only npz format), all holding the same random tiny model."""
    from llavaction_jax.train.checkpointing import Checkpointer, config_to_dict
    root = tmp_path_factory.mktemp("formats")
    config = tiny.get_config()
    # Random values straight into the abstract model: no compiled init (that alone takes ~10 s here).
    graphdef, params, _ = nnx.split(model_build.abstract_model(config.model, _mesh()), nnx.Param, ...)
    rng = np.random.default_rng(0)
    for var in common.flat_params(params).values():
        target = var.get_value()
        var.set_value(jax.device_put(rng.standard_normal(target.shape).astype(target.dtype), target.sharding))
    model = nnx.merge(graphdef, params)
    out = {"orbax": str(root / "orbax"), "llava_qwen": str(root / "llava_qwen"), "hf": str(root / "hf"),
           "train": str(root / "work"), "npz": str(root / "npz")}
    formats.orbax.save_orbax(out["orbax"], model, config.model, {"source": "random tiny model"})
    api.export_checkpoint(out["orbax"], out["llava_qwen"], "llava_qwen", mesh=_mesh())
    api.export_checkpoint(out["orbax"], out["hf"], "hf", mesh=_mesh(), allow_layout_change=True, num_frames=16)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    ckpt = Checkpointer(os.path.join(out["train"], "checkpoints"), async_save=False)
    ckpt.save(5, {"params": params, "step": jnp.zeros((), jnp.int32)}, {"epoch": 0}, config_to_dict(config))
    ckpt.close()
    _npz_format().write(common.Loaded(model, config.model, "", ""), out["npz"])
    return out, _params(model)


def test_every_format_claims_only_its_own_dirs(dirs, monkeypatch):
    out, want = dirs
    npz = _npz_format()
    monkeypatch.setitem(formats.FORMATS, npz.NAME, npz)
    assert set(formats.FORMATS) == set(out)
    claims = {(name, kind): fmt.detect(path) for name, fmt in formats.FORMATS.items() for kind, path in out.items()}
    assert claims == {(name, kind): name == kind for name, kind in claims}
    for kind, path in out.items():
        assert api.detect_format(path) == kind
        got = _params(api.load_pretrained(path, mesh=_mesh())[0])
        # HF has no action token / heads: they are dropped on export, so its model lacks them.
        assert sorted(got) == sorted(p for p in want if kind != "hf" or not p.startswith("action/")), kind
        for p, a in got.items():
            np.testing.assert_array_equal(a, want[p], err_msg=f"{kind}: {p}")
    with pytest.raises(ValueError, match="not a recognised checkpoint") as e:
        api.detect_format(os.path.dirname(out["orbax"]))
    assert all(f"{name}: " in str(e.value) for name in formats.FORMATS)      # each format says what it reads


def test_a_new_format_is_one_module_and_one_registry_line(dirs, tmp_path, monkeypatch, capsys):
    out, want = dirs
    npz = _npz_format()
    with pytest.raises(SystemExit):                   # not registered yet: not a --format choice
        convert_main(["export", "--format", "npz", out["orbax"], str(tmp_path / "no")])
    capsys.readouterr()
    monkeypatch.setitem(formats.FORMATS, npz.NAME, npz)          # the one registry line
    for command in ("import", "export"):
        with pytest.raises(SystemExit):
            convert_main([command, "--help"])
        assert "npz = numpy archive of the parameter tree" in " ".join(capsys.readouterr().out.split())
    convert_main(["export", "--format", "npz", out["orbax"], str(tmp_path / "npz")])
    assert json.loads(capsys.readouterr().out)["format"] == "npz"
    assert api.detect_format(str(tmp_path / "npz")) == "npz"
    model, config = api.load_pretrained(str(tmp_path / "npz"), mesh=_mesh())
    assert config.model.to_dict() == tiny.get_config().model.to_dict()
    # ... and it is a source like any other: import (to Orbax) and export (to llava_qwen) read it.
    info = api.import_checkpoint(str(tmp_path / "npz"), str(tmp_path / "orbax"), "npz", mesh=_mesh())
    assert info["format"] == "npz"
    api.export_checkpoint(str(tmp_path / "npz"), str(tmp_path / "lq"), "llava_qwen", mesh=_mesh())
    for path in (tmp_path / "npz", tmp_path / "orbax", tmp_path / "lq"):
        got = _params(api.load_pretrained(str(path), mesh=_mesh())[0])
        assert sorted(got) == sorted(want)
        for p, a in got.items():
            np.testing.assert_array_equal(a, want[p], err_msg=f"{path}: {p}")


def test_an_unwritable_format_says_so(dirs, tmp_path, capsys):
    out, _ = dirs
    with pytest.raises(UserError) as e:
        api.export_checkpoint(out["orbax"], str(tmp_path / "t"), "train", mesh=_mesh())
    assert e.value.line() == ("the 'train' checkpoint format cannot be written (--format train): training "
                              "checkpoints are written by `python -m llavaction_jax.train`; write 'orbax' for a "
                              "params dir of this model")
    assert not (tmp_path / "t").exists()
    with pytest.raises(SystemExit) as e:             # the CLI offers only writable formats to export
        convert_main(["export", "--format", "train", out["orbax"], str(tmp_path / "t")])
    assert e.value.code == 2 and "invalid choice: 'train'" in capsys.readouterr().err
    # A training run is a source, though: its parameters import into an Orbax dir.
    info = api.import_checkpoint(out["train"], str(tmp_path / "from_train"), mesh=_mesh())
    assert info["format"] == "train" and api.detect_format(str(tmp_path / "from_train")) == "orbax"


def test_the_caller_gives_the_defaults_a_checkpoint_without_a_training_config_lacks(dirs, tmp_path, capsys):
    """The library imports no configs: load_pretrained wraps a non-training checkpoint's model section in the
    caller's `defaults` (the model section alone without them), an hf export of a model that names no frame count
    needs `num_frames` (refused before anything is written), and the convert CLI passes configs/base.py's."""
    from configs import base
    from llavaction_jax.convert import hf_processor
    from llavaction_jax.eval.loading import load_for_eval
    out, _ = dirs
    _, bare = api.load_pretrained(out["orbax"], mesh=_mesh())
    assert set(bare.keys()) == {"model"} and bare.model.to_dict() == tiny.get_config().model.to_dict()
    defaults = base.get_base_config()
    defaults.data.num_frames = 3
    _, full = api.load_pretrained(out["orbax"], mesh=_mesh(), defaults=defaults)
    assert full.data.num_frames == 3 and full.model.to_dict() == bare.model.to_dict()
    assert defaults.model.to_dict() == base.get_base_config().model.to_dict()     # the caller's copy is untouched
    _, run = api.load_pretrained(out["train"], mesh=_mesh(), defaults=defaults)
    assert run.data.num_frames == tiny.get_config().data.num_frames               # a run's own config wins
    with pytest.raises(ValueError, match="needs defaults="):
        load_for_eval(out["orbax"], mesh=_mesh())
    with pytest.raises(UserError, match="frames per clip are unknown.*pass num_frames"):
        api.export_checkpoint(out["orbax"], str(tmp_path / "no_frames"), "hf", mesh=_mesh(),
                              allow_layout_change=True)
    assert not (tmp_path / "no_frames").exists()
    convert_main(["export", "--format", "hf", "--allow_layout_change", out["orbax"], str(tmp_path / "cli")])
    capsys.readouterr()
    card = (tmp_path / "cli" / "README.md").read_text()
    assert f"{base.get_base_config().data.num_frames} frames" in card
    assert hf_processor.read_sampling(str(tmp_path / "cli")) is None               # no tokenizer: no processor files
