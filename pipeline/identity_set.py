"""A set of image identities held as 8 bytes each, for listings and done-sets of 10-100 million images.

A Python ``set`` of path strings costs about 100 bytes an image (the string, its hash slot, the set's
spare room): 10 GB at 100M. Here each identity is a 64-bit SipHash of its UTF-8 text (pandas'
``hash_array``, the same key in every process), kept in a few sorted numpy arrays that merge as they
grow, like an LSM tree: adding a chunk is amortised O(n log n), a membership test is a binary search
per level, and memory is 8 bytes an image (16 while two levels merge).

Two different paths share a hash with probability about n*m/2**64 over a job that compares n listed
with m committed images: 5e-6 at 10M x 10M, 5e-4 at 100M x 100M. A collision would count one image as
done without labeling it; ``--relist`` or a new OUTPUT is the remedy in that unlikely case.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def hash_identities(paths: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 hashes of ``paths`` (strings), in order; equal strings give equal hashes in any process."""
    if len(paths) == 0:
        return np.zeros(0, np.uint64)
    objects = paths.to_numpy(zero_copy_only=False)
    return pd.util.hash_array(np.asarray(objects, dtype=object), categorize=False)


class IdentitySet:
    """Hashes of identities: ``add``, ``contains`` and ``add_new`` on whole numpy arrays at once."""

    def __init__(self) -> None:
        self._levels: list[np.ndarray] = []  # sorted, unique within a level, larger first

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self._levels)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A bool mask: which of ``hashes`` are in the set."""
        found = np.zeros(len(hashes), dtype=bool)
        for level in self._levels:
            if not len(level):
                continue
            at = np.searchsorted(level, hashes)
            found |= level[np.minimum(at, len(level) - 1)] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        fresh = np.unique(hashes)
        if len(self._levels):
            fresh = fresh[~self.contains(fresh)]
        if not len(fresh):
            return
        self._levels.append(fresh)
        # Merge while a level is at least half the one before it: O(log n) levels, each item merged O(log n) times.
        while len(self._levels) > 1 and len(self._levels[-1]) * 2 >= len(self._levels[-2]):
            last, before = self._levels.pop(), self._levels.pop()
            merged = np.concatenate([before, last])
            merged.sort(kind="stable")
            self._levels.append(merged)

    def add_new(self, hashes: np.ndarray) -> np.ndarray:
        """Add ``hashes``; a mask of the ones seen for the first time (a repeat within ``hashes`` counts once)."""
        first = np.zeros(len(hashes), dtype=bool)
        if not len(hashes):
            return first
        _, index = np.unique(hashes, return_index=True)
        first[index] = True
        first &= ~self.contains(hashes)
        self.add(hashes[first])
        return first

    def count_missing_from(self, other: "IdentitySet") -> int:
        """How many of this set's hashes ``other`` lacks (committed images a fresh listing no longer names)."""
        return int(sum(int((~other.contains(level)).sum()) for level in self._levels))
