"""Centroids objects and semantic routing: checksummed round trip, seeded training,
rows routed to the centroid nearest by the collection's metric."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import xxhash

from brainy.format import partitioning
from brainy.format.centroids import (
    Centroids,
    CorruptCentroids,
    decode_centroids,
    encode_centroids,
    read_centroids,
    write_centroids,
)
from brainy.format.partitioning import (
    basis_dimensions,
    nearest_centroids,
    probed_partitions,
    train_basis,
    train_centroids,
)
from brainy.storage import open_store


def _clusters(rng: np.random.Generator, n: int, dim: int, k: int) -> np.ndarray:
    centres = rng.standard_normal((k, dim)).astype(np.float32) * 4
    return centres[rng.integers(0, k, n)] + rng.standard_normal((n, dim)).astype(np.float32)


def test_round_trip_and_every_flipped_byte_is_refused():
    matrix = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    basis = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    centroids = Centroids(matrix, {"nprobe": {"0.9": 2, "0.95": 3}, "sample": 100}, basis)
    data = encode_centroids(centroids)
    decoded = decode_centroids(data)
    assert np.array_equal(decoded.matrix, matrix) and decoded.calibration == centroids.calibration
    assert np.array_equal(decoded.basis, basis)
    assert decode_centroids(encode_centroids(Centroids(matrix))).basis is None
    for at in range(len(data)):
        broken = bytearray(data)
        broken[at] ^= 0x01
        with pytest.raises(CorruptCentroids):
            decode_centroids(bytes(broken), "k")
    with pytest.raises(CorruptCentroids, match="k: checksum mismatch"):
        decode_centroids(data[:-4], "k")
    with pytest.raises(CorruptCentroids, match="k: not a Brainy centroids object"):
        decode_centroids(b"BRAINYD1" + data[8:], "k")


def test_written_under_a_fresh_key_and_read_back():
    store = open_store("memory://centroids")
    centroids = Centroids(np.eye(4, dtype=np.float32))
    first = write_centroids(store, "docs", centroids)
    second = write_centroids(store, "docs", centroids)
    assert first != second and first.startswith("docs/meta/centroids/")
    assert np.array_equal(read_centroids(store, first).matrix, centroids.matrix)


def test_format_1_objects_still_read_without_calibration():
    """Centroids written before calibration (format 1: the matrix alone) stay readable:
    they are never rewritten, so a collection compacted then keeps them for good."""
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    body = struct.pack("<II", 4, 3) + matrix.astype("<f4").tobytes()
    old = b"BRAINYC1" + xxhash.xxh3_128_digest(body) + body
    decoded = decode_centroids(old, "k")
    assert np.array_equal(decoded.matrix, matrix) and decoded.calibration == {}
    assert decoded.probes_for(0.95) is None
    with pytest.raises(CorruptCentroids):
        tail = body + b"{}"
        decode_centroids(b"BRAINYC1" + xxhash.xxh3_128_digest(tail) + tail, "k")


def test_probes_for_takes_the_lowest_level_at_or_above_the_target():
    c = Centroids(np.eye(8, dtype=np.float32), {"nprobe": {"0.9": 2, "0.95": 4, "0.99": 12}})
    assert [c.probes_for(t) for t in (0.5, 0.9, 0.92, 0.95, 0.99)] == [2, 2, 4, 4, 8]
    assert c.probes_for(0.995) is None


@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
def test_training_is_seeded_and_rows_go_to_their_nearest_centroid(metric):
    rng = np.random.default_rng(1)
    rows = _clusters(rng, 22_000, 16, 8)
    sample, rows = rows[:2000], rows[2000:]
    centroids = train_centroids(sample, 8, metric, seed=3)
    assert centroids.shape == (8, 16) and centroids.dtype == np.float32
    assert np.array_equal(centroids, train_centroids(sample, 8, metric, seed=3))
    if metric == "angular":
        assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    routed = nearest_centroids(rows, centroids, metric)
    # The definition, row by row in float64: argmax of cosine / dot, argmin of L2.
    if metric == "euclidean":
        d = ((rows[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1)
        best = d.min(axis=1)
        mine = d[np.arange(len(rows)), routed]
    else:
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True) if metric == "angular" else rows
        d = -(unit.astype(np.float64) @ centroids.T.astype(np.float64))
        best = d.min(axis=1)
        mine = d[np.arange(len(rows)), routed]
    assert np.allclose(mine, best, rtol=1e-4, atol=1e-3)
    # Eight well separated clusters: k-means++ finds them, so every partition is used.
    assert len(np.unique(routed)) == 8
    query = rows[0]
    ranked = probed_partitions(centroids, query, metric, 3)
    assert ranked[0] == routed[0] and len(set(ranked.tolist())) == 3


def test_basis_holds_the_top_directions_of_the_rows():
    rng = np.random.default_rng(2)
    strong = rng.standard_normal((4000, 8)).astype(np.float32) * 10
    rows = np.concatenate([strong, rng.standard_normal((4000, 120)).astype(np.float32)], axis=1)
    basis = train_basis(rows, "dot")
    r = basis_dimensions(128)
    assert basis.shape == (128, r) and np.allclose(basis.T @ basis, np.eye(r), atol=1e-4)
    # The 8 strong coordinates lie (almost) wholly inside the basis's span.
    inside = np.linalg.norm(basis[:8], axis=1)
    assert (inside > 0.99).all()
    assert train_basis(rows[:, :64], "dot") is None  # too few dimensions to pay


def test_the_basis_is_summed_in_blocks_and_leaves_the_sample_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((3000, 128)) * np.linspace(5, 0.1, 128)  # float64
    before = rows.copy()
    blocks = train_basis(rows, "angular")
    monkeypatch.setattr(partitioning, "_MOMENT_ROWS", len(rows))
    whole = train_basis(rows, "angular")
    assert np.array_equal(rows, before)
    # The same directions (up to sign): a distinct spectrum fixes each one.
    r = basis_dimensions(128)
    assert np.allclose(np.abs(blocks.T @ whole), np.eye(r), atol=1e-3)


def test_a_wider_basis_written_before_is_read_as_its_strongest_directions():
    """Centroids trained when the basis kept a quarter of the dimensions (still in
    buckets: never rewritten) scan in what a basis keeps now, its head columns."""
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((2000, 128)).astype(np.float32) * np.linspace(3, 0.1, 128)
    wide = np.linalg.qr(rng.standard_normal((128, 32)))[0].astype(np.float32)
    matrix = rng.standard_normal((4, 128)).astype(np.float32)
    read = decode_centroids(encode_centroids(Centroids(matrix, {}, wide)))
    assert read.basis is not None and read.basis.flags.c_contiguous
    assert np.array_equal(read.basis, wide[:, : basis_dimensions(128)])
    assert train_basis(rows, "dot").shape == read.basis.shape


def test_fewer_distinct_rows_than_partitions_still_trains():
    sample = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)
    centroids = train_centroids(sample, 8, "euclidean", seed=0)
    assert centroids.shape == (8, 3) and np.isfinite(centroids).all()
    assert set(nearest_centroids(sample, centroids, "euclidean").tolist()) <= set(range(8))
