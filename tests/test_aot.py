"""AOT compilation of the real train step for a TPU topology from this CPU machine (needs libtpu)."""
import jax
import pytest

from configs import tiny
from llavaction_jax.model import num_video_tokens

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install libtpu==0.0.42.1)")

from llavaction_jax import aot  # noqa: E402  (sets the libtpu env defaults before it loads)

GiB = 1024 ** 3


def test_tiny_train_step_compiles_for_v5e_2x2():
    cfg = tiny.get_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=1)
    cfg.train.grad_accum_steps = 2
    devices = aot.topology_devices("v5e:2x2")
    assert len(devices) == 4 and "v5 lite" in devices[0].device_kind.lower()
    report = aot.compile_train_step(cfg, devices, "v5e:2x2", count_flops=False)
    assert report.mesh == {"data": 2, "fsdp": 2, "tensor": 1}
    assert report.hbm_bytes == 16 * GiB and report.fits
    assert report.argument_bytes > 0 and report.temp_bytes > 0
    # The donated state comes back as the outputs: they alias the arguments.
    assert 0 < report.alias_bytes <= report.output_bytes
    assert report.total_bytes == (report.argument_bytes + report.output_bytes - report.alias_bytes
                                  + report.temp_bytes + report.code_bytes)
    assert report.flops_per_device > 0 and report.executed_flops is None
    # 6 N T over the sample's real tokens (video + 160 text), N where it works, + attention (3x forward).
    m, v, t = cfg.model, cfg.model.vision, cfg.model.text
    video = num_video_tokens(m, 4)
    tokens = video + aot.DEFAULT_TEXT_TOKENS
    assert report.sample_tokens == tokens
    per_patch = aot_count(report, "vision") + aot_count(report, "projector")
    actions = aot_count(report, "action")
    assert actions == 64 * sum(m.action_types) + 64          # three heads (no bias) + the (1, H) token
    per_token = report.num_params - per_patch - actions - t.vocab_size * t.hidden_size
    dense = 6 * (per_token * tokens + per_patch * 16 * 4 + actions)
    attention = 3 * (2 * 2 * tokens ** 2 * 4 * 16 + 2 * 4 * 4 * 16 ** 2 * 32)
    assert report.model_flops == pytest.approx(8 * (dense + attention), rel=1e-12)
    text = "\n".join(report.lines())
    assert "FITS" in text and "temporaries" in text
    # The training log's MFU numerator is the same number: a CPU run of this config whose rows hold the
    # report's sample length in real tokens logs mfu = model FLOPs / (step time * devices * peak).
    _check_loop_mfu_numerator(cfg, report)


def _check_loop_mfu_numerator(cfg, report):
    import json
    import tempfile
    import numpy as np
    from llavaction_jax import sharding as shd
    from llavaction_jax.train import loop, synthetic_batches
    cfg = cfg.copy_and_resolve_references()
    cfg.train.update(num_steps=2, log_every=2, checkpoint_every=0, progress_bar=False, peak_flops_per_device=1e12)
    arrays = synthetic_batches.synthetic_arrays(cfg, 8, 192, seed=0)
    arrays["attention_mask"][:] = 0
    arrays["attention_mask"][:, :report.sample_tokens] = 1
    mesh = shd.make_mesh(cfg.mesh, devices=jax.devices()[:4])
    with tempfile.TemporaryDirectory() as workdir:
        loop.train(cfg, workdir, train_iter=synthetic_batches.ArrayBatchIterator(arrays, 8, mesh, seed=0), mesh=mesh)
        with open(f"{workdir}/metrics.jsonl") as f:
            row = next(r for r in map(json.loads, f) if r["prefix"] == "train")
    assert row["tokens"] == 8 * report.sample_tokens
    numerator = row["mfu"] * row["step_time_s"] * jax.device_count() * 1e12
    np.testing.assert_allclose(numerator, report.model_flops, rtol=1e-9)


def aot_count(report, subtree):
    import math
    from llavaction_jax import sharding as shd
    from llavaction_jax.train import state as state_lib
    cfg = tiny.get_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=1)
    setup = state_lib.build_setup(cfg, shd.make_mesh(cfg.mesh, devices=aot.topology_devices("v5e:2x2")))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state["params"][subtree]))


