"""Where a record lives after compaction (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np
import xxhash


def hash_partition(record_id: str, partitions: int, seed: int) -> int:
    """xxh64 of the id with the collection's seed, modulo the partition count: the
    same on every instance and every run."""
    if partitions == 1:
        return 0
    return xxhash.xxh64_intdigest(record_id.encode(), seed=seed) % partitions


def hash_partitions(ids: Sequence[str], partitions: int, seed: int) -> np.ndarray:
    """`hash_partition` of every id: one hash call per id (no Python frame per id),
    the modulo in numpy."""
    if partitions == 1:
        return np.zeros(len(ids), dtype=np.int64)
    hashes = map(xxhash.xxh64_intdigest, map(str.encode, ids), repeat(seed))
    digests = np.fromiter(hashes, dtype=np.uint64, count=len(ids))
    return (digests % np.uint64(partitions)).astype(np.int64)
