"""AOT compile of the train step with sequence packing (config.data.packing) for a TPU topology (needs libtpu)."""
import pytest

from configs import tiny

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install libtpu==0.0.42.1)")

from llavaction_jax import aot  # noqa: E402  (sets the libtpu env defaults before it loads)


def test_packed_train_step_compiles_for_v5e_2x2():
    cfg = tiny.get_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=1)
    cfg.data.update(packing=True, max_videos_per_row=2)
    report = aot.compile_train_step(cfg, aot.topology_devices("v5e:2x2"), "v5e:2x2", count_flops=False)
    assert report.fits and report.flops_per_device > 0
    # Deterministic per-device argument bytes: the state plus the PACKED batch (2 video slots per row,
    # segment_ids, positions), its frames as uint8 (normalised on the device: a quarter of float32's bytes).
    assert report.argument_bytes == 3710976
    assert report.total_bytes == (report.argument_bytes + report.output_bytes - report.alias_bytes
                                  + report.temp_bytes + report.code_bytes)
