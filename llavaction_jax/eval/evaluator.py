"""Batched, mesh-sharded evaluation of multiple-choice video QA: option-letter scoring and greedy generation.

Each host evaluates its own slice of the samples: it builds its local part of every global batch, the jitted
forward / generate run SPMD over the whole mesh, and the host reads back only the rows it owns (matched by a row-id
array that travels through the same sharding). Letters and generation share ONE prefill per batch
(model.generate.prefill_and_generate). All hosts run the same number of batches (short hosts pad), and the
per-host prediction records are gathered ONCE at the end (JSON bytes through process_allgather).
"""
import json
import math
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from data_prep import prompts
from llavaction_jax import sharding as sharding_lib
from llavaction_jax.eval import scoring
from llavaction_jax.eval.items import EvalItem, normalize_frames, parse_generation
from llavaction_jax.input.chat import tokenize_prompt
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


@jax.jit
def _letters_and_heads(next_logits, letter_ids, action_logits):
    """Letter logits [B, K] from the prefill's next-token logits (+ action-head argmaxes [B, 3] or None)."""
    letters = jnp.take(next_logits, letter_ids, axis=1).astype(jnp.float32)
    if action_logits is None:
        return letters, None
    return letters, jnp.stack([jnp.argmax(x, -1) for x in action_logits], axis=1).astype(jnp.int32)


