"""One eval sample (JSONL dict + lazy frames), frame normalisation and the answer parser used on generations."""
import dataclasses
import re
from typing import Callable, Optional, Sequence

import numpy as np

from llavaction_jax.data import prompts
from llavaction_jax.input.schema import PIXEL_LUT
from llavaction_jax.eval.scoring import LETTERS


@dataclasses.dataclass
class EvalItem:
    """One multiple-choice sample: its JSONL dict plus a lazy frame loader (uint8 [F, S, S, 3], or None)."""
    sample: dict
    load_frames: Optional[Callable[[], Optional[np.ndarray]]] = None
    # "reference": only the original LLaVAction parser; "letter_or_text": also accept a bare letter ("B", "(B)")
    # for generic benchmarks whose prompts ask for the letter only.
    parser: str = "reference"
    # Position in the whole source (all hosts): predictions.jsonl is written in this order, whatever the
    # batching, host count or resumes.
    index: int = -1


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [-1, 1] on the host: the training input's table (bit-identical values)."""
    return PIXEL_LUT[np.asarray(frames, np.uint8)]


# The letter the answer is written with: the same "X. text" pattern the reference parser reads the text from.
_LETTER_RE = re.compile(r"([A-Z])\.\s.+")


def generated_letter(raw: str) -> Optional[str]:
    """The option letter a generation writes ("C" of "C. take plate"): the letter of the match whose text the
    reference parser reads (the last "X. text" match), or None when there is none."""
    matches = _LETTER_RE.findall(raw.rstrip(","))
    return matches[-1] if matches else None


def bare_letter(raw: str, num_options: int) -> Optional[str]:
    """A generation that is just a letter ("B", "(B)", "B) because"), for generic benchmarks; or None."""
    head = raw.strip().lstrip("(").strip()
    if head and head[0] in LETTERS[:num_options] and (len(head) == 1 or not head[1].isalnum()):
        return head[0]
    return None


def parse_generation(raw: str, options: Sequence[str], parser: str = "reference") -> Optional[str]:
    """Predicted letter from a generated answer, or None."""
    letter = prompts.parse_answer(raw, options)
    if letter is None and parser == "letter_or_text":
        letter = bare_letter(raw, len(options))
    return letter


def written_letter(raw: str, num_options: int, parser: str = "reference") -> Optional[str]:
    """The letter a generation answers with: "X. text"'s X (reference), or also a bare letter (letter_or_text)."""
    letter = generated_letter(raw)
    if letter is None and parser == "letter_or_text":
        letter = bare_letter(raw, num_options)
    return letter
