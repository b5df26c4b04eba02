"""Near-duplicate questions: character-trigram Jaccard similarity, found through MinHash bands.

`NearDuplicates.check(text)` says whether `text` is at least `threshold` similar to one kept
before (then it is dropped) and keeps it otherwise. Candidates come from locality-sensitive
hashing (64 MinHash values in bands whose size follows the threshold), are narrowed by the
signatures' estimate, and the similarity of those left is computed exactly, so the threshold
is what decides. Hashes are CRC32, not Python's salted hash(): the same questions give the
same result in every run (a resumed run writes the same files). Memory per kept question: its
trigram hashes (4 bytes each), its signature (512 bytes) and one key per band.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict

import numpy as np

_PRIME = (1 << 61) - 1
_NOISE = re.compile(r"[\W_]+", re.UNICODE)


class NearDuplicates:
    def __init__(self, threshold: float, num_perm: int = 64, seed: int = 1):
        self.threshold = threshold
        # rows per band: candidates from about (1/bands)^(1/rows) similarity, below threshold
        self.rows = 8 if threshold >= 0.8 else 4 if threshold >= 0.5 else 2
        self.bands = num_perm // self.rows
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
        self._b = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64)
        self._buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(self.bands)]
        self._kept: list[np.ndarray] = []
        self._signatures = np.empty((1024, num_perm), dtype=np.uint64)

    def check(self, text: str) -> bool:
        """True if `text` nearly duplicates a kept text (it is then not kept)."""
        shingles = _shingles(text)
        signature = self._signature(shingles)
        rows = self.rows
        keys = [signature[i * rows : (i + 1) * rows].tobytes() for i in range(self.bands)]
        candidates = {i for band, key in enumerate(keys) for i in self._buckets[band].get(key, ())}
        if candidates:
            order = np.fromiter(sorted(candidates), dtype=np.int64, count=len(candidates))
            # the signatures' estimate first (one vector operation), the exact value for the
            # few that come near the threshold
            estimate = (self._signatures[order] == signature).mean(axis=1)
            near = order[estimate >= self.threshold - 0.1]
            if (
                near.size
                and _best_jaccard(shingles, [self._kept[i] for i in near]) >= self.threshold
            ):
                return True
        index = len(self._kept)
        self._kept.append(shingles)
        if index == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.empty_like(self._signatures)])
        self._signatures[index] = signature
        for band, key in enumerate(keys):
            self._buckets[band][key].append(index)
        return False

    def _signature(self, shingles: np.ndarray) -> np.ndarray:
        values = shingles.astype(np.uint64)[:, None]
        hashed = (values * self._a[None, :] + self._b[None, :]) % np.uint64(_PRIME)
        return hashed.min(axis=0)


def _shingles(text: str) -> np.ndarray:
    normal = _NOISE.sub("", text.lower())
    if len(normal) < 3:
        grams = [normal]
    else:
        grams = [normal[i : i + 3] for i in range(len(normal) - 2)]
    return np.unique(np.array([zlib.crc32(g.encode()) for g in grams], dtype=np.uint32))


def _best_jaccard(shingles: np.ndarray, others: list[np.ndarray]) -> float:
    """The largest exact Jaccard similarity of `shingles` to any of `others`, in one pass."""
    sizes = np.fromiter((o.size for o in others), dtype=np.int64, count=len(others))
    hits = np.isin(np.concatenate(others), shingles).astype(np.int64)
    starts = np.zeros(len(others), dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    common = np.add.reduceat(hits, starts)
    return float((common / (sizes + shingles.size - common)).max())
