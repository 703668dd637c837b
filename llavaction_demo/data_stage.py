"""The demo's data stage: real EK100 annotation rows (the sample shipped in llavaction_jax/data/assets) of a few
verbs x nouns -> synthetic EK-style clips (data_prep.synthetic_videos: noun = colour/shape, verb = motion) ->
synthetic action-model predictions with confusable distractors -> EK100-MQA JSONL (train modes for training;
benchmark + random modes on held-out rows for eval) -> TFRecords (data_prep.to_tfrecord); plus the text-only
letter-binding questions and the text the tokenizer is trained on."""
import dataclasses
import json
import os
from typing import Dict, List, Sequence

from data_prep import mqa, predictions, synthetic_videos, to_tfrecord
from data_prep.seeding import question_rng
from llavaction_jax.cli import UserError
from llavaction_jax.data import ek100, prompts

ANNOTATION_FILES = ("EPIC_100_validation.csv", "EPIC_100_uda_source_train.csv")


def load_rows(annotation_dir: str = ek100.SAMPLE_DIR):
    """All segments of the embedded sample (+ the label texts)."""
    segments, label_space = [], None
    for name in ANNOTATION_FILES:
        ann = ek100.load_annotations(os.path.join(annotation_dir, name))
        segments.extend(ann.segments)
        label_space = ann.label_space
    return segments, label_space


def select_rows(segments, verbs: Sequence[int], nouns: Sequence[int], eval_fraction: float, seed: int):
    """Rows whose verb and noun are both in the sets, split into train / held-out eval rows (per action, so every
    eval action also has train rows)."""
    chosen = [s for s in segments if s.verb_class in verbs and s.noun_class in nouns]
    if not chosen:
        raise ValueError(f"no annotation row has a verb in {list(verbs)} and a noun in {list(nouns)}")
    by_action: Dict[str, list] = {}
    for s in chosen:
        by_action.setdefault(s.vn, []).append(s)
    train, held_out = [], []
    for vn, rows in sorted(by_action.items()):
        rng = question_rng(seed, "demo-split", vn)
        order = [rows[i] for i in rng.permutation(len(rows))]
        n_eval = int(round(eval_fraction * len(rows))) if len(rows) > 1 else 0
        held_out += order[:n_eval]
        train += order[n_eval:]
    return train, held_out


def replicate(rows, copies: int, split: str, clips_per_video: int):
    """`copies` clips of every row, spread over synthetic videos "<split>NNN_VV" (each video a new background)."""
    out = []
    for c in range(copies):
        for r in rows:
            out.append(dict(id=f"{r.narration_id}-{split}{c}", source_row=r.narration_id, verb_class=r.verb_class,
                            noun_class=r.noun_class, narration=r.narration, verb=r.verb, noun=r.noun,
                            start_timestamp=r.start, stop_timestamp=r.stop))
    # Interleave copies so each video mixes actions; ids stay unique.
    for i, row in enumerate(out):
        v = i // clips_per_video
        row["video_id"] = f"{split.upper()}{v // 100:02d}_{v % 100:02d}"
        row["participant_id"] = row["video_id"].split("_")[0]
    return out


def rows_to_segments(rows, template_segments):
    """Rendered rows (timestamps as drawn) -> llavaction_jax.data.ek100.Segment objects with fresh row indices."""
    base = {s.narration_id: s for s in template_segments}
    return [dataclasses.replace(base[r["source_row"]], row_index=i, narration_id=r["id"],
                                participant_id=r["participant_id"], video_id=r["video_id"],
                                start=float(r["start_timestamp"]), stop=float(r["stop_timestamp"]))
            for i, r in enumerate(rows)]


