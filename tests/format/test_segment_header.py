"""A slim segment header (what an indexer keeps) says what the full one says
about ids, timestamps, writers and tombstones, without the rows' metadata."""

from __future__ import annotations

import numpy as np
import pytest

from brainy.format import segment as seg
from brainy.format.segment import (
    SegmentRows,
    Tombstones,
    Writers,
    build_segment,
    read_segment_header,
    upload_segment,
)
from brainy.storage import open_store


def _segment(tmp_path, n: int = 50):
    writers = ["ingest-a", "ingest-b", "indexer-c"]
    rows = SegmentRows(
        ids=[f"id-{i}" for i in range(n)],
        timestamps=np.arange(1000, 1000 + n, dtype=np.int64),
        writers=[writers[i % 3] for i in range(n)],
        # Metadata shaped like the header itself must not confuse the slim reader.
        metadata=[
            {"ids": ["x"], "tombstones": {"ids": []}, "nested": {"i": i}} if i % 2 else None
            for i in range(n)
        ],
        vectors=np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32),
        tombstones=Tombstones(["gone-1", "gone-2"], np.array([5, 7]), ["ingest-b", "ingest-a"]),
    )
    store = open_store("memory://")
    built = build_segment(rows, metric="euclidean", n_trees=2, seed=0, workdir=tmp_path)
    return store, upload_segment(store, "c", built), rows


def test_slim_header_holds_what_last_writer_wins_needs(tmp_path):
    store, key, rows = _segment(tmp_path)
    full = read_segment_header(store, key)
    slim = read_segment_header(store, key, metadata=False)
    assert full.metadata == list(rows.metadata)
    assert slim.metadata == []
    assert (slim.dimension, slim.metric, slim.count) == (full.dimension, full.metric, full.count)
    assert slim.ids == full.ids == list(rows.ids)
    assert np.array_equal(slim.timestamps, full.timestamps)
    assert isinstance(slim.writers, Writers)
    assert list(slim.writers) == full.writers == list(rows.writers)
    assert slim.tombstones.ids == full.tombstones.ids == ["gone-1", "gone-2"]
    assert np.array_equal(slim.tombstones.timestamps, [5, 7])
    assert list(slim.tombstones.writers) == ["ingest-b", "ingest-a"]
    assert full.slim().writers == slim.writers


def test_writers_read_like_the_list_they_code():
    names = ["b", "a", "b", "c", "a", "b"]
    coded = Writers.of(names)
    assert len(coded) == 6 and list(coded) == names and coded == names
    assert sorted(coded.names) == ["a", "b", "c"] and coded.codes.itemsize == 1
    assert [coded[i] for i in range(6)] == names and coded[-1] == "b"
    assert list(coded[1:4]) == names[1:4]
    assert list(coded.take(np.array([5, 0, 3]))) == ["b", "b", "c"]
    assert Writers.of(coded) is coded
    assert list(Writers.of([])) == [] and Writers.of([]) == []
    one = Writers.of(iter(["w"] * 3))
    assert list(one) == ["w", "w", "w"] and one.names == ("w",)


@pytest.mark.parametrize("probe", [64, 1 << 20])
def test_a_header_longer_than_the_first_read_is_read_whole(tmp_path, monkeypatch, probe):
    monkeypatch.setattr(seg, "_HEADER_PROBE", probe)
    store, key, rows = _segment(tmp_path, n=300)
    for metadata in (True, False):
        header = read_segment_header(store, key, metadata=metadata)
        assert header.ids == list(rows.ids) and list(header.writers) == list(rows.writers)
        assert header.metadata == (list(rows.metadata) if metadata else [])
