"""One eval sample (JSONL dict + lazy frames), frame normalisation and the answer parser used on generations."""
import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from data_prep import prompts
from llavaction_jax.eval.scoring import LETTERS


@dataclasses.dataclass
class EvalItem:
    """One multiple-choice sample: its JSONL dict plus a lazy frame loader (uint8 [F, S, S, 3], or None)."""
    sample: dict
    load_frames: Optional[Callable[[], Optional[np.ndarray]]] = None
    # "reference": only the original LLaVAction parser; "letter_or_text": also accept a bare letter ("B", "(B)")
    # for generic benchmarks whose prompts ask for the letter only.
    parser: str = "reference"


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [-1, 1] (SigLIP mean = std = 0.5)."""
    return (np.asarray(frames, np.float32) / 255.0 - 0.5) / 0.5


def parse_generation(raw: str, options: Sequence[str], parser: str = "reference") -> Optional[str]:
    """Predicted letter from a generated answer, or None."""
    letter = prompts.parse_answer(raw, options)
    if letter is None and parser == "letter_or_text":
        head = raw.strip().lstrip("(").strip()
        if head and head[0] in LETTERS[:len(options)] and (len(head) == 1 or not head[1].isalnum()):
            letter = head[0]
    return letter


