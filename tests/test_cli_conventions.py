"""One flag style and help format for every CLI, and the small train-side conventions (config saved, Orbax INFO
filtered, metrics.jsonl without duplicate steps after a resume)."""
import json
import logging
import os

import pytest

from llavaction_jax import argparsing


def test_underscore_flags_with_dash_aliases_and_defaults_in_help(capsys):
    p = argparsing.ArgumentParser(prog="x")
    p.add_argument("--video_root", required=True, help="videos")
    p.add_argument("--label-csvs", nargs="*", default=None, help="csvs")   # declared with dashes: underscore added
    p.add_argument("--num_frames", type=int, default=16, help="frames per clip")
    p.add_argument("--no_progress", action="store_true", help="no bar")
    a = p.parse_args(["--video-root", "v", "--label_csvs", "a.csv", "--num-frames", "8"])
    assert (a.video_root, a.label_csvs, a.num_frames, a.no_progress) == ("v", ["a.csv"], 8, False)
    assert p.parse_args(["--video_root", "w", "--label-csvs"]).label_csvs == []
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--num_frames NUM_FRAMES\n" in out and "frames per clip (default: 16)" in out
    assert "--label_csvs" in out and "--label-csvs" not in out and "--video-root" not in out
    assert "(default: False)" not in out and "(default: None)" not in out


@pytest.mark.parametrize("module, argv", [
    ("data_prep.make_mqa", []), ("data_prep.make_instructions", []), ("data_prep.to_tfrecord", []),
    ("data_prep.synthetic_videos", []), ("llavaction_jax.predict", []), ("llavaction_jax.convert.__main__", ["import"]),
])
def test_every_argparse_cli_help_exits_0_with_defaults(capsys, module, argv):
    import importlib
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: " in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("--") and "-" in
                line.lstrip()[2:].split()[0].split(",")[0]], "a dash-spelled flag in --help"


def test_orbax_info_and_metadata_warning_are_dropped_unless_verbose():
    from absl import logging as absl_logging
    from llavaction_jax import logs
    logs.configure()
    logs.configure()                                     # idempotent: one filter
    logger = absl_logging.get_absl_logger()
    assert sum(f is logs._drop_noise for f in logger.filters) == 1

    def record(level, path, msg="m"):
        return logging.LogRecord("absl", level, path, 1, msg, None, None)
    orbax = "/x/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not logger.filter(record(logging.INFO, orbax))
    assert not logger.filter(record(logging.WARNING, orbax, "Metadata file does not exist: /r/1/_CHECKPOINT_METADATA"))
    assert logger.filter(record(logging.WARNING, orbax))
    assert logger.filter(record(logging.INFO, "/x/llavaction_jax/train/checkpointing.py"))
    assert logging.getLogger("jax._src.xla_bridge").level == logging.WARNING     # no "Unable to initialize backend"
    try:
        logs.configure(verbose=True)
        assert logger.filter(record(logging.INFO, orbax))
        assert logging.getLogger("jax._src.xla_bridge").level == logging.NOTSET
    finally:
        os.environ.pop(logs.VERBOSE_ENV, None)
        logs.configure()


def test_metrics_rows_after_the_resume_step_are_dropped(tmp_path):
    from llavaction_jax.train.metrics import MetricWriter
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "prefix": "train", "loss": float(s)} for s in range(1, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "pre')     # torn last line
    w = MetricWriter(str(tmp_path), start_step=5)            # resumed from the step-5 checkpoint
    w.write(6, {"loss": 60.0})
    w.close()
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads(path.read_text().splitlines()[-1])["loss"] == 60.0
