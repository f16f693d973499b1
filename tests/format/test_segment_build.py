"""Segment builds: vectors streamed in chunks into an index built in its file give
the index `add_item` would, whatever the chunk size, and round-trip through the
segment format."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from brainy.format import segment as seg
from brainy.format.segment import (
    MAGIC,
    SegmentRows,
    Tombstones,
    VectorChunks,
    build_segment,
    load_segment,
    read_vectors,
    upload_segment,
)
from brainy.storage import open_store

DIM = 24
METRICS = ["angular", "euclidean", "dot"]


def _rows(n: int, vectors) -> SegmentRows:
    return SegmentRows(
        ids=[f"id-{i}" for i in range(n)],
        timestamps=np.arange(100, 100 + n, dtype=np.int64),
        writers=["w"] * n,
        metadata=[{"i": i} if i % 3 else None for i in range(n)],
        vectors=vectors,
        tombstones=Tombstones(["gone-1", "gone-2"], np.array([5, 7]), ["w", "v"]),
    )


def _reference_index(
    vectors: np.ndarray, metric: str, n_trees: int, seed: int, path: Path, n_jobs: int = 1
):
    """The index the way Annoy's documentation builds it: one add_item per vector."""
    index = AnnoyIndex(vectors.shape[1], metric)
    index.set_seed(seed)
    for i, v in enumerate(vectors):
        index.add_item(i, v)
    index.build(n_trees if len(vectors) > 64 else 1, n_jobs=n_jobs)
    index.save(str(path))
    return index


def _annoy_part(path: Path) -> bytes:
    data = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", data, len(MAGIC) + 16)
    return data[len(MAGIC) + 24 + hlen :]


def _header(path: Path) -> dict:
    data = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", data, len(MAGIC) + 16)
    header = json.loads(data[len(MAGIC) + 24 : len(MAGIC) + 24 + hlen])
    header.pop("nonce")
    return header


def _item_norm_fields(annoy: bytes, n: int, metric: str) -> np.ndarray:
    """A mask over the index's int32 words: True at the cached norm of each angular
    item (the one field a streamed build computes with numpy rather than Annoy)."""
    words = np.zeros(len(annoy) // 4, dtype=bool)
    if metric == "angular":
        words[np.arange(n) * (3 + DIM) + 1] = True
    return words


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [1, 2, 65, 2000])
def test_streamed_build_gives_the_index_add_item_gives(tmp_path, metric, n):
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    reference = _reference_index(vectors, metric, 8, 3, tmp_path / "ref.ann")
    built = build_segment(
        _rows(n, vectors), metric=metric, n_trees=8, seed=3, workdir=tmp_path, threads=1
    )

    mine, theirs = _annoy_part(built.path), (tmp_path / "ref.ann").read_bytes()
    assert len(mine) == len(theirs)
    a, b = np.frombuffer(mine, "<i4"), np.frombuffer(theirs, "<i4")
    norms = _item_norm_fields(mine, n, metric)
    assert (a[~norms] == b[~norms]).all()  # the same items, the same trees
    np.testing.assert_allclose(a[norms].view("<f4"), b[norms].view("<f4"), rtol=1e-5)

    store = open_store("memory://streamed-build")
    loaded = load_segment(store, upload_segment(store, "c", built), built.id, tmp_path / "cache")
    assert loaded.header.ids == [f"id-{i}" for i in range(n)]
    assert loaded.header.tombstones.ids == ["gone-1", "gone-2"]
    assert (np.asarray(loaded.vectors) == vectors).all()
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    for q in queries:
        assert loaded.index.get_nns_by_vector(q, 10, search_k=200) == (
            reference.get_nns_by_vector(q, 10, search_k=200)
        )


@pytest.mark.parametrize("metric", METRICS)
def test_chunk_sizes_do_not_change_the_segment(tmp_path, monkeypatch, metric):
    n = 500
    vectors = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)
    whole = build_segment(
        _rows(n, vectors), metric=metric, n_trees=4, seed=1, workdir=tmp_path, threads=1
    )
    # Buffers of a few nodes, fed in pieces of every size: many writes, ragged chunks.
    monkeypatch.setattr(seg, "CHUNK_BYTES", 1000)
    for piece in (1, 7, 64, 499):
        chunks = (vectors[i : i + piece] for i in range(0, n, piece))
        built = build_segment(
            _rows(n, VectorChunks(DIM, n, chunks)),
            metric=metric,
            n_trees=4,
            seed=1,
            workdir=tmp_path,
            threads=1,
        )
        assert _annoy_part(built.path) == _annoy_part(whole.path)
        assert _header(built.path) == _header(whole.path)