def build_data(config, workdir: str, quiet: bool = False) -> dict:
    """Everything under workdir/data: videos, predictions, MQA JSONL, TFRecords. Returns the paths and counts."""
    d = config.demo
    data_dir = os.path.join(workdir, "data")
    video_root = os.path.join(data_dir, "videos")
    os.makedirs(data_dir, exist_ok=True)
    segments, full_space = load_rows()
    train_rows, eval_rows = select_rows(segments, tuple(d.verbs), tuple(d.nouns), float(d.eval_fraction),
                                        int(d.seed))
    # One label space for both splits: the actions of the chosen real rows (distractors come from it).
    label_space = ek100.LabelSpace(full_space.verb_texts, full_space.noun_texts, train_rows + eval_rows)
    out = {"video_root": video_root, "num_actions": label_space.num_actions,
           "real_rows": {"train": len(train_rows), "eval": len(eval_rows)}}
    splits = {"train": replicate(train_rows, int(d.train_copies), "t", int(d.clips_per_video)),
              "eval": replicate(eval_rows, int(d.eval_copies), "e", int(d.clips_per_video))}
    for split, rows in splits.items():
        seed = int(d.seed) * 2 + (split == "eval")
        drawn = synthetic_videos.make_synthetic_dataset(
            rows, video_root, layout="original", fps=float(d.fps), size=int(d.render_size), seed=seed,
            compact=True, gap=0.25, max_clip_seconds=float(d.max_clip_seconds), tail=0.25,
            path=str(d.motion_path), verb_angles=verb_angles_of(config))["rows"]
        segs = rows_to_segments(drawn, train_rows + eval_rows)
        ann = ek100.Annotations(path=f"demo-{split}", segments=segs, label_space=label_space)
        k = int(d.num_options)
        preds = predictions.make_synthetic_predictions(ann, k=2 * k, seed=seed, top1_acc=float(d.prediction_top1),
                                                       confusable=True)
        predictions.write_predictions(os.path.join(data_dir, f"{split}_predictions.json"), preds, ann)
        modes = tuple(d.train_modes) if split == "train" else tuple(d.eval_modes)
        # Training clips get `train_draws` questions per mode: each draw its own distractors and option order, so
        # the letter of a clip cannot be memorised and only the lookup (the option that matches the video) pays.
        draws = int(d.train_draws) if split == "train" else 1
        questions = []
        for draw in range(draws):
            for m_i, mode in enumerate(modes):
                source = {"train": "synthetic-avion", "benchmark": "synthetic-tim", "random": "random",
                          "recognition": "synthetic-tim"}[mode]
                drawn = mqa.generate_questions(ann, preds if mode != "random" else None, mode=mode, k=k,
                                               representation=d.representation, source=source,
                                               seed=int(d.seed) * 10 + m_i + 10 ** 6 * draw)
                # Question ids must be unique across modes and draws (one record per question).
                for q in drawn:
                    q["id"] = f"{q['id']}-{q['mode']}" + (f"-{draw}" if draw else "")
                questions += drawn
        jsonl = os.path.join(data_dir, f"{split}_mqa.jsonl")
        with open(jsonl, "w", encoding="utf-8") as f:
            for q in questions:
                f.write(json.dumps(q) + "\n")
        records_dir = os.path.join(data_dir, f"{split}_records")
        to_tfrecord.convert(jsonl, video_root, "original", records_dir, num_frames=int(config.data.num_frames),
                            size=int(config.model.vision.image_size), num_shards=2 if split == "train" else 1,
                            workers=1, prefix=split, progress=not quiet)
        out[split] = {"jsonl": jsonl, "records": os.path.join(records_dir, f"{split}-*.tfrecord"),
                      "num_questions": len(questions), "num_clips": len(segs)}
        if split == "train" and int(d.text_mcq_per_question) > 0:
            out["text_mcq"] = write_text_mcq(questions, label_space, data_dir, int(d.text_mcq_per_question),
                                             int(d.seed), quiet)
        if split == "train" and int(d.binding_steps) > 0:
            out["binding"] = write_text_mcq(questions, label_space, data_dir, int(d.binding_per_question),
                                            int(d.seed) + 1, quiet, name="binding_mcq", short=True,
                                            copy_share=float(d.binding_copy_share))
    return out


TEXT_MCQ_HEAD = "The action in the video is: {}.\n"
SHORT_MCQ_HEAD = "The action is: {}.\n"
SHORT_COPY_HEAD = "The answer is: {}.\n"


