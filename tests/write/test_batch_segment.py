"""The segment built from a batch holds exactly its winning upserts, each with its
own vector, and its winning deletes as tombstones."""

from __future__ import annotations

import numpy as np
import pytest

from brainy.format.batch import DELETE, UPSERT, Batch
from brainy.table.lww import TOMBSTONE
from brainy.write.indexer import build_batch_segment, last_per_id


def _batch(records: list[tuple[str, str]]) -> Batch:
    """`records`: (id, op) in order; upsert i's vector is filled with i."""
    ops = [op for _, op in records]
    vectors = np.repeat(np.arange(ops.count(UPSERT), dtype=np.float32)[:, None], 4, axis=1)
    return Batch(
        collection="c",
        writer="w",
        ids=[rid for rid, _ in records],
        ops=ops,
        timestamps=np.arange(100, 100 + len(ops), dtype=np.int64),
        vectors=vectors,
        metadata=[{"at": i} if op == UPSERT else None for i, op in enumerate(ops)],
    )


@pytest.mark.parametrize(
    "records, rows, vector_of_row",
    [
        # Every upsert wins: rows in record order.
        ([("a", UPSERT), ("b", UPSERT), ("c", DELETE)], [0, 1, TOMBSTONE], [0, 1]),
        # "a" upserted twice (its later vector wins), "b" upserted then deleted.
        (
            [("a", UPSERT), ("b", UPSERT), ("a", UPSERT), ("c", UPSERT), ("b", DELETE)],
            [0, 1, TOMBSTONE],
            [2, 3],
        ),
        # Deletes only.
        ([("a", DELETE), ("b", DELETE)], [TOMBSTONE, TOMBSTONE], []),
    ],
)
def test_a_batch_segment_holds_the_winning_records(records, rows, vector_of_row):
    batch = _batch(records)
    winners = last_per_id(batch)
    seg, got_rows = build_batch_segment(batch, winners)
    assert got_rows == rows
    ups = [i for i in winners if batch.ops[i] == UPSERT]
    dels = [i for i in winners if batch.ops[i] == DELETE]
    assert list(seg.ids) == [batch.ids[i] for i in ups]
    assert seg.timestamps.tolist() == [100 + i for i in ups]
    assert list(seg.writers) == ["w"] * len(ups)
    assert list(seg.metadata) == [{"at": i} for i in ups]
    assert seg.vectors.shape == (len(ups), 4)
    assert seg.vectors[:, 0].tolist() == vector_of_row
    assert list(seg.tombstones.ids) == [batch.ids[i] for i in dels]
    assert seg.tombstones.timestamps.tolist() == [100 + i for i in dels]
