"""Tiny ChatML tokenizer: fixed special ids, round trips, save/load like a checkpoint dir."""
import csv
import json
import os

import pytest

from llavaction_jax.data import prompts
from llavaction_jax.input.tokenizer import Tokenizer, train_tiny_tokenizer
from tests.conftest import EK100_DIR


def ek100_texts(limit=3000):
    """EK100 validation narrations + the prompt strings (what the tiny tokenizer is trained on)."""
    texts = [prompts.SYSTEM_PROMPT, prompts.PERSPECTIVE_PREFIX, prompts.MCQ_FORMAT_HINT, prompts.MCQ_OPTIONS_HEADER,
             prompts.time_instruction(3.5, 8), "system\nuser\nassistant\n"]
    with open(os.path.join(EK100_DIR, "EPIC_100_validation.csv"), newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i >= limit:
                break
            texts.append(f"A. {row['narration']}, B. {row['verb']} {row['noun']}")
    return texts


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok"))
    train_tiny_tokenizer(ek100_texts(), out, vocab_size=512)
    return out


def test_special_ids_are_fixed(tok_dir):
    tok = Tokenizer.load(tok_dir, video_token_id=3)
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>")] == [0, 1, 2, 3]
    assert (tok.pad_id, tok.im_start_id, tok.im_end_id, tok.eos_id, tok.video_token_id) == (0, 1, 2, 2, 3)
    # User text never yields a special id: the strings of the specials are encoded as plain characters.
    literal = tok.encode("<|im_start|>user<|im_end|> <video>")
    assert not set(literal) & {0, 1, 2, 3} and tok.decode(literal) == "<|im_start|>user<|im_end|> <video>"
    assert tok.encode("\n") == [tok.newline_id] and tok.newline_id > 3
    assert 300 < tok.vocab_size <= 512


def test_round_trip(tok_dir):
    tok = Tokenizer.load(tok_dir, video_token_id=3)
    for text in ["take plate", "Here are the options of actions you are selecting:\nA. open fridge, B. wash knife",
                 "The provided video lasts for 12.345 seconds, and 16 frames are uniformly sampled from it.",
                 "unicode ✓ café 😀 and spaces   \n\n tabs\t!", ""]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # Merges were learned from the training text: a frequent phrase is much shorter than its bytes.
    assert len(tok.encode("take plate, B. put down knife")) < 12
    # Video slots (any id outside the vocabulary, e.g. -200) are dropped by decode.
    assert tok.decode([-200, -200] + tok.encode("plate")) == "plate"


def test_load_from_saved_dir(tok_dir, tmp_path):
    tok = Tokenizer.load(tok_dir, video_token_id=3)
    assert sorted(os.listdir(tok_dir)) == ["tokenizer.json", "tokenizer_config.json"]
    with open(os.path.join(tok_dir, "tokenizer_config.json")) as f:
        assert json.load(f)["eos_token"] == "<|im_end|>"
    tok.save(str(tmp_path))
    again = Tokenizer.load(str(tmp_path / "tokenizer.json"), video_token_id=3)
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert again.encode(text) == tok.encode(text)
    assert again.vocab_size == tok.vocab_size and again.newline_id == tok.newline_id
    # The saved dir is in the HF format real checkpoints use: transformers reads it the same way.
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"))
    # (our encode treats special-token strings as text, as transformers' split_special_tokens=True)
    assert hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == tok.encode(text)
    assert hf(text, add_special_tokens=False)["input_ids"][0] == tok.im_start_id      # the file itself is unchanged


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(str(tmp_path), video_token_id=3)
    with pytest.raises(ValueError, match="video"):
        train_tiny_tokenizer(["abc"], str(tmp_path), vocab_size=512, video_token_id=7)
