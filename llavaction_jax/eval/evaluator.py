"""Batched, mesh-sharded evaluation of multiple-choice video QA: option-letter scoring and greedy generation.

Each host evaluates its own slice of the samples: it builds its local part of every global batch, the jitted
forward / generate run SPMD over the whole mesh, and the host reads back only the rows it owns (matched by a row-id
array that travels through the same sharding). Letters and generation share ONE prefill per batch
(model.generate.prefill_and_generate). All hosts run the same number of batches (short hosts pad), and the
per-host prediction records are gathered ONCE at the end (JSON bytes through process_allgather).
"""
import functools
import json
import math
import sys
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from llavaction_jax import sharding as sharding_lib
from llavaction_jax.cli import UserError
from llavaction_jax.distributed import allgather_ints, gather_json
from llavaction_jax.eval import scoring
from llavaction_jax.eval.items import EvalItem, parse_generation, written_letter
from llavaction_jax.eval.metrics import METHODS
from llavaction_jax.input.text_stage import TextStage
from llavaction_jax.input.schema import normalize_pixels
from llavaction_jax.model.generate import prefill_and_generate
from llavaction_jax.model import num_video_tokens

# Prompt lengths are padded up to a multiple of this, so a handful of shapes get compiled.
LENGTH_MULTIPLE = 32


def _strip_after_eos(tokens: np.ndarray, eos_id: int) -> List[int]:
    out = []
    for t in tokens.tolist():
        if t == eos_id:
            break
        out.append(int(t))
    return out


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


# uint8 RGB [B, F, S, S, 3] -> float32 in [-1, 1]: the train step's table lookup (bit-identical).
_normalize_on_device = jax.jit(normalize_pixels)


@functools.partial(jax.jit, static_argnames=("top_k",))
def _letters_and_heads(next_logits, letter_ids, action_logits, top_k=1):
    """Letter logits [B, K] from the prefill's next-token logits (+ the action heads' `top_k` best classes, best
    first, [B, 3, top_k] int32, or None). lax.top_k puts the lower index first on ties, as argmax does."""
    letters = jnp.take(next_logits, letter_ids, axis=1).astype(jnp.float32)
    if action_logits is None:
        return letters, None
    return letters, jnp.stack([jax.lax.top_k(x, top_k)[1] for x in action_logits], axis=1).astype(jnp.int32)