def test_executed_flops_count_every_layer_and_micro_batch():
    """The scanned, accumulated step counts exactly what its unrolled one-micro-batch version counts, times
    the micro-batches; XLA's own count of the scanned program sees each loop body once (what the old report
    printed), and of the unrolled program it agrees to within its elementwise work."""
    from llavaction_jax import sharding as shd

    def config(scan, accum, batch):
        cfg = tiny.get_config()
        cfg.mesh.update(data=4, fsdp=1, tensor=1)
        cfg.model.vision.num_layers, cfg.model.text.num_layers = 3, 4
        cfg.model.attention_impl = "xla"                     # every FLOP visible to XLA too
        cfg.model.scan_layers = scan
        cfg.data.max_length, cfg.data.global_batch_size, cfg.train.grad_accum_steps = 192, batch, accum
        return cfg

    devices = aot.topology_devices("v5e:2x2")
    executed, kernels = aot.executed_flops(config(True, 2, 8), devices, 192)
    assert kernels == 0                                      # no attention kernels on the xla path
    one_micro, _ = aot.executed_flops(config(False, 1, 4), devices, 192)
    assert executed == 2 * one_micro
    _, compiled, _, _ = aot._compile(config(False, 1, 4), shd.make_mesh(config(False, 1, 4).mesh, devices=devices),
                                     4, 192)
    xla_unrolled = 4 * aot._xla_flops(compiled)
    assert 0.75 * xla_unrolled < one_micro <= xla_unrolled
    _, compiled, _, _ = aot._compile(config(True, 2, 8), shd.make_mesh(config(True, 2, 8).mesh, devices=devices),
                                     8, 192)
    assert 4 * aot._xla_flops(compiled) < 0.5 * executed


def test_does_not_fit_is_a_verdict_not_a_traceback():
    """The TPU compiler refuses the program (RESOURCE_EXHAUSTED): the CLI prints the bytes and exits 3."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "llavaction_jax.aot", "--config", "configs/tiny.py", "--topology", "v5e:2x2",
           "--config.data.global_batch_size=4096", "--config.data.max_length=8192",
           "--config.data.length_buckets=(8192,)", "--config.model.attention_impl=xla",
           "--config.train.lm_loss=full", "--noflops"]
    root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if "DOES NOT FIT" in l)
    needed = float(line.split("needs")[1].split("GiB")[0])
    assert needed > 1000 and "of 16.00 GiB HBM" in line
    assert aot.required_bytes_from_error("... HLO temporaries (5.21T) exceeds available HBM (15.75G)") == \
        int(5.21 * 1024 ** 4)
    assert aot.required_bytes_from_error("Used 1.76T of 95.74G hbm") == int(1.76 * 1024 ** 4)


def test_splash_kernel_flops_are_counted_from_their_calls():
    """On a TPU target auto runs splash, whose custom calls XLA counts as ~0 FLOPs: the planner adds each
    call's block work (tiny: 16 patches and 192 tokens, one 128-row block each)."""
    cfg = tiny.get_config()
    cfg.mesh.update(data=4, fsdp=1, tensor=1)
    cfg.data.max_length = 192
    executed, kernels = aot.executed_flops(cfg, aot.topology_devices("v5e:2x2"), 192)
    v, t = cfg.model.vision, cfg.model.text
    # Per layer (remat none): one forward (2 matmuls per block pair), dq (3) and dkv (4) call, 2 FLOPs a MAC.
    # Vision: 8 samples x 4 frames, 16 patches -> one 128-row tile; decoder: 192 tokens -> one 256-row tile.
    per_call = 2 * (2 + 3 + 4)
    vision = v.num_layers * per_call * (8 * 4) * v.num_heads * 128 * 128 * (v.hidden_size // v.num_heads)
    text = t.num_layers * per_call * 8 * t.num_heads * 256 * 256 * t.head_dim
    assert kernels == vision + text
    assert 0 < kernels < executed


def test_bad_topology_is_a_usage_error():
    import subprocess
    import sys
    root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-m", "llavaction_jax.aot", "--config", "configs/tiny.py",
                           "--topology", "v9z:1x1", "--noflops"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: cannot describe TPU topology 'v9z:1x1'" in proc.stderr


def test_mesh_that_does_not_match_the_topology_is_an_error():
    cfg = tiny.get_config()
    cfg.mesh.update(data=3, fsdp=1, tensor=1)
    with pytest.raises(ValueError, match="needs 3 devices but 4 are available"):
        aot.compile_train_step(cfg, aot.topology_devices("v5e:2x2"), "v5e:2x2", count_flops=False)


def test_report_says_when_it_does_not_fit():
    r = aot.AotReport(topology="v5e:2x2", device_kind="TPU v5 lite", num_devices=4, mesh={}, global_batch=8,
                      grad_accum_steps=1, seq_len=16, num_frames=4, num_params=10, argument_bytes=10 * GiB,
                      output_bytes=5 * GiB, alias_bytes=5 * GiB, temp_bytes=7 * GiB, code_bytes=0,
                      total_bytes=17 * GiB, hbm_bytes=aot.hbm_bytes("TPU v5 lite"), fits=False,
                      flops_per_device=1.0, model_flops=1.0, compile_s=0.0)
    assert "DOES NOT FIT" in "\n".join(r.lines())
    assert aot.hbm_bytes("TPU v5") == 95 * GiB and aot.hbm_bytes("TPU v6 lite") == 32 * GiB
    assert aot.hbm_bytes("cpu") is None
