"""configs/validate.py: every shipped config passes; each class of error is one UserError naming the key.
(The same errors through the train CLI: tests/test_bad_inputs.py::test_train_refuses_bad_config.)"""
import importlib
import json
import os
import sys

import ml_collections
import pytest

from configs import base, validate
from conftest import REPO_ROOT
from llavaction_jax.cli import UserError

SHIPPED = [(name, arg) for name in sorted(f[:-3] for f in os.listdir(os.path.join(REPO_ROOT, "configs"))
                                          if f.endswith(".py") and f not in ("__init__.py", "base.py", "validate.py", "loader.py"))
           for arg in (list(getattr(importlib.import_module(f"configs.{name}"), "TOPOLOGIES", {})) or [None])]


def test_every_shipped_config_and_topology_passes():
    assert len(SHIPPED) >= 8          # tiny, demo, 0.5B x 2, 7B x 3, 72B x 1 at the time of writing
    for name, arg in SHIPPED:
        config = importlib.import_module(f"configs.{name}").get_config(arg)
        assert validate.validate(config) is config, (name, arg)
    validate.validate(base.get_base_config())


def _error(config) -> str:
    with pytest.raises(UserError) as info:
        validate.validate(config)
    return "error: " + info.value.line()


def _tiny():
    return importlib.import_module("configs.tiny").get_config()


def test_unknown_keys_name_the_closest_known_key():
    c = _tiny()
    c.train.num_step = 5                      # a config file may add keys (only the CLI's copy is locked)
    assert _error(c) == ("error: unknown config key 'num_step' (config.train.num_step): did you mean "
                         "config.train.num_steps?")
    c = _tiny()
    c.train.lr = 1e-4                         # the right name in the wrong section
    assert _error(c) == "error: unknown config key 'lr' (config.train.lr): did you mean config.optim.lr?"
    c = _tiny()
    c.trian = ml_collections.ConfigDict()
    assert _error(c) == "error: unknown config key 'trian' (config.trian): did you mean config.train?"
    c = _tiny()
    c.eval.zzz = 1
    assert _error(c) == "error: unknown config key 'zzz' (config.eval.zzz): a key of configs/base.py under config.eval"
    c = _tiny()
    del c.train["lm_loss"]
    assert _error(c) == "error: missing config key (config.train.lm_loss): every key of configs/base.py (defaults " \
                        "live there)"


@pytest.mark.parametrize("key, value, line", [
    ("train.num_steps", 1.5, "bad config value 1.5 of type float (config.train.num_steps): an int, as its default"),
    ("train.progress_bar", 1, "bad config value 1 of type int (config.train.progress_bar): a bool, as its default"),
    ("data.max_length", True, "bad config value True of type bool (config.data.max_length): an int, as its"),
    ("data.system_prompt", None, "bad config value None of type NoneType (config.data.system_prompt): a string"),
    ("optim.weight_decay", "0.1", "bad config value '0.1' of type str (config.optim.weight_decay): a float (or an "
                                  "int)"),
    ("data.length_buckets", 256, "bad config value 256 of type int (config.data.length_buckets): a tuple"),
    ("data.length_buckets", (128.0, 256), "bad config value (128.0, 256) (config.data.length_buckets): a tuple of "
                                          "values, each an int >= 1"),
    ("train.action_loss_parts", (0.5, 0.5), "bad config value (0.5, 0.5) (config.train.action_loss_parts): a tuple "
                                            "of 3 values, each a float (or an int) >= 0"),
    ("mesh.tensor", 0, "bad config value 0 (config.mesh.tensor): a positive size or -1 (the remaining devices)"),
    ("eval.methods", ("letters", "guess"), "bad config value ('letters', 'guess') (config.eval.methods): a "
                                           "non-empty tuple of distinct names from ('letters', 'generate')"),
    ("model.attention_impl", "flash", "bad config value 'flash' (config.model.attention_impl): expected one of "
                                      "(None, 'auto', 'xla', 'blockwise', 'splash', 'cudnn')"),
    ("model.newline_position", "diagonal", "bad config value 'diagonal' (config.model.newline_position): expected "
                                           "one of"),
    ("model.vision.patch_size", 64, "bad config value 32 (config.model.vision.image_size): >= "
                                    "model.vision.patch_size (64)"),
    ("sharding_rules", (("batch", "dataa"),), "sharding rule 'batch' maps to mesh axis 'dataa' "
                                              "(config.sharding_rules): mesh axes from ('data', 'fsdp', 'tensor')"),
    ("data.mixture_weights", (1.0, 2.0), "config.data.mixture_weights has 2 entries for 1 sources"),
    ("data.length_buckets", (256, 128), "bad config value (256, 128) (config.data.length_buckets): strictly "
                                        "increasing lengths"),
    ("data.length_buckets", (128, 512), "bad config value (128, 512) (config.data.length_buckets): lengths <= "
                                        "config.data.max_length (256)"),
    ("optim.b2", 1.0, "bad config value 1.0 (config.optim.b2): 0 <= b2 < 1"),     # train.optimizer's own rule
])
def test_each_bad_value_is_one_line_naming_the_key(key, value, line):
    c = _tiny()
    section, name = ("", key) if "." not in key else key.rsplit(".", 1)
    node = c
    for part in filter(None, section.split(".")):
        node = node[part]
    node._fields[name] = value                 # bypass ConfigDict's own type check (a config read from JSON)
    c.data.train_files = "shards-*.tfrecord"   # one glob, for the mixture rule
    assert _error(c).startswith("error: " + line)


