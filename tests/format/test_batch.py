"""Batches round-trip through their encoding, and a damaged one is refused."""

from __future__ import annotations

import numpy as np
import pytest

from brainy.format.batch import DELETE, UPSERT, Batch, CorruptBatch


def _batch(dim: int = 8) -> Batch:
    ops = [UPSERT, DELETE, UPSERT, UPSERT, DELETE]
    upserts = ops.count(UPSERT)
    return Batch(
        collection="c",
        writer="w-1",
        ids=[f"id-{i}" for i in range(len(ops))],
        ops=ops,
        timestamps=np.arange(10, 10 + len(ops), dtype=np.int64),
        vectors=np.random.default_rng(0).standard_normal((upserts, dim)).astype(np.float32),
        metadata=[{"i": i} if op == UPSERT else None for i, op in enumerate(ops)],
        request_hash="h",
    )


def test_a_batch_decodes_to_what_was_encoded():
    batch = _batch()
    back = Batch.decode(batch.encode(), "k")
    assert (back.collection, back.writer, back.request_hash) == ("c", "w-1", "h")
    assert back.ids == batch.ids and back.ops == batch.ops and back.metadata == batch.metadata
    assert np.array_equal(back.timestamps, batch.timestamps)
    assert back.vectors.dtype == np.float32 and back.vectors.shape == (3, 8)
    assert np.array_equal(back.vectors, batch.vectors)


def test_a_batch_of_deletes_only_has_no_vectors():
    batch = Batch("c", "w", ["a"], [DELETE], np.array([1]), np.zeros((0, 0), np.float32), [None])
    back = Batch.decode(batch.encode())
    assert back.ids == ["a"] and back.vectors.shape == (0, 0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic"])
def test_a_damaged_batch_is_refused(damage):
    data = bytearray(_batch().encode())
    if damage == "flip":
        data[-3] ^= 0xFF
    elif damage == "truncate":
        del data[-2:]
    else:
        data[:2] = b"XX"
    with pytest.raises(CorruptBatch):
        Batch.decode(bytes(data), "k")
