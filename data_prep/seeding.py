"""Per-item random streams that do not depend on processing order or the number of worker processes.

Each item (question, prediction list, instruction sample) gets its own numpy Generator seeded from
(seed, purpose, item id) through a stable hash, so the same seed gives byte-identical files however the work is split.
"""
import hashlib

import numpy as np


def stable_hash(*parts: str) -> int:
    """64-bit hash of the parts, stable across processes and Python versions (unlike hash())."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little")


def question_rng(seed: int, purpose: str, item_id: str) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), stable_hash(purpose, item_id)]))
