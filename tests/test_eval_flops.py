"""Evaluation FLOPs per question (XLA cost analysis, tiny model with a long 32-frame video prompt): letters +
generation from one prefill stay within 1.15x of the floor; the old two-prefill path was ~2x."""
import pytest

from benchmarks.eval_flops import measure
from configs import tiny

MAX_NEW = 8


@pytest.fixture(scope="module")
def flops():
    return measure(tiny.get_config().model, batch=2, frames=32, text_tokens=24, max_new=MAX_NEW)


def test_one_prefill_is_near_the_floor_and_two_were_twice_it(flops):
    assert flops["video_tokens"] == 193 and flops["prompt_len"] == 219       # a long prompt: mostly video
    after, before = flops["ratio"]["after"], flops["ratio"]["before"]
    assert after["both"] <= 1.15
    assert 1.9 <= before["both"] <= 2.05
    # Each method alone was already at the floor (letters: LM head at the last position only).
    assert after["letters"] == before["letters"] <= 1.02
    assert after["generate"] <= 1.01 and before["generate"] <= 1.01
    # Letters + generation cost what generation alone costs, plus the action heads and the letters' gather.
    ex = flops["executed"]["after"]
    assert ex["generate"] < ex["both"] <= ex["generate"] + (ex["letters"] - flops["prefill"]) * 1.01
    # The floor counts one prefill and MAX_NEW - 1 decode steps.
    assert flops["floor"]["both"] == pytest.approx(flops["prefill"] + (MAX_NEW - 1) * flops["decode_step"])