class Evaluator:
    """Runs letter scoring and/or generation over EvalItems; returns prediction records (all hosts' on every host)."""

    def __init__(self, model, tokenizer, config, mesh, *, methods: Optional[Sequence[str]] = None,
                 batch_size: Optional[int] = None, max_new_tokens: Optional[int] = None,
                 num_report_frames: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.mesh = mesh
        self.methods = tuple(methods if methods is not None else config.eval.methods)
        bad = [m for m in self.methods if m not in ("letters", "generate")]
        if bad or not self.methods:
            raise ValueError(f"eval methods must be a non-empty subset of ('letters', 'generate'), got {self.methods}")
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
        self.letter_ids = jnp.asarray(scoring.letter_token_ids(tokenizer)) if "letters" in self.methods else None
        self.num_report_frames = num_report_frames
        self.report_frames = {}      # sample id -> uint8 frames of this host's first samples (for the report grid)
        self._identity = jax.jit(lambda x: x, out_shardings=self.batch_sharding)

    # ---- prompts and batches -------------------------------------------------------------------------------------
    def prompt_ids(self, sample: dict, has_video: bool) -> List[int]:
        question = sample["conversations"][0]["value"]
        if has_video and self.config.data.add_time_instruction:
            duration = float(sample["stop_timestamp"]) - float(sample["start_timestamp"])
            question = prompts.insert_time_instruction(question, duration, self.num_frames)
        n_video = self.n_video_tokens if has_video else 0
        return tokenize_prompt(self.tokenizer, question, n_video, self.config.data.system_prompt)

    def _load_frames(self, item: EvalItem) -> Optional[np.ndarray]:
        frames = item.load_frames() if item.load_frames is not None else None
        if frames is None:
            return None
        expected = (self.num_frames, self.image_size, self.image_size, 3)
        if tuple(frames.shape) != expected:
            raise ValueError(f"sample {item.sample.get('id')!r}: frames have shape {tuple(frames.shape)}, "
                             f"expected {expected} (config.data.num_frames, model image size)")
        return frames

    def _build_local_batch(self, items: List[EvalItem]):
        """Right-padded host-local arrays for up to local_batch_size items (missing rows copy row 0, flagged)."""
        frames = [self._load_frames(it) for it in items]
        has_video = [f is not None for f in frames]
        if any(has_video) and not all(has_video):
            raise ValueError("a batch mixes samples with and without video; evaluate them separately")
        ids = [self.prompt_ids(it.sample, v) for it, v in zip(items, has_video)]
        for it, f in zip(items, frames):
            if f is not None and len(self.report_frames) < self.num_report_frames:
                self.report_frames[it.sample["id"]] = f
        return ids, (np.stack(frames) if all(has_video) and items else None)

    # ---- the loop ------------------------------------------------------------------------------------------------
    def evaluate(self, items: Iterable[EvalItem], num_local: int) -> List[dict]:
        """Evaluate this host's `num_local` items; returns every host's records (same list on all hosts)."""
        n_batches = self._global_num_batches(num_local)
        iterator = iter(items)
        local_records = []
        for _ in range(n_batches):
            chunk = [it for _, it in zip(range(self.local_batch_size), iterator)]
            local_records.extend(self._run_batch(chunk))
        leftover = next(iterator, None)
        if leftover is not None or len(local_records) != num_local:
            raise ValueError(f"host {jax.process_index()} was told it has {num_local} samples but produced "
                             f"{len(local_records)} records{' and more remain' if leftover is not None else ''}")
        return gather_records(local_records)

    def _global_num_batches(self, num_local: int) -> int:
        counts = multihost_utils.process_allgather(np.asarray([num_local], np.int64)) if jax.process_count() > 1 \
            else np.asarray([num_local])
        return int(math.ceil(int(np.max(counts)) / self.local_batch_size))

    def _run_batch(self, chunk: List[EvalItem]) -> List[dict]:
        n_real = len(chunk)
        # A host with no samples left still joins the SPMD computation with a dummy batch.
        ids, frames = self._build_local_batch(chunk) if chunk else ([[self.tokenizer.pad_id]], None)
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
        pix = None
        if frames is not None:
            pix = normalize_frames(frames[np.minimum(np.arange(bs), len(frames) - 1)])
        put = lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x)
        g_ids, g_mask = put(input_ids), put(mask)
        g_pix = put(pix) if pix is not None else None
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
            outputs["letters"], head_preds = _letters_and_heads(res.next_logits, self.letter_ids, res.action_logits)
            if head_preds is not None:
                outputs["heads"] = head_preds
        if want_tokens:
            outputs["tokens"] = res.tokens
        local = self._host_rows(outputs, row_ids, bs)
        return [self._record(chunk[r], r, local) for r in range(n_real)]

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
        options = list(s["options"])
        answer = s.get("answer") or None
        record = {
            "id": s["id"], "video_id": s.get("video_id"), "source": s.get("source", "unknown"),
            "mode": s.get("mode", "benchmark"), "task": s.get("task"),
            "start_timestamp": s.get("start_timestamp"), "stop_timestamp": s.get("stop_timestamp"),
            "narration": s.get("narration"), "options": options, "answer": answer,
            "answer_text": s.get("answer_text"),
            "verb_class": int(s.get("verb_class", -1)), "noun_class": int(s.get("noun_class", -1)),
            "action_id": int(s.get("action_id", -1)), "option_actions": s.get("option_actions"),
        }
        if "letters" in local:
            row = local["letters"][r][:len(options)]
            pred = scoring.LETTERS[int(scoring.choose_letters(row[None], [len(options)])[0])]
            record.update(letter_pred=pred, letter_correct=pred == answer,
                          letter_scores=[round(float(x), 4) for x in row])
        if "heads" in local and int(s.get("verb_class", -1)) >= 0:
            v, n, a = (int(x) for x in local["heads"][r])
            record["head_pred"] = {"verb": v, "noun": n, "action": a}
        if "tokens" in local:
            raw = self.tokenizer.decode(_strip_after_eos(local["tokens"][r], self.tokenizer.eos_id))
            pred = parse_generation(raw, options, item.parser)
            record.update(gen_pred=pred, gen_correct=pred is not None and pred == answer, raw_generation=raw)
        return record


def gather_records(local_records: List[dict]) -> List[dict]:
    """Every host's records on every host, host-major order; one pair of allgathers (lengths, then bytes)."""
    if jax.process_count() == 1:
        return list(local_records)
    payload = np.frombuffer(json.dumps(local_records).encode("utf-8"), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([payload.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:payload.size] = payload
    everything = multihost_utils.process_allgather(padded)
    records = []
    for host, size in enumerate(sizes):
        records.extend(json.loads(everything[host, :int(size)].tobytes().decode("utf-8")))
    return records
