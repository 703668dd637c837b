"""Option-letter scoring: one forward pass per batch, read the next-token logits of the letters "A".."Z".

Prompts end with "<|im_start|>assistant\\n" and are RIGHT-padded, so the logits that predict the first answer token
sit at the last REAL position of each row (sum(mask) - 1), not at column L - 1. The model's answer format is
"C. take plate", whose first token is the bare letter for byte-level BPE tokenizers (the pre-tokenizer splits letters
from punctuation); `letter_token_ids` checks that instead of assuming it.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llavaction_jax.data.prompts import LETTERS


def letter_token_ids(tokenizer, num_letters: int = 26) -> np.ndarray:
    """Token id of each option letter as the model emits it at the start of an answer ("C. take plate")."""
    ids = []
    for letter in LETTERS[:num_letters]:
        alone = tokenizer.encode(letter)
        in_answer = tokenizer.encode(f"{letter}. take plate")
        if len(alone) != 1 or not in_answer or in_answer[0] != alone[0]:
            raise ValueError(
                f"tokenizer does not encode option letter {letter!r} as one token that also starts an answer "
                f"(encode({letter!r}) = {alone}, encode('{letter}. take plate')[:2] = {in_answer[:2]}); "
                "letter scoring needs single-token letters")
        ids.append(alone[0])
    return np.asarray(ids, np.int32)


def last_real_position(attention_mask: jax.Array) -> jax.Array:
    """Index of the last real token of each right-padded row, int32 [B]."""
    return jnp.sum(attention_mask.astype(jnp.int32), axis=1) - 1


def letter_logits_from_logits(logits: jax.Array, attention_mask: jax.Array, letter_ids: jax.Array) -> jax.Array:
    """logits [B, L, V] -> float32 [B, K]: next-token logits of the K letters at each row's last real position."""
    last = last_real_position(attention_mask)
    at_last = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0, :]       # [B, V]
    return jnp.take(at_last, letter_ids, axis=1).astype(jnp.float32)


def choose_letters(letter_logits: np.ndarray, num_options: Sequence[int]) -> np.ndarray:
    """Argmax over each row's own options only (rows may have different option counts); int [B]."""
    letter_logits = np.asarray(letter_logits, np.float32)
    k = letter_logits.shape[1]
    counts = np.asarray(num_options)
    if np.any(counts < 1) or np.any(counts > k):
        raise ValueError(f"option counts {counts.tolist()} must be in [1, {k}]")
    valid = np.arange(k)[None, :] < counts[:, None]
    return np.argmax(np.where(valid, letter_logits, -np.inf), axis=1)
