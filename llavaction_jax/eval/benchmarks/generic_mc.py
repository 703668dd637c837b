"""Generic video multiple choice (EgoSchema / MVBench / PerceptionTest style JSONL, format in eval/samples.py):
accuracy per protocol and per source; a bare letter answer is accepted too (the `letter_or_text` parser)."""
from llavaction_jax.eval import samples
from llavaction_jax.eval.benchmarks import base

NAME = "generic_mc"
# Relative video paths are under video_root; absolute ones only with allow_absolute_paths.
DEFAULTS = dict(video_root=None, allow_absolute_paths=False)
FLAGS = dict(video_root=base.VIDEO_ROOT_FLAG,
             allow_absolute_paths=dict(action="store_true", help="generic MC: accept absolute video paths "
                                       "(default: every path must be under --video_root)"))


def build(config, eval_cfg, mesh, tokenizer, workdir):
    source = samples.generic_mc_source(base.jsonl_file(eval_cfg), eval_cfg.video_root, int(config.data.num_frames),
                                       int(config.model.vision.image_size), limit=int(eval_cfg.max_samples) or None,
                                       allow_absolute=bool(eval_cfg.allow_absolute_paths))
    return base.SourceBenchmark(eval_cfg, config, mesh, tokenizer, workdir, source,
                                title="Video multiple-choice evaluation")