def test_none_only_where_it_means_something():
    c = _tiny()
    c.optim.grad_clip_norm = None             # no clipping
    c.model.attention_impl = None             # the platform's kernel
    validate.validate(c)


def test_a_config_read_back_from_json_passes():
    """Tuples come back as lists (an eval of a training workdir): lists stand for tuples."""
    c = _tiny()
    back = ml_collections.ConfigDict(json.loads(c.to_json_best_effort()))
    assert isinstance(back.data.length_buckets, list)
    validate.validate(back)


def test_named_sections_accept_any_entry_and_check_common_fields():
    c = _tiny()
    c.evals = ml_collections.ConfigDict(dict(
        val=dict(type="ek100_mqa", data="val-*.tfrecord", every=100, extra_field="kept"),
        other=dict(type="recognition")))
    validate.validate(c)
    c.evals.other.every = -5
    assert _error(c) == "error: bad config value -5 (config.evals.other.every): >= 0"
    c.evals.other.every = 5
    c.evals.other.type = "mqa"
    assert _error(c) == ("error: bad config value 'mqa' (config.evals.other.type): one of "
                         "('ek100_mqa', 'generic_mc', 'recognition')")
    c.evals = ml_collections.ConfigDict(dict(other=3))
    assert _error(c).startswith("error: bad config value 3 (config.evals.other): an entry with fields")


def test_optional_demo_section_has_its_own_rules():
    demo = importlib.import_module("configs.demo")
    c = demo.get_config()
    c.demo.representation = "pictures"
    assert _error(c).startswith("error: bad config value 'pictures' (config.demo.representation): one of "
                                "('official_key',")
    c = demo.get_config()
    c.demo.train_modes = ("train", "train")
    assert _error(c).startswith("error: bad config value ('train', 'train') (config.demo.train_modes): a "
                                "non-empty tuple of distinct names")
    c = demo.get_config()
    c.demo.trian_copies = 3
    assert _error(c) == ("error: unknown config key 'trian_copies' (config.demo.trian_copies): did you mean "
                         "config.demo.train_copies?")
    c = demo.get_config()
    del c.demo["accuracy_target"]
    assert _error(c).startswith("error: missing config key (config.demo.accuracy_target)")


def test_demo_and_aot_clis_validate_before_anything(tmp_path, capsys):
    """The demo's and the AOT planner's entry points check the config first (exit 2, one line, nothing made)."""
    from llavaction_demo import run as demo
    from llavaction_jax import aot, cli
    assert cli.run(demo.main, ["--workdir", str(tmp_path / "demo"), "--steps", "0"]) == 2
    assert capsys.readouterr().err == ("error: bad config value 0 (config.train.num_steps): an integer >= 1\n")
    assert not (tmp_path / "demo").exists()
    assert aot.main(["--config", os.path.join(REPO_ROOT, "configs", "llavaction_7b.py:v5p-16"),
                     "--config.model.attention_impl=flash"]) == 2
    assert capsys.readouterr().err.startswith("error: bad config value 'flash' (config.model.attention_impl): ")
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    try:
        fit_report = importlib.import_module("fit_report")
    finally:
        sys.path.remove(os.path.join(REPO_ROOT, "benchmarks"))
    fit_report.validate_entries(fit_report.entries())     # every shipped (config, slice) passes
