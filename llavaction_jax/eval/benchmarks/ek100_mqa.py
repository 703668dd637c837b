"""EK100-MQA: multiple-choice action recognition on MQA JSONL (+ videos) or MQA TFRecords (frames inside);
letters / generate / strict protocols with accuracy per distractor source, mode, verb and noun (metrics.summarize)."""
import os

from llavaction_jax.data import ek100, video
from llavaction_jax.eval import samples
from llavaction_jax.eval.benchmarks import base

NAME = "ek100_mqa"
# video_root: where an MQA JSONL's videos are (TFRecords need none); the rest as llavaction_jax.data.video.VideoReader.
DEFAULTS = dict(video_root=None, video_layout="original", chunk_len=15, fps=None, fps_csv=None)
# The eval CLI's flags for those fields (base.VIDEO_ROOT_FLAG has the form).
FLAGS = dict(
    video_root=base.VIDEO_ROOT_FLAG,
    video_layout=dict(choices=video.VIDEO_DIR_LAYOUTS, help="layout of the MQA videos (default: original)"),
    chunk_len=dict(type=int, help="chunk length (s) of the 'chunks' layout (default 15)"),
    fps=dict(type=float, help="frame rate of every video (the 'frames' layout needs this or --fps_csv)"),
    fps_csv=dict(help="EPIC_100_video_info.csv: per-video frame rates"),
)
# Fields naming files the samples are read from (fingerprinted with the data).
FILE_FIELDS = ("fps_csv",)


def check(fields, fmt: str) -> None:
    """What the entry's own fields must hold before anything loads (`fmt` formats a field into where it was set)."""
    base.positive(fields, "chunk_len", fmt)
    if str(fields.get("data", "")).endswith(".jsonl") and not fields.get("video_root"):
        raise base.EvalConfigError("MQA JSONL data needs its videos", fmt.format("video_root"),
                                   "the root of the EK100 videos (or evaluate the MQA TFRecords, which hold the "
                                   "frames)")


def make_source(config, eval_cfg) -> samples.Source:
    """The entry's MQA data: a .jsonl with its videos under video_root, else TFRecord glob(s)."""
    data, limit = str(eval_cfg.data), int(eval_cfg.max_samples) or None
    frames, size = int(config.data.num_frames), int(config.model.vision.image_size)
    if not data.endswith(".jsonl"):
        return samples.tfrecord_source(data, frames, size, limit=limit)
    base.jsonl_file(eval_cfg)
    fps_table = None
    if eval_cfg.fps_csv:
        fps_table = video.load_video_fps(str(eval_cfg.fps_csv))
    return samples.mqa_jsonl_source(data, eval_cfg.video_root, frames, size, str(eval_cfg.video_layout),
                                    int(eval_cfg.chunk_len), limit=limit,
                                    fps=None if eval_cfg.fps is None else float(eval_cfg.fps), fps_table=fps_table)


def class_names():
    """EK100 verb / noun names for the report (the class CSVs shipped with llavaction_jax.data)."""
    verbs = ek100.load_verb_texts(os.path.join(ek100.SAMPLE_DIR, ek100.VERB_CLASSES_CSV))
    nouns = ek100.load_noun_texts(os.path.join(ek100.SAMPLE_DIR, ek100.NOUN_CLASSES_CSV))
    return dict(enumerate(verbs)), dict(enumerate(nouns))


def build(config, eval_cfg, mesh, tokenizer, workdir):
    return base.SourceBenchmark(eval_cfg, config, mesh, tokenizer, workdir, make_source(config, eval_cfg),
                                title="EK100-MQA evaluation", class_names=class_names())
