"""ChatML (`qwen_1_5`) prompt assembly and the training loss mask of LLaVA-NeXT's `preprocess_qwen`.

Layout (one message = `<|im_start|>{role}\\n{content}<|im_end|>\\n`):
    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n   (per turn)
The original tokenises each message with "<image>" registered as a special token, so the text on either side of it
(and of the ChatML specials) is tokenised separately; here the "<image>" placeholder becomes `n_video_tokens`
consecutive `tok.video_token_id` slots at exactly that position.

Labels: system and user messages are ignored (-100); assistant messages are supervised in full, including their
`<|im_start|>assistant\\n` header and trailing `<|im_end|>\\n`. The newline id, `<|im_start|>` and `<|im_end|>` are
ALWAYS supervised, even inside system/user messages (the original's `unmask_tokens_idx`); video slots never are.
"""
from llavaction_jax.data.prompts import IMAGE_PLACEHOLDER  # noqa: F401 (the one definition; re-exported here)
from llavaction_jax.cli import UserError

IGNORE_INDEX = -100

_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


def _message_ids(tok, role, content, n_video_tokens):
    """`<|im_start|>{role}\\n{content}<|im_end|>\\n` as ids, "<image>" expanded to video slots."""
    pieces = f"{role}\n{content}".split(IMAGE_PLACEHOLDER)
    ids = [tok.im_start_id]
    for i, piece in enumerate(pieces):
        if i > 0:
            ids.extend([tok.video_token_id] * n_video_tokens)
        ids.extend(tok.encode(piece))
    ids.append(tok.im_end_id)
    ids.extend(tok.encode("\n"))
    return ids


def _apply_always_unmasked(tok, ids, labels):
    always = {tok.newline_id, tok.im_start_id, tok.im_end_id}
    video = tok.video_token_id
    return [i if (i in always and i != video) else (IGNORE_INDEX if i == video else lab)
            for i, lab in zip(ids, labels)]


def tokenize_conversation(tok, conversations, n_video_tokens, system_prompt):
    """Returns (input_ids, labels) for a LLaVA conversation list [{"from": "human"|"gpt", "value": str}, ...].

    As the original, a conversation that does not start with a human turn drops its first message.
    """
    if not conversations:
        raise ValueError("empty conversation")
    turns = list(conversations)
    if _role_of(turns[0]) != "user":
        turns = turns[1:]
    n_placeholders = sum(_content_of(t).count(IMAGE_PLACEHOLDER) for t in turns)
    if n_video_tokens and n_placeholders != 1:
        raise ValueError(f"a video sample needs exactly one {IMAGE_PLACEHOLDER!r} in its conversation, "
                         f"found {n_placeholders}: {conversations!r:.300}")
    ids = _message_ids(tok, "system", system_prompt, 0)
    labels = [IGNORE_INDEX] * len(ids)
    for turn in turns:
        role = _role_of(turn)
        message = _message_ids(tok, role, _content_of(turn), n_video_tokens)
        ids += message
        labels += message if role == "assistant" else [IGNORE_INDEX] * len(message)
    return ids, _apply_always_unmasked(tok, ids, labels)


def tokenize_prompt(tok, question, n_video_tokens, system_prompt):
    """Generation prompt: system + user(question) + `<|im_start|>assistant\\n` (the model writes the answer)."""
    if n_video_tokens and question.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(f"a video prompt needs exactly one {IMAGE_PLACEHOLDER!r}, got: {question!r:.300}")
    ids = _message_ids(tok, "system", system_prompt, 0)
    ids += _message_ids(tok, "user", question, n_video_tokens)
    ids += [tok.im_start_id] + tok.encode("assistant\n")
    return ids


def shortest_length(tok, n_video_tokens, system_prompt, with_answer) -> int:
    """Tokens of the shortest sample the template makes: the system message, a user turn holding only the video
    and (`with_answer`) a one-letter answer, else the `<|im_start|>assistant\\n` a generation starts from."""
    if with_answer:
        turns = [{"from": "human", "value": IMAGE_PLACEHOLDER}, {"from": "gpt", "value": "A"}]
        return len(tokenize_conversation(tok, turns, n_video_tokens, system_prompt)[0])
    return len(tokenize_prompt(tok, IMAGE_PLACEHOLDER, n_video_tokens, system_prompt))


def check_max_length(tok, max_length: int, n_video_tokens: int, num_frames: int, system_prompt: str,
                     with_answer: bool) -> None:
    """A UserError at start when `max_length` cannot hold even the shortest sample (the chat template with its
    system prompt + the video tokens + a one-token answer): every sample would be refused or cut later."""
    need = shortest_length(tok, n_video_tokens, system_prompt, with_answer)
    if int(max_length) < need:
        answer = " and a one-token answer" if with_answer else " and the assistant header"
        raise UserError(f"max_length {max_length} cannot hold the chat template ({need - n_video_tokens} tokens with "
                        f"the system prompt{answer}) + the {n_video_tokens} video tokens of a {num_frames}-frame "
                        f"clip = {need} tokens", "config.data.max_length",
                        f"at least {need}, plus room for the question and answer text")


def _role_of(turn):
    role = turn.get("from", turn.get("role"))
    if role not in _ROLES:
        raise ValueError(f"unknown conversation role {role!r} in {turn!r:.200} (expected one of {sorted(_ROLES)})")
    return _ROLES[role]


def _content_of(turn):
    content = turn.get("value", turn.get("content"))
    if not isinstance(content, str):
        raise ValueError(f"conversation turn without a string 'value': {turn!r:.200}")
    return content
