"""benchmarks/accelerator.py on CPU: the tiny version of the one-command accelerator report runs end to end,
and both attention kernels train the same model on the same batch to the same loss."""
import pytest

from benchmarks import accelerator


def test_tiny_report_on_cpu(capsys):
    r = accelerator.run("tiny", tokens=128, steps=1, repeats=1)
    assert r["platform"] == "cpu" and list(r["train"]) == ["xla", "blockwise"]
    xla, blockwise = r["train"]["xla"], r["train"]["blockwise"]
    assert xla["tokens"] == blockwise["tokens"] == 128 * r["devices"]
    assert xla["params"] == blockwise["params"] > 0
    assert blockwise["loss"] == pytest.approx(xla["loss"], rel=1e-5)     # same step, another kernel
    assert xla["mfu"] is None                                            # no peak FLOP/s for a CPU
    assert xla["peak_bytes"] > 0 and blockwise["peak_bytes"] > 0
    e = r["eval"]
    assert e["one_prefill"] > 0 and e["two_prefills"] > 0
    assert e["speedup"] == pytest.approx(e["one_prefill"] / e["two_prefills"])
    accelerator.print_table(r)
    out = capsys.readouterr().out
    assert "speed-up vs xla" in out and "questions/s one prefill" in out
