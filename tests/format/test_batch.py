"""Batches round-trip through their encoding, every format ever written stays
readable, and a damaged one is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xxhash

from brainy.format.batch import DELETE, MAGIC, UPSERT, Batch, CorruptBatch


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


def test_a_format_1_batch_written_by_an_earlier_release_still_decodes():
    """Batches are durable in users' buckets: this one was written by the release
    that put the timestamps in the JSON header (format 1)."""
    data = (Path(__file__).parent / "data" / "batch-format1.bin").read_bytes()
    assert b'"format":1' in data
    back = Batch.decode(data, "k")
    assert (back.collection, back.writer, back.request_hash) == ("c", "w-1", "h")
    assert back.ids == [f"id-{i}" for i in range(5)]
    assert back.ops == [UPSERT, DELETE, UPSERT, UPSERT, DELETE]
    assert back.timestamps.tolist() == [1764265000000000 + i for i in range(5)]
    assert back.metadata == [{"i": 0}, None, {"i": 2}, {"i": 3}, None]
    assert back.vectors.dtype == np.float32
    assert back.vectors.tolist() == (np.arange(24, dtype=np.float32).reshape(3, 8) / 8 - 1).tolist()
    # And written again, it is the same batch in the current format.
    again = Batch.decode(back.encode(), "k")
    assert b'"format":2' in back.encode()
    assert again.ids == back.ids and again.timestamps.tolist() == back.timestamps.tolist()
    assert np.array_equal(again.vectors, back.vectors)


def test_a_batch_of_an_unknown_format_is_refused_naming_it():
    batch = _batch()
    data = batch.encode().replace(b'"format":2', b'"format":9')
    body = data[len(MAGIC) + 16 :]
    data = MAGIC + xxhash.xxh3_128_digest(body) + body  # a valid checksum: only the format is new
    with pytest.raises(CorruptBatch, match="format 9"):
        Batch.decode(data, "k")
