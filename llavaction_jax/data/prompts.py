"""The exact prompt strings of LLaVAction, in one place, plus the original answer parser.

Every string here reproduces LLaVAction character for character (`format_task_related_prompt`,
`format_time_instruction` and `format_llava_prompt` in llavaction/action/utils.py): trailing spaces, the double
space after the perspective prefix in the direct-narration and caption prompts, and the missing separator between
the time instruction and the task prompt are all intentional. Tests assert them verbatim, so do not "tidy" these strings.
"""
import re
import string
from typing import Mapping, Optional, Sequence

IMAGE_PLACEHOLDER = "<image>"
# The option letters of a multiple-choice question, in order ("A. ...", "B. ...").
LETTERS = string.ascii_uppercase
SYSTEM_PROMPT = "You are a helpful assistant."

# First-person prefix; ends with a space (so f"{PERSPECTIVE_PREFIX} ..." yields a double space).
PERSPECTIVE_PREFIX = (
    "You are seeing this video from egocentric view and you are the person. "
    "Your hands are sometimes interacting with objects. What action are you doing? "
)

MCQ_FORMAT_HINT = "Given multiple choices, format your answer briefly such as 'A. move knife'. "
MCQ_OPTIONS_HEADER = "Here are the options of actions you are selecting:\n"
PRIOR_OPTIONS_HEADER = (
    "What action are you currently performing? Here are the options of actions you can select:\n"
)

# Keys of the prior-action context dict (same names as the reference's meta_data).
PRIOR_KEYS = ("prev2_offset", "prev2_narration", "prev1_offset", "prev1_narration")


def _check_options(options: Sequence[str]) -> None:
    if isinstance(options, str) or not options:
        raise ValueError(f"options must be a non-empty list of 'A. text' strings, got {options!r}")


def mcq_prompt(options: Sequence[str]) -> str:
    """Multiple-choice prompt; `options` are display strings like "A. take plate", joined by ", "."""
    _check_options(options)
    return PERSPECTIVE_PREFIX + MCQ_FORMAT_HINT + "\n" + MCQ_OPTIONS_HEADER + ", ".join(options)


def prior_mcq_prompt(options: Sequence[str], prior: Mapping[str, object]) -> str:
    """MCQ prompt with the two previous actions as context (the format hint sentence is dropped, as in the reference).

    `prior` holds prev2_offset / prev2_narration (two actions ago) and prev1_offset / prev1_narration (the previous
    action); offsets are seconds between action starts, already rounded to 2 decimals, printed with str().
    """
    _check_options(options)
    missing = [k for k in PRIOR_KEYS if k not in prior]
    if missing:
        raise ValueError(f"prior context is missing keys {missing}; expected {list(PRIOR_KEYS)}")
    context = (
        f"{prior['prev2_offset']} seconds ago, you started an action {prior['prev2_narration']}. "
        f"{prior['prev1_offset']} seconds ago, you started an action {prior['prev1_narration']}. "
    )
    return PERSPECTIVE_PREFIX + "\n" + context + PRIOR_OPTIONS_HEADER + ", ".join(options)


def direct_narration_prompt() -> str:
    return f"{PERSPECTIVE_PREFIX} What action are you performing? Give a short sentence such as 'move knife'."


def caption_prompt() -> str:
    return (
        f"{PERSPECTIVE_PREFIX} Describe in details what you see from the video frames. "
        "You must talk in the first person perspective. Try to focus on what you are doing. "
    )


def seconds_2dp(x: float) -> str:
    """The original's number format for temporal detection: str(round(x, 2)), so 1.8 -> "1.8", 2.0 -> "2.0"."""
    return str(round(float(x), 2))


def temporal_detection_prompt(narration: str, duration: float) -> str:
    """`duration` is the ACTION's length in seconds (stop - start), printed as str(round(x, 2)) like the answer."""
    return (
        f"The provided video contains an action '{narration}' that lasts {seconds_2dp(duration)} seconds. "
        "What is the relative start and end time of the action in seconds? "
        "Format it as 'start_timestamp: end_timestamp' and round to 2 decimal places."
    )


