"""Where a run's wall time goes: compile, data wait, checkpointing, evaluation, start-up and productive steps.

The loop wraps each phase in `timer.phase(name)`; `report()` gives seconds per phase, the productive remainder
(wall time not spent in any phase: the steps themselves) and goodput = productive / wall, the breakdown
MaxText's goodput monitor and torchtitan's logs give. Host wall-clock only; device time is in the profiler.
"""
import contextlib
import time

PHASES = ("startup", "compile", "data_wait", "checkpoint", "eval")


class GoodputTimer:

    def __init__(self):
        self._t0 = time.perf_counter()
        self.seconds = {p: 0.0 for p in PHASES}

    @contextlib.contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float):
        if name not in self.seconds:
            raise KeyError(f"unknown goodput phase {name!r}; expected one of {PHASES}")
        self.seconds[name] += float(seconds)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def report(self) -> dict:
        """{<phase>_s, productive_s, wall_s, goodput}; productive = wall minus every phase."""
        wall = self.elapsed()
        out = {f"{p}_s": s for p, s in self.seconds.items()}
        productive = max(wall - sum(self.seconds.values()), 0.0)
        out.update(productive_s=productive, wall_s=wall, goodput=productive / wall if wall > 0 else 0.0)
        return out
