"""What every benchmark shares: the common fields of a `config.evals` entry (and their checks), and
`SourceBenchmark`, which scores one eval Source with the shared Evaluator (eval/run.evaluate_source)."""
import os
from typing import Callable, Mapping, Optional, Sequence

from llavaction_jax.cli import UserError
from llavaction_jax.eval import run

METHODS = ("letters", "generate")


class EvalConfigError(UserError, ValueError):
    """A `config.evals` entry (or eval CLI flag) the benchmarks refuse (a ValueError too, for callers)."""


COMMON_FIELDS = ("type", "data", "every", "methods", "batch_size", "max_new_tokens", "max_samples")


def common_defaults(config) -> dict:
    """Fields every entry takes; unset ones fall back to the config's eval section."""
    e = config.eval
    return dict(type="", data="", every=0, methods=tuple(e.methods), batch_size=int(e.batch_size),
                max_new_tokens=int(e.max_new_tokens), max_samples=int(e.max_samples))


# A benchmark's own CLI flags (its module's FLAGS): {field: argparse keywords}, the flag is --<field> and unset
# means None (the entry / DEFAULTS decide). Benchmarks that share a field declare it with the same keywords.
VIDEO_ROOT_FLAG = dict(help="root of the videos for JSONL data")


def positive(fields: Mapping, field: str, fmt: str) -> None:
    """`field` of an entry, when set, as a positive number (the CLI's form of the error)."""
    value = fields.get(field)
    if value is not None and value <= 0:
        raise EvalConfigError(f"bad value {value!r}", fmt.format(field), "a positive number")


def where(eval_cfg: Mapping, field: str) -> str:
    """The config path (config.evals.NAME.FIELD) or flag (--FIELD) that set `field`, for error messages."""
    return str(eval_cfg["where"]).format(field)


def _int_at_least(fields: dict, field: str, low: int, fmt: str) -> None:
    value = fields[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EvalConfigError(f"bad value {value!r}", fmt.format(field), f"an integer >= {low}")


def check_common(fields: dict, fmt: str) -> dict:
    """Checked common fields (methods as a tuple); `fmt` formats a field name into where it was set."""
    if not isinstance(fields["data"], str) or not fields["data"].strip():
        raise EvalConfigError("no eval data", fmt.format("data"),
                              "a .jsonl file or TFRecord glob(s), as the benchmark reads")
    _int_at_least(fields, "every", 0, fmt)
    _int_at_least(fields, "batch_size", 1, fmt)
    _int_at_least(fields, "max_new_tokens", 1, fmt)
    _int_at_least(fields, "max_samples", 0, fmt)
    methods = fields["methods"]
    methods = tuple(m for m in methods.split(",") if m) if isinstance(methods, str) else tuple(methods)
    if not methods or any(m not in METHODS for m in methods):
        raise EvalConfigError(f"bad eval methods {list(methods)}", fmt.format("methods"),
                              f"a non-empty subset of {list(METHODS)}")
    return dict(fields, methods=methods)


def int_list(value, field_where: str) -> tuple:
    """(1, 5) from a tuple / list or a "1,5" string (the CLI's form), each a positive integer."""
    items = [x for x in value.split(",") if x.strip()] if isinstance(value, str) else list(value)
    try:
        out = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        out = ()
    if not out or any(k < 1 for k in out) or any(isinstance(x, (bool, float)) for x in items):
        raise EvalConfigError(f"bad value {value!r}", field_where, "positive integers, e.g. (1, 5) or '1,5'")
    return out


def jsonl_file(eval_cfg: Mapping) -> str:
    """The entry's data as an existing .jsonl file."""
    data = str(eval_cfg["data"])
    if not data.endswith(".jsonl") or not os.path.isfile(data):
        raise EvalConfigError(f"file not found: {data}", where(eval_cfg, "data"), "an existing .jsonl file")
    return data


class SourceBenchmark:
    """A benchmark over one eval Source, scored by the shared Evaluator. `run(model, step)` writes predictions,
    failures, summary and report under `workdir` (under `workdir/step_<step>` for a training step) and returns
    the summary's flat scalars; the last run's records / summary / paths stay on the object."""

    def __init__(self, eval_cfg, config, mesh, tokenizer, workdir: str, source, *, title: str,
                 scalars: Callable[[Mapping], dict] = run.scalar_metrics,
                 summarize: Optional[Callable[[Sequence[Mapping], Sequence[str]], dict]] = None,
                 head_top_k: int = 1, class_names=(None, None)):
        self.eval_cfg, self.config, self.mesh, self.tokenizer = eval_cfg, config, mesh, tokenizer
        self.workdir, self.source, self.title = workdir, source, title
        self.scalars, self.summarize, self.head_top_k = scalars, summarize, head_top_k
        self.verb_names, self.noun_names = class_names
        self.records = self.summary = self.paths = None

    def out_dir(self, step: Optional[int]) -> str:
        return self.workdir if step is None else os.path.join(self.workdir, f"step_{step}")

    def run(self, model, step: Optional[int] = None, *, resume: bool = False, progress: bool = False,
            provenance: Optional[Mapping] = None, fingerprint: Optional[Mapping] = None) -> dict:
        """`fingerprint`: what makes this run's predictions (eval/fingerprint.py), checked before resuming."""
        c = self.eval_cfg
        title = self.title + (f" at step {step}" if step is not None else "")
        self.records, self.summary, self.paths = run.evaluate_source(
            model, self.tokenizer, self.config, self.mesh, self.source, out_dir=self.out_dir(step),
            methods=tuple(c.methods), batch_size=int(c.batch_size), max_new_tokens=int(c.max_new_tokens),
            verb_names=self.verb_names, noun_names=self.noun_names, title=title, resume=resume, progress=progress,
            provenance=provenance, head_top_k=self.head_top_k, summarize=self.summarize, fingerprint=fingerprint)
        return self.scalars(self.summary)
