"""attention_impl='auto' picks splash for a TPU target compiled on this CPU host, and it cuts the train step's
temporaries by over 10x against the score-materialising `xla` reference at 8k tokens (needs libtpu)."""
import jax
import pytest

from configs import base, tiny

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install libtpu==0.0.42.1)")

from llavaction_jax import aot  # noqa: E402  (sets the libtpu env defaults before it loads)

LENGTH = 8192


def _config(impl):
    """A small decoder (16 heads of 16, 4 kv heads) at 8192 tokens with one 16-patch frame; 1 sample per chip."""
    cfg = tiny.get_config()
    cfg.model.text = base.text_config(vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=2,
                                      num_heads=16, num_kv_heads=4, head_dim=16, tie_word_embeddings=False,
                                      max_position_embeddings=LENGTH)
    cfg.model.attention_impl = impl
    cfg.mesh.update(data=8, fsdp=1, tensor=1)
    cfg.data.num_frames = 1
    cfg.data.max_length = LENGTH
    cfg.data.length_buckets = (LENGTH,)
    cfg.data.global_batch_size = 8
    return cfg


def test_auto_is_splash_on_tpu_and_needs_10x_fewer_temporaries(monkeypatch):
    compiled = []
    lowered_compile = jax.stages.Lowered.compile

    def keep(self, *args, **kwargs):  # keep the compiled program to read its HLO
        out = lowered_compile(self, *args, **kwargs)
        compiled.append(out)
        return out

    monkeypatch.setattr(jax.stages.Lowered, "compile", keep)
    devices = aot.topology_devices("v5p:2x2x2")
    auto = aot.compile_train_step(_config("auto"), devices, "v5p:2x2x2", count_flops=False)
    hlo = compiled[-1].as_text()
    xla = aot.compile_train_step(_config("xla"), devices, "v5p:2x2x2", count_flops=False)
    assert auto.seq_len == xla.seq_len == LENGTH and auto.mesh == {"data": 8, "fsdp": 1, "tensor": 1}
    # The splash kernels (forward, dq and dkv backward) are Mosaic custom calls in the TPU program.
    assert 'custom_call_target="tpu_custom_call"' in hlo
    for kernel in ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"):
        assert kernel in hlo, kernel
    assert "splash_mha" not in compiled[-1].as_text()
    # One decoder layer's float32 scores alone are 16 heads x 8192^2 x 4 bytes = 4 GiB per chip.
    assert xla.temp_bytes > 16 * LENGTH * LENGTH * 4
    assert auto.temp_bytes * 10 < xla.temp_bytes, (auto.temp_bytes, xla.temp_bytes)
    assert auto.fits and auto.argument_bytes == xla.argument_bytes
