"""TFDS builder ``ek100_mqa``: EPIC-KITCHENS-100-MQA questions with their sampled, resized video frames.

Built offline from a manual directory (default ``<data_dir>/downloads/manual``):

    manual_dir/
      annotations/  EPIC_100_validation.csv, [EPIC_100_train.csv], EPIC_100_verb_classes.csv,
                    EPIC_100_noun_classes_v2.csv, [EPIC_100_video_info.csv (fps for the frames layout)]
      predictions/  {avion,tim}_pred_ids_val.json, {avion,tim}_pred_ids_train.json (or ..._train_cross.json)
      videos/       EK100 videos in any layout of llavaction_jax/data/video.py (detected automatically)
      [mqa/{split}_{source}.jsonl]  optional precomputed questions; used instead of generating them

Configs ``{8,16,32}f_{avion,tim,random}`` (384 px frames, 5 options) plus ``tiny_random`` / ``tiny_avion``
(4 frames, 32 px) for smoke tests. The validation split uses the benchmark mode (top-5 predictions with the GT
injected; random distractors for ``random``), the train split the reference's train mode (4 distractors from
the top-10 non-GT predictions). Questions come from data_prep.mqa (the same generator as make_mqa).
A clip whose video cannot be read is skipped, logged, and listed in ``info.metadata["skipped"][split]``; a split
whose annotation CSV or (avion/tim) prediction file is absent is not built (logged, ``info.metadata["missing_splits"]``).

    import data_prep.tfds_ek100_mqa  # registers the builder
    ds = tfds.load("ek100_mqa/16f_tim", split="validation", data_dir=DATA_DIR,
                   download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=MANUAL)})

EK100 annotations: EPIC-KITCHENS authors (Damen et al., IJCV 2022), CC BY-NC 4.0.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_prep import mqa, predictions
from llavaction_jax.data import ek100
from llavaction_jax.data.video import VideoError, VideoReader, detect_layout, load_video_fps

# The "manual_dir/ ..." block of the module docstring.
MANUAL_INSTRUCTIONS = __doc__.split("\n\n")[2]
SOURCES = ("avion", "tim", "random")
FRAME_COUNTS = (8, 16, 32)
SPLIT_CSVS = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}
PRED_FILES = {"train": ("{source}_pred_ids_train.json", "{source}_pred_ids_train_cross.json"),
              "validation": ("{source}_pred_ids_val.json",)}


@dataclasses.dataclass
class Ek100MqaConfig(tfds.core.BuilderConfig):
    num_frames: int = 16
    source: str = "random"
    image_size: int = 384
    num_options: int = 5
    representation: str = "GT_random_narration"
    seed: int = 0


def _configs():
    out = [Ek100MqaConfig(name=f"{n}f_{s}", num_frames=n, source=s,
                          description=f"{n} frames at 384 px, {s} distractors")
           for n in FRAME_COUNTS for s in SOURCES]
    out += [Ek100MqaConfig(name=f"tiny_{s}", num_frames=4, source=s, image_size=32,
                           description=f"smoke-test size: 4 frames at 32 px, {s} distractors")
            for s in ("random", "avion")]
    return out


class Ek100Mqa(tfds.core.GeneratorBasedBuilder):
    """EPIC-KITCHENS-100 multiple-choice action questions with video frames."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS derives this for builders inside packages via the `importlib_resources` backport, which the pinned
        # environment does not have; the answer is simply this file.
        return epath.Path(os.path.abspath(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo(builder=self, ...) rather than dataset_info_from_configs: no metadata files next to the module.
        cfg = self.builder_config
        f, s = cfg.num_frames, cfg.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="EPIC-KITCHENS-100-MQA (LLaVAction): multiple-choice action questions over EK100 clips.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "video_id": tfds.features.Text(),
                "participant_id": tfds.features.Text(),
                "start_timestamp": tfds.features.Scalar(np.float32),
                "stop_timestamp": tfds.features.Scalar(np.float32),
                "frames": tfds.features.Video(shape=(f, s, s, 3), encoding_format="jpeg"),
                "frame_times": tfds.features.Tensor(shape=(f,), dtype=np.float32),
                "question": tfds.features.Text(),
                "answer": tfds.features.Text(),
                "options": tfds.features.Sequence(tfds.features.Text()),
                "answer_letter": tfds.features.Text(),
                "source": tfds.features.Text(),
                "verb_class": tfds.features.Scalar(np.int64),
                "noun_class": tfds.features.Scalar(np.int64),
                "action_id": tfds.features.Scalar(np.int64),
                "sample_json": tfds.features.Text(),
            }),
            supervised_keys=None,
            homepage="https://github.com/AdaptiveMotorControlLab/LLaVAction",
            citation="Damen et al., Rescaling Egocentric Vision, IJCV 2022; Ye et al., LLaVAction, arXiv 2503.18712.",
            metadata=tfds.core.MetadataDict(),
        )

    # ------------------------------------------------------------------ splits

    def _split_generators(self, dl_manager):
        manual = dl_manager.manual_dir
        cfg = self.builder_config
        splits, missing = {}, {}
        for split, csv_name in SPLIT_CSVS.items():
            if (manual / "mqa" / f"{split}_{cfg.source}.jsonl").exists():
                splits[split] = self._generate_examples(manual, split)
            elif not (manual / "annotations" / csv_name).exists():
                missing[split] = f"no annotations/{csv_name}"
            elif cfg.source != "random" and not self._prediction_files(manual, split):
                # A split without its action-model predictions is left out (logged and recorded), so that e.g.
                # a validation-only manual_dir still builds.
                names = [n.format(source=cfg.source) for n in PRED_FILES[split]]
                missing[split] = f"no predictions/{' or '.join(names)}"
            else:
                splits[split] = self._generate_examples(manual, split)
        for split, why in missing.items():
            logging.warning("ek100_mqa/%s: not building the %s split: %s", cfg.name, split, why)
        self.info.metadata["missing_splits"] = missing
        if not splits:
            raise FileNotFoundError(f"{manual}: nothing to build for {cfg.name!r} ({missing}).\n"
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return splits

    def _prediction_files(self, manual, split: str) -> list:
        """Existing prediction files for this config's source and the split, in preference order."""
        paths = [manual / "predictions" / n.format(source=self.builder_config.source) for n in PRED_FILES[split]]
        return [p for p in paths if p.exists()]

    def _questions(self, manual, split: str) -> list[dict]:
        cfg = self.builder_config
        pre = manual / "mqa" / f"{split}_{cfg.source}.jsonl"
        if pre.exists():
            with pre.open() as f:
                return [json.loads(line) for line in f if line.strip()]
        ann_dir = manual / "annotations"
        ann = ek100.load_annotations(os.fspath(ann_dir / SPLIT_CSVS[split]), with_video_info=False)
        preds = None
        mode = "random" if cfg.source == "random" else ("train" if split == "train" else "benchmark")
        depth = mqa.required_prediction_depth(mode, cfg.num_options)
        if depth:
            found = self._prediction_files(manual, split)
            if not found:
                names = [n.format(source=cfg.source) for n in PRED_FILES[split]]
                raise FileNotFoundError(f"{manual / 'predictions'}: config {cfg.name!r} needs one of {names} "
                                        f"for the {split} split")
            preds = predictions.load_predictions(os.fspath(found[0]), ann, depth)
        return mqa.generate_questions(ann, preds, mode=mode, k=cfg.num_options, representation=cfg.representation,
                                      source=cfg.source, seed=cfg.seed)

    def _generate_examples(self, manual, split: str):
        cfg = self.builder_config
        video_root = os.fspath(manual / "videos")
        info_csv = manual / "annotations" / "EPIC_100_video_info.csv"
        reader = VideoReader(video_root, detect_layout(video_root), size=cfg.image_size,
                             fps_table=load_video_fps(os.fspath(info_csv)) if info_csv.exists() else None)
        skipped = []
        for q in self._questions(manual, split):
            try:
                frames, times = reader.read_clip(q["video_id"], float(q["start_timestamp"]),
                                                 float(q["stop_timestamp"]), cfg.num_frames,
                                                 participant_id=q.get("participant_id"))
            except VideoError as e:
                logging.warning("ek100_mqa/%s %s: skipping %s: %s", cfg.name, split, q["id"], e)
                skipped.append({"id": q["id"], "reason": str(e)})
                continue
            yield q["id"], {
                "id": q["id"], "video_id": q["video_id"], "participant_id": q.get("participant_id", ""),
                "start_timestamp": float(q["start_timestamp"]), "stop_timestamp": float(q["stop_timestamp"]),
                "frames": frames, "frame_times": times.astype(np.float32),
                "question": q["conversations"][0]["value"], "answer": q["conversations"][1]["value"],
                "options": q.get("options", []), "answer_letter": q.get("answer") or "",
                "source": q.get("source", cfg.source),
                "verb_class": int(q.get("verb_class", -1)), "noun_class": int(q.get("noun_class", -1)),
                "action_id": int(q.get("action_id", -1)),
                "sample_json": json.dumps(q, sort_keys=True, ensure_ascii=False),
            }
        self.info.metadata.setdefault("skipped", {})[split] = skipped
