"""Eval benchmarks by name, as big_vision's evaluators: one module per benchmark and one line for it in REGISTRY.

A benchmark module has `NAME`, `DEFAULTS` (its own fields of a `config.evals` entry, with defaults) and
`build(config, eval_cfg, mesh, tokenizer, workdir)` -> an object whose `run(model, step=None)` returns
{metric: float} and writes its outputs under `workdir` (`workdir/step_<step>` for a training step).
`base.SourceBenchmark` does that for any eval Source with the shared Evaluator. Optional:
  * `FLAGS` {field: argparse keywords}: eval CLI flags --<field> for its own fields (cli_flags);
  * `FILE_FIELDS`: those of its fields that name files the samples are read from (fingerprinted with the data);
  * `check(fields, fmt)`: cheap checks of its fields, run by resolve and by the eval CLI before the model loads.
The eval CLI knows no benchmark by name: its flags, checks and fingerprint all come from here.

`config.evals` holds named entries, e.g. `config.evals.val = dict(type="ek100_mqa", data="val-*.tfrecord",
every=500)`; unset common fields (methods, batch_size, max_new_tokens, max_samples) come from `config.eval`.
The trainer runs each entry with every > 0 at its own interval (`periodic_evals`, logged as eval/<name>/<metric>);
the eval CLI runs one (`--eval NAME` / `--type TYPE`).
"""
import os
import shutil
import tempfile
from typing import Mapping, Optional

import jax
import ml_collections

from llavaction_jax import fs
from llavaction_jax.eval import samples
from llavaction_jax.eval.benchmarks import base, ek100_mqa, generic_mc, recognition
from llavaction_jax.input.tokenizer import Tokenizer

REGISTRY = {
    ek100_mqa.NAME: ek100_mqa,
    recognition.NAME: recognition,
    generic_mc.NAME: generic_mc,
}

def resolve(entry: Mapping, config, name: str, where: Optional[str] = None) -> ml_collections.ConfigDict:
    """One entry with every field filled (common defaults < the module's DEFAULTS < the entry) and checked.

    `where` formats a field name into where it was set (default "config.evals.<name>.<field>")."""
    fmt = where or f"config.evals.{name}.{{}}"
    if not isinstance(entry, (Mapping, ml_collections.ConfigDict)):
        raise base.EvalConfigError(f"eval entry {name!r} is a {type(entry).__name__}", fmt.format("").rstrip("."),
                                   "a dict(type=..., data=..., every=..., ...)")
    entry = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else dict(entry)
    type_name = entry.get("type")
    if type_name not in REGISTRY:
        raise base.EvalConfigError(f"unknown eval type {type_name!r}", fmt.format("type"),
                                   f"one of {sorted(REGISTRY)}")
    fields = {**base.common_defaults(config), **REGISTRY[type_name].DEFAULTS}
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise base.EvalConfigError(f"unknown field {unknown[0]!r} for eval type {type_name!r}", fmt.format(unknown[0]),
                                   f"some of {sorted(fields)}")
    fields = base.check_common({**fields, **entry}, fmt)
    if hasattr(REGISTRY[type_name], "check"):
        REGISTRY[type_name].check(fields, fmt)
    return ml_collections.ConfigDict(dict(fields, name=name, where=fmt))


def cli_flags() -> dict:
    """{field: argparse keywords} of every registered benchmark's FLAGS; a field two benchmarks declare must be
    declared the same way."""
    out = {}
    for name, module in REGISTRY.items():
        for field, kwargs in getattr(module, "FLAGS", {}).items():
            if field in out and out[field] != kwargs:
                raise ValueError(f"benchmark {name!r} declares the flag --{field} unlike another benchmark: "
                                 f"{kwargs} vs {out[field]}")
            out[field] = kwargs
    return out


def check_early(entry: Mapping, where: str) -> None:
    """The checks an entry passes before the model loads (its type, the module's `check`); `where` formats a field
    name into where it was set."""
    type_name = entry.get("type")
    if type_name not in REGISTRY:
        raise base.EvalConfigError(f"unknown eval type {type_name!r}", where.format("type"),
                                   f"one of {sorted(REGISTRY)}")
    module = REGISTRY[type_name]
    if hasattr(module, "check"):
        module.check({**module.DEFAULTS, **entry}, where)