class Evaluator:
    """Runs letter scoring and/or generation over EvalItems; returns prediction records (all hosts' on every host)."""

    def __init__(self, model, tokenizer, config, mesh, *, methods: Optional[Sequence[str]] = None,
                 batch_size: Optional[int] = None, max_new_tokens: Optional[int] = None,
                 num_report_frames: int = 24, head_top_k: int = 1):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.mesh = mesh
        self.methods = tuple(methods if methods is not None else config.eval.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"eval methods must be a non-empty subset of {METHODS}, got {self.methods}")
        self.global_batch_size = int(batch_size or config.eval.batch_size)
        self.max_new_tokens = int(max_new_tokens or config.eval.max_new_tokens)
        self.num_frames = int(config.data.num_frames)
        self.image_size = int(config.model.vision.image_size)
        self.n_video_tokens = num_video_tokens(config.model, self.num_frames)
        self.batch_sharding = sharding_lib.batch_sharding(mesh)
        n_batch_devices = int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))
        nproc = jax.process_count()
        if self.global_batch_size % n_batch_devices or self.global_batch_size % nproc:
            raise ValueError(f"eval batch size {self.global_batch_size} must be divisible by the {n_batch_devices} "
                             f"batch-axis devices and the {nproc} processes")
        self.local_batch_size = self.global_batch_size // nproc
        vocab = int(config.model.text.vocab_size)
        self.letter_ids = None
        if "letters" in self.methods:
            letter_ids = scoring.letter_token_ids(tokenizer)
            if int(letter_ids.max()) >= vocab:
                # Out-of-range ids would gather garbage (NaN) logits, not fail.
                raise UserError(f"the tokenizer's option-letter ids {letter_ids.tolist()} reach past the model's "
                                f"vocabulary", "--tokenizer / config.model.text.vocab_size",
                                f"a tokenizer whose ids are < {vocab}")
            self.letter_ids = jnp.asarray(letter_ids)
        for name in ("eos_id", "pad_id"):
            if not 0 <= int(getattr(tokenizer, name)) < vocab:
                raise UserError(f"tokenizer {name} {getattr(tokenizer, name)} is outside the model's vocabulary",
                                "--tokenizer", f"ids < {vocab}")
        # Records carry the action heads' head_top_k best classes (head_topk) when > 1; head_pred is the best.
        self.head_top_k = int(head_top_k)
        if config.model.action_token and not 1 <= self.head_top_k <= min(config.model.action_types):
            raise ValueError(f"head_top_k {self.head_top_k} must be in [1, {min(config.model.action_types)}] "
                             "(the smallest action head's class count)")
        self.num_report_frames = num_report_frames
        self.report_frames = {}      # sample id -> uint8 frames of this host's first wrong answers
        self.failures: List[dict] = []
        self.text_stage = TextStage(config, tokenizer, with_answer=False)
        self._identity = jax.jit(lambda x: x, out_shardings=self.batch_sharding)

    # ---- prompts and batches -------------------------------------------------------------------------------------
    def prompt_ids(self, sample: dict, has_video: bool) -> List[int]:
        """The generation prompt, built by the training input's own text stage (same ids as training)."""
        return self.text_stage(json.dumps(sample), has_video)[1]

    def _load_frames(self, item: EvalItem) -> Optional[np.ndarray]:
        frames = item.load_frames() if item.load_frames is not None else None
        if frames is None:
            return None
        expected = (self.num_frames, self.image_size, self.image_size, 3)
        if tuple(frames.shape) != expected:
            raise UserError(f"sample {item.sample.get('id')!r}: frames have shape {tuple(frames.shape)}",
                            "config.data.num_frames / model image size", f"{expected}")
        if frames.dtype != np.uint8:
            raise UserError(f"sample {item.sample.get('id')!r}: frames are {frames.dtype}", "frame loader",
                            "uint8 RGB")
        return frames

    def _next_chunk(self, pending: Iterator[EvalItem]):
        """Up to local_batch_size (item, frames) pairs whose frames could be read, and the failure records of
        the items whose frames could not (those are skipped, never fatal). Empty chunk = this host is done."""
        chunk, failures = [], []
        while len(chunk) < self.local_batch_size:
            item = next(pending, None)
            if item is None:
                break
            try:
                frames = self._load_frames(item)
            except UserError:
                raise
            except Exception as e:   # noqa: BLE001 - an unreadable clip is a counted skip, not a dead eval
                failures.append({"id": str(item.sample.get("id")), "index": item.index,
                                 "video_id": item.sample.get("video_id"), "error": type(e).__name__,
                                 "reason": " ".join(str(e).split())[:500]})
                continue
            chunk.append((item, frames))
        has_video = [f is not None for _, f in chunk]
        if any(has_video) and not all(has_video):
            raise UserError("a batch mixes samples with and without video", "eval data",
                            "evaluate text-only and video samples separately")
        return chunk, failures

    def _build_local_batch(self, chunk):
        ids = [self.prompt_ids(it.sample, f is not None) for it, f in chunk]
        frames = [f for _, f in chunk]
        return ids, (np.stack(frames) if chunk and frames[0] is not None else None)

    # ---- the loop ------------------------------------------------------------------------------------------------
    def evaluate(self, items: Iterable[EvalItem], num_local: int, *, skip_ids: Iterable[str] = (),
                 on_batch: Optional[Callable[[List[dict], List[dict]], None]] = None,
                 progress: bool = False) -> List[dict]:
        """Evaluate this host's items (those whose id is not in `skip_ids`); returns every host's records.

        After every global batch `on_batch(records, failures)` gets that batch's records and failure records of
        ALL hosts (on every host), so a caller can write them as they are produced. Items whose frames cannot be
        read are skipped and end up in `self.failures` (all hosts). `progress`: a tqdm bar on process 0.
        """
        skip = {str(x) for x in skip_ids}
        pending = (it for it in items if str(it.sample.get("id")) not in skip)
        total = int(np.sum(allgather_ints([num_local]))) - len(skip)
        bar = tqdm(total=max(total, 0), desc="eval", unit="q", dynamic_ncols=True, file=sys.stderr,
                   disable=not progress or jax.process_index() != 0)
        records, self.failures = [], []
        try:
            while True:
                chunk, failures = self._next_chunk(pending)
                counts = allgather_ints([len(chunk), len(failures)]).reshape(-1, 2)
                if counts[:, 0].sum() == 0 and counts[:, 1].sum() == 0:
                    break
                local = self._run_batch(chunk) if counts[:, 0].sum() else []
                batch_records, batch_failures = gather_json(local), gather_json(failures)
                records.extend(batch_records)
                self.failures.extend(batch_failures)
                if on_batch is not None:
                    on_batch(batch_records, batch_failures)
                bar.update(int(counts.sum()))
                if batch_failures:
                    bar.set_postfix(failed=len(self.failures))
        finally:
            bar.close()
        return records

    def _keep_report_frames(self, record: dict, frames: Optional[np.ndarray]) -> None:
        """Frames of this host's first answers that are wrong under any evaluated protocol (the report's error
        gallery)."""
        if frames is None or len(self.report_frames) >= self.num_report_frames:
            return
        verdicts = [record[k] for k in ("letter_correct", "gen_correct", "strict_correct") if k in record]
        if not all(verdicts):
            self.report_frames[record["id"]] = frames

    def _run_batch(self, chunk) -> List[dict]:
        n_real = len(chunk)
        # A host with no samples left still joins the SPMD computation with a dummy batch.
        ids, frames = self._build_local_batch(chunk) if chunk else ([[self.tokenizer.pad_id]], None)
        vocab = int(self.config.model.text.vocab_size)
        for it_ids, (item, _) in zip(ids, chunk):
            if "letters" in self.methods and not item.sample.get("options"):
                raise UserError(f"sample {item.sample.get('id')!r} has no options", "options",
                                "letter scoring needs >= 2 options")
            # The video slots may be a sentinel outside the vocab (llava_qwen: LLaVA's IMAGE_TOKEN_INDEX -200).
            bad = [t for t in it_ids if not 0 <= t < vocab and t != self.tokenizer.video_token_id]
            if bad:
                raise UserError(f"sample {item.sample.get('id')!r}: token ids {sorted(set(bad))[:5]} are outside the "
                                f"model's vocabulary", "--tokenizer / config.model.text.vocab_size",
                                f"a tokenizer whose ids are < {vocab}")
        lengths = [len(x) for x in ids]
        max_len = _round_up(max(lengths), LENGTH_MULTIPLE)
        # Every host must use the same padded shapes.
        if jax.process_count() > 1:
            max_len = int(np.max(multihost_utils.process_allgather(np.asarray([max_len]))))
            has_frames = multihost_utils.process_allgather(np.asarray([frames is not None], np.int32))
            if frames is None and np.any(has_frames):
                frames = np.zeros((1, self.num_frames, self.image_size, self.image_size, 3), np.uint8)
        bs = self.local_batch_size
        input_ids = np.full((bs, max_len), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((bs, max_len), np.int32)
        for r in range(bs):
            src = r if r < len(ids) else 0
            input_ids[r, :lengths[src]] = ids[src]
            mask[r, :lengths[src]] = 1
        put = lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x)
        g_ids, g_mask = put(input_ids), put(mask)
        # uint8 to the device (4x less transfer than float32); normalised there.
        g_pix = _normalize_on_device(put(frames[np.minimum(np.arange(bs), len(frames) - 1)])) \
            if frames is not None else None
        row_ids = put(np.arange(bs, dtype=np.int32))

        # One prefill per batch: letter scores (and action heads) read its last-position logits, generation
        # continues from its KV cache; letters alone skip the cache (a plain forward).
        want_letters, want_tokens = "letters" in self.methods, "generate" in self.methods
        heads = want_letters and bool(self.model.spec.action_token) and g_pix is not None
        res = prefill_and_generate(
            self.model, g_ids, g_pix, g_mask, self.max_new_tokens if want_tokens else 0,
            self.tokenizer.eos_id, self.tokenizer.pad_id, action_heads=heads)
        outputs = {}
        if want_letters:
            outputs["letters"], head_preds = _letters_and_heads(res.next_logits, self.letter_ids, res.action_logits,
                                                                top_k=self.head_top_k)
            if head_preds is not None:
                outputs["heads"] = head_preds
        if want_tokens:
            outputs["tokens"] = res.tokens
        local = self._host_rows(outputs, row_ids, bs)
        records = []
        for r in range(n_real):
            record = self._record(chunk[r][0], r, local)
            self._keep_report_frames(record, chunk[r][1])
            records.append(record)
        return records

    def _host_rows(self, outputs: dict, row_ids: jax.Array, bs: int) -> dict:
        """This host's rows of each global output, in local order (outputs are resharded like the batch)."""
        rows_on = {s.device: np.asarray(s.data) for s in row_ids.addressable_shards}
        local = {}
        for name, arr in outputs.items():
            arr = self._identity(jnp.asarray(arr))
            result = None
            for shard in arr.addressable_shards:
                data = np.asarray(shard.data)
                if result is None:
                    result = np.zeros((bs,) + data.shape[1:], data.dtype)
                result[rows_on[shard.device]] = data
            local[name] = result
        return local

    def _record(self, item: EvalItem, r: int, local: dict) -> dict:
        s = item.sample
        options = list(s.get("options") or [])     # none for a free-form question (predict --question)
        answer = s.get("answer") or None
        record = {
            "id": s["id"], "index": item.index, "video_id": s.get("video_id"), "source": s.get("source", "unknown"),
            "mode": s.get("mode", "benchmark"), "task": s.get("task"),
            "start_timestamp": s.get("start_timestamp"), "stop_timestamp": s.get("stop_timestamp"),
            "narration": s.get("narration"), "question": s["conversations"][0].get("value"), "options": options,
            "answer": answer,
            "answer_text": s.get("answer_text"),
            "verb_class": int(s.get("verb_class", -1)), "noun_class": int(s.get("noun_class", -1)),
            "action_id": int(s.get("action_id", -1)), "option_actions": s.get("option_actions"),
        }
        if "letters" in local:
            row = local["letters"][r][:len(options)]
            if not np.all(np.isfinite(row)):
                raise FloatingPointError(f"sample {s['id']!r}: non-finite letter scores {row.tolist()} (a broken "
                                         "checkpoint or a numerics bug); refusing to turn them into a prediction")
            pred = scoring.LETTERS[int(scoring.choose_letters(row[None], [len(options)])[0])]
            record.update(letter_pred=pred, letter_correct=pred == answer,
                          letter_scores=[round(float(x), 4) for x in row])
        if "heads" in local and int(s.get("verb_class", -1)) >= 0:
            best = {kind: [int(x) for x in local["heads"][r][i]] for i, kind in enumerate(("verb", "noun", "action"))}
            record["head_pred"] = {kind: ids[0] for kind, ids in best.items()}
            if self.head_top_k > 1:
                record["head_topk"] = best
        if "tokens" in local:
            # As the original: decoded with special tokens skipped, then its parser (llavaction_jax.data.prompts).
            raw = self.tokenizer.decode(_strip_after_eos(local["tokens"][r], self.tokenizer.eos_id),
                                        skip_special_tokens=True)
            pred = parse_generation(raw, options, item.parser)
            written = written_letter(raw, len(options), item.parser)
            # Strict: the option named by the text AND the letter written in front of it agree.
            strict = pred if pred is not None and written == pred else None
            record.update(gen_pred=pred, gen_correct=pred is not None and pred == answer, raw_generation=raw,
                          gen_letter=written, strict_pred=strict, strict_correct=strict is not None and strict == answer)
        return record