def text_mcq_questions(questions: Sequence[dict], label_space, per_question: int, seed: int,
                       short: bool = False, copy_share: float = 0.0) -> List[dict]:
    """Text-only twins of the training questions that teach option-letter binding.

    Each twin states the clip's action in words, keeps the MQA prompt and its option list, and draws a fresh
    option order, so the only way to get the letter right is to find the stated action among the options and
    copy its letter. Without these the tiny model learns to name the action from the video (generation text
    right) but answers a near-random letter; with them letter scoring and strict generation follow.

    `copy_share` of the short questions state the answer's LETTER instead of its action ("The answer is: C."),
    so the text after the letter is learned as a copy of that option's text: otherwise the warm-up can copy the
    text from the stated action, and on video questions the text is read from the video again, where the verb is
    the weak part (the letter right, the text's verb wrong).
    """
    prefix = prompts.IMAGE_PLACEHOLDER + "\n"
    out = []
    for q in questions:
        human = q["conversations"][0]["value"]
        if not human.startswith(prefix):
            raise ValueError(f"question {q['id']!r} does not start with {prefix!r}")
        texts = [o.split(". ", 1)[1] for o in q["options"]]
        truth = q["answer_text"]
        task_prompt, _, _ = human[len(prefix):].rpartition("\n")
        for c in range(per_question):
            rng = question_rng(seed, "demo-text-mcq", f"{q['id']}-{c}")
            order = [texts[i] for i in rng.permutation(len(texts))]
            letter = prompts.LETTERS[order.index(truth)]
            options = [f"{prompts.LETTERS[i]}. {t}" for i, t in enumerate(order)]
            if short:
                # The warm-up form: only the stated action (or letter) and the options (~70 tokens, not ~140).
                head = SHORT_COPY_HEAD.format(letter) if rng.random() < copy_share else SHORT_MCQ_HEAD.format(truth)
                value = head + ", ".join(options)
            else:
                value = TEXT_MCQ_HEAD.format(truth) + task_prompt + "\n" + ", ".join(options)
            out.append({"id": f"{q['id']}-{'short' if short else 'text'}{c}", "conversations": [
                {"from": "human", "value": value}, {"from": "gpt", "value": f"{letter}. {truth}"}],
                "task": "text_mcq", "verb_class": -1, "noun_class": -1, "action_id": -1, "options": options,
                "answer": letter, "answer_text": truth, "source": "text-mcq", "mode": "text"})
    return out


def write_text_mcq(questions, label_space, data_dir: str, per_question: int, seed: int, quiet: bool,
                   name: str = "text_mcq", short: bool = False, copy_share: float = 0.0) -> dict:
    rows = text_mcq_questions(questions, label_space, per_question, seed, short=short, copy_share=copy_share)
    jsonl = os.path.join(data_dir, f"{name}.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for q in rows:
            f.write(json.dumps(q) + "\n")
    records_dir = os.path.join(data_dir, f"{name}_records")
    to_tfrecord.convert(jsonl, data_dir, "original", records_dir, num_frames=0, size=None, num_shards=1,
                        workers=1, prefix="text", progress=not quiet)
    return {"jsonl": jsonl, "records": os.path.join(records_dir, "text-*.tfrecord"), "num_questions": len(rows)}


def tokenizer_texts(jsonl_paths: Sequence[str]) -> List[str]:
    """The text the tiny tokenizer is trained on: every conversation turn + the fixed prompt pieces."""
    texts = [prompts.SYSTEM_PROMPT, "system", "user", "assistant",
             prompts.time_instruction(1.234, 4), prompts.time_instruction(0.567, 8)]
    for path in jsonl_paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                sample = json.loads(line)
                texts += [t["value"] for t in sample["conversations"]]
    return texts


def verb_angles_of(config) -> Dict[int, float]:
    """{verb class: motion direction in degrees} from config.demo.verb_angles (one per config.demo.verbs; empty:
    each verb's default direction, data_prep.synthetic_videos.verb_motion)."""
    d = config.demo
    if d.verb_angles and len(d.verb_angles) != len(d.verbs):
        raise UserError(f"config.demo.verb_angles has {len(d.verb_angles)} values for {len(d.verbs)} verbs",
                        "config.demo.verb_angles", "one angle per config.demo.verbs entry, or ()")
    return {int(v): float(a) for v, a in zip(d.verbs, d.verb_angles)} if d.verb_angles else {}


def verb_names_of(config) -> Dict[int, str]:
    _, space = load_rows()
    return {int(v): space.verb_texts[int(v)] for v in config.demo.verbs}


def noun_names_of(config) -> Dict[int, str]:
    _, space = load_rows()
    return {int(n): space.noun_texts[int(n)] for n in config.demo.nouns}
