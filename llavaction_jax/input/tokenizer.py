"""Text tokenizer: a thin wrapper over `tokenizers.Tokenizer` with the ChatML (Qwen2) special ids.

Real checkpoints ship a Qwen2 `tokenizer.json` (byte-level BPE; specials `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`). Tests and the demo use `train_tiny_tokenizer`, which trains a small byte-level BPE with the same
pre-tokenisation as Qwen2 and fixed special ids, saved in the same on-disk format so both load identically.
"""
import json
import os

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from llavaction_jax.cli import UserError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VIDEO = "<video>"
# Fixed ids of the tiny tokenizer (the tiny config's video_token_id is 3).
TINY_SPECIALS = (ENDOFTEXT, IM_START, IM_END, VIDEO)

# Qwen2's pre-tokenisation regex (from its tokenizer.json): splits words, single digits, punctuation runs and
# newline runs, so "\n" between words is always its own pre-token (hence a single token id).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+")

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"



class TokenizerFileError(UserError, FileNotFoundError):
    """tokenizer.json missing (names the path looked at)."""


class TokenizerParseError(UserError, ValueError):
    """tokenizer.json that the tokenizers library cannot parse (names the file)."""

class Tokenizer:
    """ChatML tokenizer. `encode` adds no special tokens; chat.py assembles the template around it."""

    def __init__(self, hf_tokenizer, video_token_id, source="<memory>"):
        self._tok = hf_tokenizer
        # User text is only text: a literal "<video>" or "<|im_end|>" in a question is encoded as its characters,
        # never as the special id (chat.py inserts the real specials and video slots by id).
        self._tok.encode_special_tokens = True
        self.source = source
        self.video_token_id = int(video_token_id)
        self.im_start_id = self._required_id(IM_START)
        self.im_end_id = self._required_id(IM_END)
        self.endoftext_id = self._required_id(ENDOFTEXT)
        self.eos_id = self.im_end_id        # generation stops at the end of the assistant turn
        self.pad_id = 0                     # as the original collator; masks are explicit, never `ids != 0`
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        newline = self._tok.encode("\n", add_special_tokens=False).ids
        if len(newline) != 1:
            raise ValueError(f"{source}: '\\n' must encode to exactly one token, got {newline}")
        self.newline_id = newline[0]

    def _required_id(self, token):
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.source}: tokenizer has no special token {token!r} (a ChatML/Qwen2 "
                             "tokenizer is required)")
        return token_id

    @classmethod
    def load(cls, path, video_token_id):
        """Loads `<path>/tokenizer.json` (or `path` itself when it is the json file)."""
        file = path if path.endswith(".json") else os.path.join(path, TOKENIZER_FILE)
        if not os.path.isfile(file):
            raise TokenizerFileError(f"no {TOKENIZER_FILE}", file,
                                     "config.data.tokenizer_path / --tokenizer pointing at a converted checkpoint "
                                     "dir or a dir written by train_tiny_tokenizer")
        try:
            hf = tokenizers.Tokenizer.from_file(file)
        except Exception as e:   # noqa: BLE001 - the Rust library raises a bare Exception with serde's message
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerParseError(f"cannot parse the tokenizer: {reason}", file,
                                    "a Hugging Face tokenizers JSON file (tokenizer.json)") from None
        return cls(hf, video_token_id, source=file)

    def check_fits(self, model_vocab_size: int, where: str) -> "Tokenizer":
        """Refuses a tokenizer with more ids than the model's embedding has rows: its top ids would index past
        the table (jnp.take clamps them: wrong embeddings, no error). Fewer is fine (Qwen2 pads 151665 -> 152064)."""
        if self.vocab_size > int(model_vocab_size):
            raise UserError(f"the tokenizer has {self.vocab_size} ids but the model's vocabulary only "
                            f"{model_vocab_size}", f"{self.source} / {where}",
                            "the tokenizer the checkpoint was trained with (at most model.text.vocab_size ids)")
        return self

    def encode(self, text):
        """Ids of `text` as plain text (special-token strings in it are split like any other characters)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=False):
        # Video slots (e.g. -200) and out-of-vocabulary ids are not text.
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token):
        return self._tok.token_to_id(token)

    def save(self, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        self._tok.save(os.path.join(out_dir, TOKENIZER_FILE))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "model_max_length": 32768,
            "additional_special_tokens": [IM_START, IM_END],
        }
        with open(os.path.join(out_dir, TOKENIZER_CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)


def train_tiny_tokenizer(texts, out_dir, vocab_size=512, video_token_id=3):
    """Trains a byte-level BPE on `texts` with Qwen2's pre-tokenisation and the fixed tiny special ids
    (0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>, 3 <video>); saves it to `out_dir` and returns it loaded."""
    if video_token_id != TINY_SPECIALS.index(VIDEO):
        raise ValueError(f"the tiny tokenizer puts {VIDEO} at id 3, config asks for {video_token_id}")
    n_fixed = len(TINY_SPECIALS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_fixed:
        raise ValueError(f"vocab_size={vocab_size} is below the {n_fixed} specials + byte alphabet")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[tokenizers.AddedToken(t, special=True, normalized=False) for t in TINY_SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    for i, special in enumerate(TINY_SPECIALS):
        if tok.token_to_id(special) != i:
            raise AssertionError(f"special {special!r} got id {tok.token_to_id(special)}, expected {i}")
    wrapped = Tokenizer(tok, video_token_id, source=os.path.join(out_dir, TOKENIZER_FILE))
    wrapped.save(out_dir)
    return Tokenizer.load(out_dir, video_token_id)