def test_a_stream_of_the_wrong_length_is_refused(tmp_path):
    vectors = np.ones((10, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="9 vectors for 10 ids"):
        build_segment(
            _rows(10, VectorChunks(DIM, 10, [vectors[:9]])),
            metric="euclidean",
            n_trees=2,
            seed=0,
            workdir=tmp_path,
        )
    assert not list(tmp_path.glob("*.ann"))  # the half-built index is gone


@pytest.mark.parametrize("metric", METRICS)
def test_read_vectors_reads_any_rows_a_chunk_at_a_time(tmp_path, monkeypatch, metric):
    """The vectors of any increasing rows of an index, by plain reads: as a stream
    for a build, and as the rows of a matrix for the calibration (`IndexRows`)."""
    n = 300
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    built = build_segment(_rows(n, vectors), metric=metric, n_trees=2, seed=0, workdir=tmp_path)
    store = open_store("memory://read-vectors")
    loaded = load_segment(store, upload_segment(store, "c", built), built.id, tmp_path / "c")
    monkeypatch.setattr(seg, "CHUNK_BYTES", 2000)
    for rows in (np.arange(n), np.sort(rng.choice(n, 40, replace=False)), np.array([n - 1])):
        stream = read_vectors(loaded.ann_path, metric, DIM, rows)
        chunks = list(stream.chunks)
        assert stream.count == len(rows)
        assert len(chunks) > 1 or len(rows) == 1  # several reads of a small buffer
        assert (np.concatenate(chunks) == vectors[rows]).all()
    assert not list(read_vectors(loaded.ann_path, metric, DIM, np.zeros(0, int)).chunks)
    # What the calibration scans (read, not mapped a second time) is the same.
    rows = seg.IndexRows(loaded.ann_path, metric, n, DIM)
    assert rows.shape == (n, DIM) and len(rows) == n
    picked = np.sort(rng.choice(n, 50))  # with repeats, as the calibration samples
    for index in (slice(None), slice(0, 7), slice(250, 400), picked, picked[:0]):
        assert np.array_equal(rows[index], loaded.vectors[index])


@pytest.mark.parametrize("metric", METRICS)
def test_a_threaded_build_is_annoys_own_threaded_index(tmp_path, metric):
    """Trees built in parallel threads: the items, the trees and the neighbours of
    Annoy's own threaded build (its nodes numbered as its threads allocated them,
    so a search cut off at search_k may break a tie another way: close, not equal)."""
    n = 2000
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    reference = _reference_index(vectors, metric, 8, 3, tmp_path / "ref.ann", n_jobs=4)
    built = build_segment(
        _rows(n, vectors), metric=metric, n_trees=8, seed=3, workdir=tmp_path, threads=4
    )
    store = open_store("memory://threaded-build")
    segment = load_segment(store, upload_segment(store, "c", built), built.id, tmp_path / "c")
    # Annoy's `load` counts as roots the nodes at the end of the file whose subtree
    # holds every item: the 8 copies of the roots, plus any tree's own root that a
    # thread allocated last (its load drops one such; threads finishing together
    # can leave two or three). Duplicates only repeat a tree in a search.
    assert 8 <= segment.index.get_n_trees() <= 8 + 3
    assert (np.asarray(segment.vectors) == vectors).all()
    agree = [
        len(set(segment.index.get_nns_by_vector(q, 10, search_k=200))
            & set(reference.get_nns_by_vector(q, 10, search_k=200)))
        for q in rng.standard_normal((50, DIM)).astype(np.float32)
    ]  # fmt: skip
    assert np.mean(agree) >= 9


def test_a_threaded_build_reaches_its_recall_on_clustered_vectors(tmp_path):
    """Annoy on a build of every core (the default), against exact search, on
    vectors drawn around 50 centres (angular, as the collections default to)."""
    rng = np.random.default_rng(11)
    n, dim = 20_000, 32
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    data = centres[rng.integers(50, size=n + 100)] + 0.3 * rng.standard_normal((n + 100, dim))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    vectors, queries = data[:n], data[n:]
    built = build_segment(_rows(n, vectors), metric="angular", n_trees=16, seed=0, workdir=tmp_path)
    store = open_store("memory://threaded-recall")
    loaded = load_segment(store, upload_segment(store, "c", built), built.id, tmp_path / "c")
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = [loaded.index.get_nns_by_vector(q, 10, search_k=800) for q in queries]
    recall = np.mean(
        [len(set(f) & set(e)) / 10 for f, e in zip(found, exact.tolist(), strict=True)]
    )
    assert recall >= 0.9, recall
