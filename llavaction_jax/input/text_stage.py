"""Host-side text stage: a decoded example's sample JSON -> ChatML token ids + labels (chat.py; the time
instruction via llavaction_jax.data.prompts), with text beyond config.data.max_length truncated (counted, warned; video
slots are never cut). A max_length too short for the chat template + the video tokens is refused when the stage is
built (chat.check_max_length): at train and eval start.
"""
import json
import logging

import numpy as np

from llavaction_jax.data import prompts
from llavaction_jax.input import chat
from llavaction_jax.model import num_video_tokens   # the model owns the video token layout

log = logging.getLogger(__name__)


class TextStage:
    """Turns a decoded example into (id, input_ids, labels, truncated) with truncation to max_length."""

    def __init__(self, config, tok, with_answer=True):
        self.tok = tok
        self.num_frames = int(config.data.num_frames)
        self.n_video = int(num_video_tokens(config.model, self.num_frames))
        self.max_length = int(config.data.max_length)
        self.add_time = bool(config.data.add_time_instruction)
        self.system_prompt = config.data.system_prompt
        self.with_answer = with_answer
        self.num_truncated = 0
        # The one start-up check (train and eval build their text stage before any batch): a max_length that
        # cannot hold even the shortest sample is a UserError naming config.data.max_length.
        chat.check_max_length(tok, self.max_length, self.n_video, self.num_frames, self.system_prompt, with_answer)

    def __call__(self, sample_json, has_video):
        try:
            sample = json.loads(sample_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"sample_json is not valid JSON ({e}): {sample_json[:200]!r}") from None
        sid = sample.get("id", "<no id>")
        conversations = sample.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise ValueError(f"sample {sid!r}: 'conversations' must be a non-empty list")
        n_video = self.n_video if has_video else 0
        conversations = [dict(turn) for turn in conversations]
        human = next((t for t in conversations if t.get("from", t.get("role")) in ("human", "user")), None)
        if human is None:
            raise ValueError(f"sample {sid!r}: no human turn in 'conversations'")
        try:
            if has_video and self.add_time:
                duration = float(sample["stop_timestamp"]) - float(sample["start_timestamp"])
                human["value"] = prompts.add_time_instruction(sample, human["value"], duration, self.num_frames)
            if self.with_answer:
                ids, labels = chat.tokenize_conversation(self.tok, conversations, n_video, self.system_prompt)
            else:
                ids = chat.tokenize_prompt(self.tok, human["value"], n_video, self.system_prompt)
                labels = [chat.IGNORE_INDEX] * len(ids)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"sample {sid!r}: {type(e).__name__}: {e}") from None
        truncated = len(ids) > self.max_length
        if truncated:
            ids, labels = self._truncate(sid, ids, labels)
        return sid, ids, labels, truncated

    def _truncate(self, sid, ids, labels):
        # Training rows lose their end (as the original's model_max_length cut). A generation prompt keeps its
        # last `<|im_end|>\n<|im_start|>assistant\n` and loses the end of the question instead.
        tail = 0 if self.with_answer else 3 + len(self.tok.encode("assistant\n"))
        keep = self.max_length - tail
        video = np.flatnonzero(np.asarray(ids) == self.tok.video_token_id)
        if len(video) and video[-1] >= keep:
            raise ValueError(f"sample {sid!r}: its video tokens end at position {video[-1] + 1}, past the "
                             f"{keep} tokens config.data.max_length={self.max_length} leaves; video slots are "
                             "never truncated: raise max_length or shorten the prompt before <image>")
        self.num_truncated += 1
        if self.num_truncated <= 10 or self.num_truncated % 1000 == 0:
            log.warning("sample %r: %d tokens > max_length=%d, text truncated (%d samples so far)",
                        sid, len(ids), self.max_length, self.num_truncated)
        if tail:
            return ids[:keep] + ids[-tail:], labels[:keep] + labels[-tail:]
        return ids[:keep], labels[:keep]
