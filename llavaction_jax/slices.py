"""Cloud TPU slice names (accelerator types) and the topologies behind them.

A config names the slice it is sized for as the accelerator type a user rents (``gcloud ... --accelerator-type
v5p-16``). Cloud TPU counts v2 / v3 / v4 / v5p slices by TensorCores (two per chip: v5p-8 is 4 chips, 2x2x1;
v5p-16 is 8 chips, 2x2x2; v5p-128 is 4x4x4; v5p-1024 is 8x8x8) and v5e / v6e slices by chips (v5e-4 is 2x2;
its API name is v5litepod-4). JAX shows one device per chip on all of them (megacore on v4 / v5p).
"""
import dataclasses
import math
import os
import re
from typing import Optional, Sequence

# TensorCores in a slice name per chip.
CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
# The slice shapes Cloud TPU offers per family, smallest first (v4 / v5p: 3D tori; v5e / v6e: 2D).
SHAPES = {
    "v4": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16", "8x16x16"),
    "v5p": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16", "8x16x16"),
    "v5e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    "v6e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
}
# Spellings of the family in accelerator types and in TPU_ACCELERATOR_TYPE on a TPU VM.
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}


@dataclasses.dataclass(frozen=True)
class Slice:
    family: str          # v4, v5p, v5e, v6e
    shape: str           # "2x2x2"

    @property
    def chips(self) -> int:
        return math.prod(int(x) for x in self.shape.split("x"))

    @property
    def accelerator_type(self) -> str:
        return f"{self.family}-{self.chips * CORES_PER_CHIP[self.family]}"

    @property
    def topology(self) -> str:
        """The name libtpu's topology description takes (llavaction_jax.aot)."""
        return f"{self.family}:{self.shape}"


def family_slices(family: str) -> list:
    family = _ALIASES.get(family, family)
    if family not in SHAPES:
        raise ValueError(f"unknown TPU family {family!r}: expected one of {sorted(SHAPES)}")
    return [Slice(family, s) for s in SHAPES[family]]


def parse_accelerator_type(name: str) -> tuple:
    """'v5p-16' / 'v5litepod-4' -> (family, chips); a ValueError naming what was expected otherwise."""
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
    family = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if family not in CORES_PER_CHIP:
        raise ValueError(f"{name!r} is not a Cloud TPU accelerator type: expected e.g. v5p-16, v5e-4, v6e-8, v4-8")
    cores = int(m.group(2))
    if cores % CORES_PER_CHIP[family]:
        raise ValueError(f"{name!r}: a {family} slice has {CORES_PER_CHIP[family]} TensorCores per chip")
    return family, cores // CORES_PER_CHIP[family]


def topology_chips(topology: str) -> int:
    """'v5p:2x2x2' -> 8."""
    return math.prod(int(x) for x in topology.split(":")[1].split("x"))


def slice_for_topology(topology: str) -> Slice:
    family, shape = topology.split(":")
    return Slice(_ALIASES.get(family, family), shape)


def check_running_slice(expected: str, devices: Sequence, env_type: Optional[str] = None) -> None:
    """On a real TPU slice: the running slice's accelerator type (TPU_ACCELERATOR_TYPE, set on TPU VMs) and its
    chips per slice match the config's `expected` accelerator type; a ValueError in one line otherwise. Off TPU,
    or with no expected type, nothing is checked."""
    if not expected or not devices or devices[0].platform != "tpu":
        return
    family, chips = parse_accelerator_type(expected)
    env_type = os.environ.get("TPU_ACCELERATOR_TYPE", "") if env_type is None else env_type
    if env_type:
        got = parse_accelerator_type(env_type)
        if got != (family, chips):
            raise ValueError(f"this TPU slice is a {env_type} ({got[1]} chips) but the config is sized for a "
                             f"{expected} ({chips} chips): pick the config's topology for {env_type} "
                             f"(--config configs/x.py:NAME) or rent a {expected}")
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    per_slice = len(devices) // slices
    if per_slice != chips:
        raise ValueError(f"this slice has {per_slice} chips ({len(devices)} devices over {slices} slice(s)) but "
                         f"the config is sized for a {expected} ({chips} chips)")


def spread_over_slices(config, num_slices: int):
    """`config` (sized for one slice) on `num_slices` slices, as MaxText runs multi-slice: its mesh stays the
    per-slice (ICI) mesh, the slices add data parallelism over DCN (mesh.dcn_data -1 takes them all), and the
    global batch stays what it was: each micro-batch spans N times the chips, so there are N times fewer
    (grad_accum_steps / N; left as it is when N does not divide it, for check_batch_layout to judge)."""
    accum = int(config.train.grad_accum_steps)
    if num_slices > 1 and accum % num_slices == 0:
        config.train.grad_accum_steps = accum // num_slices
    return config
