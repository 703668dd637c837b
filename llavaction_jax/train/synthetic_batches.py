"""Contract-format training batches from in-memory arrays (synthetic data for tests, benchmarks, smoke runs).

`ArrayBatchIterator` has the same interface as llavaction_jax.input's train iterator: `next()` yields a dict of
GLOBAL jax.Arrays sharded over the mesh batch axes, `get_state()`/`set_state()` give exact resume. Every
process holds the full arrays and places only its addressable shards, so it also works multi-process.
"""
import numpy as np
import jax

from llavaction_jax import sharding as shd

from llavaction_jax.input.schema import BatchSchema
from llavaction_jax.model.spec import num_video_tokens

# Unpacked rows (input/schema.py): what synthetic_arrays makes and ArrayBatchIterator serves.
BATCH_KEYS = BatchSchema(num_frames=1, image_size=1).keys()


def synthetic_arrays(config, num_samples: int, seq_len: int, seed: int = 0, answer_len: int = 8) -> dict:
    """Random samples in the batch layout: [text prefix][expanded video slots][answer][right padding].

    Only answer tokens are supervised; about a quarter of the samples have no action label (-1).
    """
    mc = config.model
    frames, side = int(config.data.num_frames), int(mc.vision.image_size)
    n_video = num_video_tokens(mc, frames)
    prefix = 4
    if prefix + n_video + answer_len + 1 > seq_len:
        raise ValueError(f"seq_len={seq_len} is too short for {n_video} video tokens + {answer_len} answer tokens")
    rng = np.random.default_rng(seed)
    vocab = int(mc.text.vocab_size)
    ids = np.zeros((num_samples, seq_len), np.int32)
    labels = np.full((num_samples, seq_len), -100, np.int32)
    mask = np.zeros((num_samples, seq_len), np.int32)
    for i in range(num_samples):
        n_ans = int(rng.integers(2, answer_len + 1))
        text = rng.integers(4, vocab, size=prefix + n_ans)      # ids 0..3 are pad/specials/video
        row = np.concatenate([text[:prefix], np.full(n_video, mc.video_token_id), text[prefix:]])
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        labels[i, prefix + n_video:len(row)] = text[prefix:]
    pixels = rng.integers(0, 256, size=(num_samples, frames, side, side, 3), dtype=np.uint8)
    verb, noun, action = (int(c) for c in mc.action_types)
    actions = np.stack([rng.integers(0, verb, num_samples), rng.integers(0, noun, num_samples),
                        rng.integers(0, action, num_samples)], axis=1).astype(np.int32)
    actions[rng.random(num_samples) < 0.25] = -1
    return dict(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels, actions=actions)


class ArrayBatchIterator:
    """Endless global batches over `arrays` (dict of [N, ...] numpy), reshuffled each epoch from `seed`."""

    def __init__(self, arrays: dict, global_batch_size: int, mesh, seed: int = 0, shuffle: bool = True):
        missing = [k for k in BATCH_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"batch arrays lack {missing}; expected keys {BATCH_KEYS}")
        self._n = len(arrays["input_ids"])
        if self._n == 0:
            raise ValueError("empty dataset: the batch arrays have 0 samples")
        if self._n < global_batch_size:
            raise ValueError(f"dataset has {self._n} samples, fewer than global_batch_size={global_batch_size}")
        self._arrays = {k: np.asarray(arrays[k]) for k in BATCH_KEYS}
        self._bs = int(global_batch_size)
        self._sharding = shd.batch_sharding(mesh)
        self._seed, self._shuffle = int(seed), shuffle
        self._epoch, self._pos = 0, 0

    def _order(self, epoch):
        if not self._shuffle:
            return np.arange(self._n)
        return np.random.default_rng((self._seed, epoch)).permutation(self._n)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._pos + self._bs > self._n:       # drop the remainder, like drop_last
            self._epoch, self._pos = self._epoch + 1, 0
        idx = self._order(self._epoch)[self._pos:self._pos + self._bs]
        self._pos += self._bs
        return {k: self._place(v[idx]) for k, v in self._arrays.items()}

    def _place(self, host: np.ndarray):
        return jax.make_array_from_callback(host.shape, self._sharding, lambda index: host[index])

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "pos": self._pos, "seed": self._seed}

    def set_state(self, state: dict):
        if int(state.get("seed", self._seed)) != self._seed:
            raise ValueError(f"iterator state was saved with seed {state['seed']}, this iterator uses {self._seed}")
        self._epoch, self._pos = int(state["epoch"]), int(state["pos"])
