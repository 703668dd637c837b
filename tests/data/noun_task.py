"""A whole extra instruction task for tests/test_data_instructions.py, as docs/architecture.md describes one:
"which object is handled?" with the clip's noun class text as the answer, one flag of its own (--noun_prefix)."""
from data_prep import instructions

NAME = "noun_qa"
PROMPT = "Which object are you handling?"


def build(args, annotations):
    ls = annotations.label_space
    return [instructions.segment_sample(f"{NAME}/{seg.narration_id}", seg, ls, NAME, PROMPT,
                                        args.noun_prefix + ls.noun_texts[seg.noun_class])
            for seg in annotations.segments]


TASK = instructions.Task(build, "the noun of the clip's action",
                         flags=(("--noun_prefix", dict(default="", help="text before the noun (noun_qa)")),))
