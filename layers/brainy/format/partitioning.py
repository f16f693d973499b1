"""Where a record lives after compaction (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash


def hash_partition(record_id: str, partitions: int, seed: int) -> int:
    """xxh64 of the id with the collection's seed, modulo the partition count: the
    same on every instance and every run."""
    if partitions == 1:
        return 0
    return xxhash.xxh64_intdigest(record_id.encode(), seed=seed) % partitions


def hash_partitions(ids: Sequence[str], partitions: int, seed: int) -> np.ndarray:
    return np.fromiter(
        (hash_partition(rid, partitions, seed) for rid in ids), dtype=np.int64, count=len(ids)
    )
