"""EK100 recognition top-k on MQA / recognition-mode data (the ek100_mqa sources): verb / noun / action top-k of
the action-token heads (their k best classes) and of letter scoring (the k best scored options' actions), and
top-1 of generation (metrics.recognition_top_k). The heads share letter scoring's forward: keep "letters" in
methods to get them."""
import math

from llavaction_jax.eval import metrics
from llavaction_jax.eval.benchmarks import base, ek100_mqa

NAME = "recognition"
DEFAULTS = dict(ek100_mqa.DEFAULTS, methods=("letters",), k=(1, 5))
FLAGS = dict(ek100_mqa.FLAGS, k=dict(help="recognition: comma list of top-k (default 1,5)"))
FILE_FIELDS = ek100_mqa.FILE_FIELDS
check = ek100_mqa.check


def scalars(summary) -> dict:
    """{"heads_verb_top5": ..., "letters_action_top1": ..., "generate_noun_top1": ...}; empty parts left out."""
    out = {}
    for part, block in summary["recognition_top_k"].items():
        if part == "k" or not block["n"]:
            continue
        out.update({f"{part}_{key}": float(v) for key, v in block.items() if key != "n" and math.isfinite(v)})
    return out


def build(config, eval_cfg, mesh, tokenizer, workdir):
    ks = base.int_list(eval_cfg.k, base.where(eval_cfg, "k"))
    heads = bool(config.model.action_token)
    if heads and max(ks) > min(config.model.action_types):
        raise base.EvalConfigError(f"top-{max(ks)} of the action heads", base.where(eval_cfg, "k"),
                                   f"k <= {min(config.model.action_types)} (the smallest head's class count)")

    def summarize(records, methods):
        summary = metrics.summarize(records, methods)
        summary["recognition_top_k"] = metrics.recognition_top_k(records, ks, methods)
        return summary
    return base.SourceBenchmark(eval_cfg, config, mesh, tokenizer, workdir, ek100_mqa.make_source(config, eval_cfg),
                                title="EK100 recognition top-k", scalars=scalars, summarize=summarize,
                                head_top_k=max(ks) if heads else 1, class_names=ek100_mqa.class_names())