def data_files(eval_cfg) -> list:
    """Every file a resolved entry's samples are read from: its data (a .jsonl, or the TFRecords of its globs) and
    the files its benchmark's FILE_FIELDS name."""
    data = str(eval_cfg.data)
    files = [data] if data.endswith(".jsonl") else samples.tfrecord_files(data)
    return files + [str(eval_cfg[f]) for f in getattr(REGISTRY[eval_cfg.type], "FILE_FIELDS", ()) if eval_cfg.get(f)]


def settings(eval_cfg) -> dict:
    """The benchmark's own fields of a resolved entry that are not files (what, beside the data, chooses the
    samples and their frames: part of the outputs' fingerprint)."""
    module = REGISTRY[eval_cfg.type]
    files = set(getattr(module, "FILE_FIELDS", ()))
    return {k: eval_cfg.get(k) for k in module.DEFAULTS if k not in files and k not in base.COMMON_FIELDS}


def entries(config) -> dict:
    """{name: entry as given} of config.evals, for picking one by name (the eval CLI's --eval)."""
    return {str(k): v.to_dict() for k, v in config.evals.items()}


def build(eval_cfg, config, mesh, tokenizer, workdir: str):
    """The benchmark object of a resolved entry (its data is opened now: a bad glob fails here)."""
    return REGISTRY[eval_cfg.type].build(config, eval_cfg, mesh, tokenizer, workdir)


def configured(config) -> dict:
    """{name: resolved entry} of config.evals."""
    return {str(name): resolve(entry, config, str(name)) for name, entry in config.evals.items()}


def detect_type(data: str) -> str:
    """The benchmark a data path is for when none is named: generic MC JSONL rows -> generic_mc, else ek100_mqa."""
    if data.endswith(".jsonl") and os.path.isfile(data) and samples.is_generic_jsonl(data):
        return generic_mc.NAME
    return ek100_mqa.NAME


class PeriodicEvals:
    """The trainer's eval hook: `due(step)` when any benchmark's `every` divides step; calling it runs those and
    returns {"<name>/<metric>": value} (the trainer logs them with prefix "eval").

    An entry (every, benchmark, (staging, remote)) has a benchmark built on the local dir `staging`: after each
    run its step_<N> dir is copied to remote/step_<N> through llavaction_jax.fs (the report writers use the OS)."""

    def __init__(self, benchmarks: Mapping[str, tuple]):
        self.benchmarks = {n: tuple(b) + (None,) * (3 - len(b)) for n, b in benchmarks.items()}

    def due(self, step: int) -> bool:
        return any(step % every == 0 for every, _, _ in self.benchmarks.values())

    def __call__(self, model, step: int) -> dict:
        out = {}
        for name, (every, bench, upload) in self.benchmarks.items():
            if step % every == 0:
                out.update({f"{name}/{k}": float(v) for k, v in bench.run(model, step).items()})
                if upload is not None:
                    _upload(os.path.join(upload[0], f"step_{step}"), fs.join(upload[1], f"step_{step}"))
        return out


def _upload(local: str, remote: str) -> None:
    if jax.process_index() == 0 and os.path.isdir(local):
        fs.copy_tree(local, remote)
        shutil.rmtree(local)


def periodic_evals(config, mesh, workdir: str, tokenizer=None) -> Optional[PeriodicEvals]:
    """The configured evals with every > 0, built (outputs under <workdir>/eval/<name>/step_<N>), or None."""
    entries = {n: c for n, c in configured(config).items() if int(c.every) > 0}
    if not entries:
        return None
    if tokenizer is None:
        tokenizer = Tokenizer.load(config.data.tokenizer_path, video_token_id=int(config.model.video_token_id)
                                   ).check_fits(config.model.text.vocab_size, "config.model.text.vocab_size")
    workdir = fs.normalize(workdir)
    benchmarks = {}
    for n, c in entries.items():
        out = fs.join(workdir, "eval", n)
        if fs.is_url(workdir):      # staged locally, uploaded after each run (PeriodicEvals)
            staging = tempfile.mkdtemp(prefix=f"eval-{n}-")
            benchmarks[n] = (int(c.every), build(c, config, mesh, tokenizer, staging), (staging, out))
        else:
            benchmarks[n] = (int(c.every), build(c, config, mesh, tokenizer, out))
    return PeriodicEvals(benchmarks)
