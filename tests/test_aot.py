"""AOT compilation of the real train step for a TPU topology from this CPU machine (needs libtpu)."""
import pytest

from configs import tiny

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install libtpu==0.0.42.1)")

from llavaction_jax import aot  # noqa: E402  (sets the libtpu env defaults before it loads)

GiB = 1024 ** 3


def test_tiny_train_step_compiles_for_v5e_2x2():
    cfg = tiny.get_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=1)
    cfg.train.grad_accum_steps = 2
    devices = aot.topology_devices("v5e:2x2")
    assert len(devices) == 4 and "v5 lite" in devices[0].device_kind.lower()
    report = aot.compile_train_step(cfg, devices, "v5e:2x2")
    assert report.mesh == {"data": 2, "fsdp": 2, "tensor": 1}
    assert report.hbm_bytes == 16 * GiB and report.fits
    assert report.argument_bytes > 0 and report.temp_bytes > 0
    # The donated state comes back as the outputs: they alias the arguments.
    assert 0 < report.alias_bytes <= report.output_bytes
    assert report.total_bytes == (report.argument_bytes + report.output_bytes - report.alias_bytes
                                  + report.temp_bytes + report.code_bytes)
    assert report.flops_per_device > 0
    assert report.model_flops == 6 * report.num_params * 8 * 256
    text = "\n".join(report.lines())
    assert "FITS" in text and "temporaries" in text


def test_mesh_that_does_not_match_the_topology_is_an_error():
    cfg = tiny.get_config()
    cfg.mesh.update(data=3, fsdp=1, tensor=1)
    with pytest.raises(ValueError, match="needs 3 devices but 4 are available"):
        aot.compile_train_step(cfg, aot.topology_devices("v5e:2x2"), "v5e:2x2")


def test_report_says_when_it_does_not_fit():
    r = aot.AotReport(topology="v5e:2x2", device_kind="TPU v5 lite", num_devices=4, mesh={}, global_batch=8,
                      grad_accum_steps=1, seq_len=16, num_frames=4, num_params=10, argument_bytes=10 * GiB,
                      output_bytes=5 * GiB, alias_bytes=5 * GiB, temp_bytes=7 * GiB, code_bytes=0,
                      total_bytes=17 * GiB, hbm_bytes=aot.hbm_bytes("TPU v5 lite"), fits=False,
                      flops_per_device=1.0, model_flops=1.0, compile_s=0.0)
    assert "DOES NOT FIT" in "\n".join(r.lines())
    assert aot.hbm_bytes("TPU v5") == 95 * GiB and aot.hbm_bytes("TPU v6 lite") == 32 * GiB
    assert aot.hbm_bytes("cpu") is None
