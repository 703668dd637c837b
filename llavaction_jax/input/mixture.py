"""Deterministic weighted mixture of sample sources and per-source epoch orders.

The example stream of one host is indexed by k = 0, 1, 2, ... (examples drawn so far):
- draws are grouped in blocks of BLOCK; each block holds exactly `block_counts(weights)` draws of every source
  (largest-remainder apportionment, so proportions are exact per block), in an order shuffled by (seed, block);
- the c-th draw of source s reads record perm(seed, s, epoch=c // n_s)[c % n_s] of that source.
Everything is a pure function of (seed, k), which is what makes resume exact and cheap.
"""
import numpy as np

BLOCK = 1024
_MIX_STREAM = 0x6D6978   # separates the mixture rng stream from the per-source epoch streams


def normalise_weights(weights, num_sources):
    """Weights as float64 summing to 1; empty means uniform."""
    if len(weights) == 0:
        return np.full(num_sources, 1.0 / num_sources)
    w = np.asarray(weights, np.float64)
    if w.shape != (num_sources,):
        raise ValueError(f"config.data.mixture_weights has {len(w)} entries for {num_sources} sources "
                         "(one weight per comma-separated file glob)")
    if np.any(w < 0) or not np.any(w > 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"mixture weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return w / w.sum()


def block_counts(weights, block=BLOCK):
    """Draws per source in one block: floor(block*w) plus the largest remainders (sums to `block`)."""
    raw = np.asarray(weights, np.float64) * block
    counts = np.floor(raw).astype(np.int64)
    short = block - int(counts.sum())
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    return counts


class MixtureSchedule:
    """Which source the k-th draw comes from, and how many draws each source had before k."""

    def __init__(self, weights, seed, block=BLOCK):
        self.weights = np.asarray(weights, np.float64)
        self.seed = int(seed)
        self.block = block
        self.counts = block_counts(self.weights, block)
        self._cache = {}

    def _block_order(self, b):
        order = self._cache.get(b)
        if order is None:
            base = np.repeat(np.arange(len(self.counts)), self.counts)
            if len(self.counts) > 1:
                base = np.random.default_rng([self.seed, _MIX_STREAM, b]).permutation(base)
            if len(self._cache) > 4:
                self._cache.clear()
            order = self._cache[b] = base
        return order

    def source(self, k):
        return int(self._block_order(k // self.block)[k % self.block])

    def consumed(self, k):
        """Per-source number of draws among draws 0..k-1."""
        b, r = divmod(int(k), self.block)
        partial = np.bincount(self._block_order(b)[:r], minlength=len(self.counts))
        return (b * self.counts + partial).astype(np.int64)


def epoch_order(seed, source, epoch, n):
    """The record order of one source in one epoch: a pure function of (seed, source, epoch)."""
    return np.random.default_rng([int(seed), int(source), int(epoch)]).permutation(n)
