"""Small synthetic MQA TFRecord shards in the llavaction_jax.data.records format (for tests, benchmarks and smoke runs).

Each sample's frames are noise images seeded by the sample index, so pixel checks can recompute them; prompts
vary in length so that length buckets are exercised.
"""
import os

import numpy as np
import tensorflow as tf

from llavaction_jax.data.records import encode_example, encode_jpeg

VERBS = ("take", "open", "close", "wash", "cut", "put", "turn on", "pour")
NOUNS = ("plate", "fridge", "knife", "tap", "onion", "cup", "drawer", "pan")


def sample_frames(index, num_frames, image_size):
    """uint8 [F, S, S, 3] frames of sample `index`."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, size=(num_frames, image_size, image_size, 3), dtype=np.uint8)


def make_sample(index, id_prefix="s", num_options=5, extra_words=0):
    """A MQA-style sample dict (contract "Data records"); `extra_words` lengthens the question."""
    rng = np.random.default_rng(10_000 + index)
    verb, noun = int(rng.integers(len(VERBS))), int(rng.integers(len(NOUNS)))
    options = [f"{chr(65 + i)}. {VERBS[(verb + i) % len(VERBS)]} {NOUNS[(noun + 2 * i) % len(NOUNS)]}"
               for i in range(num_options)]
    answer = int(rng.integers(num_options))
    padding = " ".join(NOUNS[(index + j) % len(NOUNS)] for j in range(extra_words))
    question = ("<image>\n" + (padding + " " if padding else "")
                + "Here are the options of actions you are selecting:\n" + ", ".join(options))
    start = round(float(rng.uniform(0, 100)), 2)
    return {
        "id": f"{id_prefix}{index:06d}", "video_id": "P01_01", "participant_id": "P01",
        "start_timestamp": start, "stop_timestamp": round(start + float(rng.uniform(0.5, 8.0)), 2),
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": options[answer]}],
        "task": "mqa", "verb_class": verb, "noun_class": noun, "action_id": verb * 100 + noun,
        "options": options, "answer": chr(65 + answer), "answer_text": options[answer][3:],
    }


def write_shards(out_dir, num_samples, num_shards, num_frames, image_size, prefix="train", id_prefix="s",
                 start_index=0, extra_words_fn=None, jpeg_quality=95):
    """Writes `<out_dir>/<prefix>-0000i-of-0000n.tfrecord`; sample i goes to shard i % num_shards.

    Returns (file paths, sample dicts in index order).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord") for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    samples = []
    try:
        for i in range(start_index, start_index + num_samples):
            extra = extra_words_fn(i) if extra_words_fn else 0
            sample = make_sample(i, id_prefix, extra_words=extra)
            jpegs = [encode_jpeg(f, quality=jpeg_quality) for f in sample_frames(i, num_frames, image_size)]
            times = list(np.linspace(sample["start_timestamp"], sample["stop_timestamp"], num_frames))
            writers[(i - start_index) % num_shards].write(encode_example(sample, jpegs, times))
            samples.append(sample)
    finally:
        for w in writers:
            w.close()
    return paths, samples