def time_instruction(duration: float, n_frames: int) -> str:
    return f"The provided video lasts for {duration:.3f} seconds, and {n_frames} frames are uniformly sampled from it."


def video_qa_time_instruction(duration: float, n_frames: int) -> str:
    """The original's time instruction for non-EK100 videos (LLaVA-Video-178K style QA / captions)."""
    return (f"The video lasts for {duration:.2f} seconds, and {n_frames} frames are uniformly sampled from it. "
            "Please answer the following questions related to this video.")


def is_video_qa(sample: Mapping[str, object]) -> bool:
    """Generic (non-EK100) video QA sample: written by convert_video_qa_jsonl (dataset "video_qa"; older files:
    task "qa" with no participant)."""
    if "dataset" in sample:
        return sample["dataset"] == "video_qa"
    return sample.get("task") == "qa" and not sample.get("participant_id")


def insert_video_qa_time_instruction(human_value: str, duration: float, n_frames: int) -> str:
    """As the original's LazySupervisedDataset for non-EK100 video: "<image>\n{instruction}\n{value}" with every
    <image> removed from the value (its "\n" after <image> stays, as there)."""
    return (IMAGE_PLACEHOLDER + "\n" + video_qa_time_instruction(duration, n_frames) + "\n"
            + human_value.replace(IMAGE_PLACEHOLDER, ""))


def add_time_instruction(sample: Mapping[str, object], human_value: str, duration: float, n_frames: int) -> str:
    """The time instruction in the format the original uses for this sample's kind (EK100 or generic video)."""
    if is_video_qa(sample):
        return insert_video_qa_time_instruction(human_value, duration, n_frames)
    return insert_time_instruction(human_value, duration, n_frames)


def insert_time_instruction(human_value: str, duration: float, n_frames: int) -> str:
    """Put the time instruction right after "<image>\\n", with no separator before the task prompt."""
    head = IMAGE_PLACEHOLDER + "\n"
    if not human_value.startswith(head):
        raise ValueError(f"human turn must start with {head!r} to insert the time instruction, "
                         f"got {human_value[:40]!r}")
    return head + time_instruction(duration, n_frames) + human_value[len(head):]


def option_text(option: str) -> str:
    """"C. take plate" -> "take plate"."""
    letter, sep, text = option.partition(". ")
    if not sep or len(letter) != 1 or not letter.isupper():
        raise ValueError(f"option {option!r} is not of the form 'A. text'")
    return text


_ANSWER_RE = re.compile(r"[A-Z]\.\s(.+)")


def extract_answer_text(raw_text: str) -> str:
    """The reference's answer extraction, in its order: rstrip(",") of the raw output, then process_raw_pred.

    `raw_text` is the generation decoded with special tokens skipped (the original's skip_special_tokens=True).
    The trailing "," is stripped from the WHOLE output first (ek_eval.ensemble_llava_evaluation), then: an output
    that contains "None" has "None. " removed and is taken verbatim; otherwise the last "X. text" match, cut at
    its first "."; with no match the whole output is used. So "A. take pie,. more" gives "take pie," (no match
    for "take pie"), as in the original.
    """
    raw_text = raw_text.rstrip(",")
    if "None" in raw_text:
        return raw_text.replace("None. ", "")
    matches = _ANSWER_RE.findall(raw_text)
    return matches[-1].split(".", 1)[0] if matches else raw_text


def normalise_option_text(text: str) -> str:
    """What the parser can return for an option: cut at the first ".", trailing "," removed.

    Option texts are stored normalised (EK100 has narrations like "rinse knife.") so that a model answering an
    option verbatim is always parsed back to that option; unchanged for texts without "." or a trailing ",".
    """
    return text.split(".", 1)[0].rstrip(",").strip()


def parse_answer(raw_text: str, options: Sequence[str]) -> Optional[str]:
    """Letter of the option whose (normalised) text equals the extracted answer (exact string match), or None."""
    candidate = extract_answer_text(raw_text)
    for option in options:
        if normalise_option_text(option_text(option)) == candidate:
            return option[0]
    return None
