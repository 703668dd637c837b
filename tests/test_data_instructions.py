"""Exact prompt strings (data_prep.prompts) and instruction-data generation (data_prep.instructions)."""
from data_prep import prompts

PREFIX = ("You are seeing this video from egocentric view and you are the person. Your hands are sometimes "
          "interacting with objects. What action are you doing? ")
OPTIONS = ["A. take plate", "B. put down plate", "C. wash cup"]


def test_perspective_prefix_and_system_prompt_exact():
    assert prompts.PERSPECTIVE_PREFIX == PREFIX
    assert prompts.PERSPECTIVE_PREFIX.endswith("doing? ")
    assert prompts.SYSTEM_PROMPT == "You are a helpful assistant."
    assert prompts.IMAGE_PLACEHOLDER == "<image>"


def test_mcq_prompt_exact():
    expected = (PREFIX + "Given multiple choices, format your answer briefly such as 'A. move knife'. \n"
                "Here are the options of actions you are selecting:\nA. take plate, B. put down plate, C. wash cup")
    assert prompts.mcq_prompt(OPTIONS) == expected


def test_prior_mcq_prompt_exact():
    prior = {"prev2_offset": 4.37, "prev2_narration": "open tap", "prev1_offset": 1.5, "prev1_narration": "take cup"}
    expected = (PREFIX + "\n4.37 seconds ago, you started an action open tap. 1.5 seconds ago, you started an action "
                "take cup. What action are you currently performing? Here are the options of actions you can select:\n"
                "A. take plate, B. put down plate, C. wash cup")
    assert prompts.prior_mcq_prompt(OPTIONS, prior) == expected


def test_direct_narration_and_caption_prompts_exact():
    assert prompts.direct_narration_prompt() == (
        PREFIX + " What action are you performing? Give a short sentence such as 'move knife'.")
    assert "doing?  What action are you performing?" in prompts.direct_narration_prompt()
    assert prompts.caption_prompt() == (
        PREFIX + " Describe in details what you see from the video frames. You must talk in the first person "
        "perspective. Try to focus on what you are doing. ")


def test_temporal_detection_prompt_exact():
    assert prompts.temporal_detection_prompt("open door", 3.2299) == (
        "The provided video contains an action 'open door' that lasts 3.23 seconds. What is the relative start and "
        "end time of the action in seconds? Format it as 'start_timestamp: end_timestamp' and round to 2 decimal "
        "places.")


def test_time_instruction_inserted_without_separator():
    assert prompts.time_instruction(2.5, 8) == (
        "The provided video lasts for 2.500 seconds, and 8 frames are uniformly sampled from it.")
    human = "<image>\n" + prompts.mcq_prompt(OPTIONS)
    out = prompts.insert_time_instruction(human, 1.23456, 16)
    assert out == ("<image>\nThe provided video lasts for 1.235 seconds, and 16 frames are uniformly sampled from it."
                   + prompts.mcq_prompt(OPTIONS))


def test_insert_time_instruction_rejects_missing_image_token():
    import pytest
    with pytest.raises(ValueError, match="must start with"):
        prompts.insert_time_instruction("no image here", 1.0, 4)


def test_parse_answer_follows_reference_parser():
    assert prompts.parse_answer("B. put down plate", OPTIONS) == "B"
    assert prompts.parse_answer("I think A. take plate. It is clear.", OPTIONS) == "A"
    # The LAST "X. text" match wins.
    assert prompts.parse_answer("A. take plate\nC. wash cup", OPTIONS) == "C"
    assert prompts.parse_answer("C. wash cup,", OPTIONS) == "C"          # rstrip(",")
    assert prompts.parse_answer("wash cup", OPTIONS) == "C"              # no letter: whole text compared
    assert prompts.parse_answer("D. cut onion", OPTIONS) is None
    assert prompts.parse_answer("A. take plates", OPTIONS) is None       # exact string match only
    assert prompts.parse_answer("", OPTIONS) is None
