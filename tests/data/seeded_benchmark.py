"""A whole extra eval benchmark for tests/test_eval_registry.py, as docs/architecture.md describes one: MQA rows
from a JSONL with frames drawn from each row's "seed" (no videos), one field of its own (seed_offset, also the eval
CLI's --seed_offset) and one number of its own (answered_a)."""
import numpy as np

from llavaction_jax.eval import samples
from llavaction_jax.eval.benchmarks import base
from llavaction_jax.eval.items import EvalItem
from llavaction_jax.input import synthetic_records as synthetic

NAME = "seeded_mc"
DEFAULTS = dict(seed_offset=0)
FLAGS = dict(seed_offset=dict(type=int, help="seeded_mc: added to every row's frame seed (default 0)"))


def check(fields, fmt):
    if fields["seed_offset"] < 0:
        raise base.EvalConfigError(f"bad value {fields['seed_offset']!r}", fmt.format("seed_offset"), "an integer >= 0")


def build(config, eval_cfg, mesh, tokenizer, workdir):
    rows = samples.read_jsonl(base.jsonl_file(eval_cfg))[:int(eval_cfg.max_samples) or None]
    frames, size = int(config.data.num_frames), int(config.model.vision.image_size)
    items = [EvalItem(r, lambda r=r: synthetic.sample_frames(r["seed"] + eval_cfg.seed_offset, frames, size),
                      index=i) for i, r in enumerate(rows)]
    return Seeded(eval_cfg, config, mesh, tokenizer, workdir, samples.Source.from_list(items),
                  title="seeded MC", scalars=lambda summary: {"accuracy": summary["letters"]["accuracy"]})


class Seeded(base.SourceBenchmark):
    def run(self, model, step=None, **kwargs):
        out = super().run(model, step, **kwargs)
        # A number of its own, from the records the shared run keeps.
        return dict(out, answered_a=float(np.mean([r["letter_pred"] == "A" for r in self.records])))
