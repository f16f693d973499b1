"""Where a record lives after compaction (DESIGN §6)."""

from __future__ import annotations

import math
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


# `partitions: "auto"` (semantic collections): sized from the live rows at the
# first compaction, then fixed by the centroids. 4 sqrt(n) rows a partition (4,000
# at 1M, 12,600 at 10M, so a partition is scanned exactly below 10k rows: see
# `exact_threshold`, and the manifest holds hundreds of segments, not thousands),
# but never fewer than AUTO_MIN_ROWS: below 250k rows a query's cost is the
# partitions it visits more than the rows it scans (the real 30k MiniLM set: 43
# partitions of 700 rows answered at recall 0.97 in 2.4 ms, 16 in 1.4 ms; an
# exact scan of all 30k takes 0.9 ms).
AUTO_PARTITIONS_MAX = 1024
AUTO_MIN_ROWS = 2_000


def auto_partitions(rows: int) -> int:
    """The partition count `"auto"` stands for, for a collection of `rows` rows."""
    rows = max(rows, 0)
    return max(1, min(AUTO_PARTITIONS_MAX, round(math.sqrt(rows) / 4), rows // AUTO_MIN_ROWS))


# Semantic partitions (DESIGN §6): a row goes to its nearest centroid, a query
# probes the partitions of its nearest centroids. "Nearest" is the collection's
# metric, the same for rows and queries: cosine for angular (the centroids are
# stored unit length, so the inner product ranks them), the inner product for
# dot, the L2 distance for euclidean.

# Rows scored against the centroids per matrix product: bounds the score matrix
# (rows x partitions floats) whatever the input's size.
_ROUTE_CHUNK = 8192


def centroid_scores(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """Higher is nearer, per (row, centroid)."""
    dots = vectors @ centroids.T
    if metric == "euclidean":
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, and |x|^2 is the same for every c.
        return 2 * dots - np.einsum("ij,ij->i", centroids, centroids)
    return dots


def nearest_centroids(vectors: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """The partition (index of the nearest centroid) of every row of `vectors`: one
    matrix product per chunk of rows."""
    vectors = np.asarray(vectors, dtype=np.float32)
    out = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), _ROUTE_CHUNK):
        chunk = vectors[start : start + _ROUTE_CHUNK]
        out[start : start + len(chunk)] = centroid_scores(chunk, centroids, metric).argmax(axis=1)
    return out


def probed_partitions(
    centroids: np.ndarray, query: np.ndarray, metric: str, nprobe: int
) -> np.ndarray:
    """The `nprobe` partitions whose centroids are nearest `query`, nearest first."""
    scores = centroid_scores(np.asarray(query, dtype=np.float32)[None, :], centroids, metric)[0]
    nprobe = min(nprobe, scores.size)
    best = np.argpartition(-scores, nprobe - 1)[:nprobe]
    return best[np.argsort(-scores[best], kind="stable")]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-30)


def _sq_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared L2 distance of every point to every centre (points x centres)."""
    d = (
        np.einsum("ij,ij->i", points, points)[:, None]
        - 2 * points @ centres.T
        + np.einsum("ij,ij->i", centres, centres)[None, :]
    )
    return np.maximum(d, 0)


def _assign(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    out = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), _ROUTE_CHUNK):
        chunk = points[start : start + _ROUTE_CHUNK]
        out[start : start + len(chunk)] = _sq_distances(chunk, centres).argmin(axis=1)
    return out


def _plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to
    the squared distance to the nearest centre so far (one matrix-vector product
    per centre)."""
    n = len(points)
    chosen = [int(rng.integers(n))]
    d2 = _sq_distances(points, points[chosen]).ravel()
    for _ in range(1, k):
        total = float(d2.sum())
        # Fewer distinct points than centres: the rest repeat a point (their
        # partitions stay empty), drawn uniformly.
        pick = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=d2 / total))
        chosen.append(pick)
        d2 = np.minimum(d2, _sq_distances(points, points[pick : pick + 1]).ravel())
    return points[chosen].copy()


def train_centroids(
    sample: np.ndarray, partitions: int, metric: str, seed: int, iterations: int = 10
) -> np.ndarray:
    """Seeded k-means on `sample`: k-means++ seeding, then Lloyd iterations.

    For angular, spherical k-means (rows and centroids unit length), so the
    centroids rank by cosine. For dot, plain L2 k-means: Lloyd's update does not
    converge under the inner product (centroid norms grow without bound), and
    partitions of nearby vectors are what pruning needs; rows are then routed by
    the inner product, like queries.

    Returns:
        partitions x dimension float32 centroids; the same for the same sample and
        seed on every run.
    """
    points = np.asarray(sample, dtype=np.float32)
    if metric == "angular":
        points = _unit(points)
    rng = np.random.default_rng(seed)
    centres = _plus_plus(points, partitions, rng)
    labels = None
    for _ in range(iterations):
        new = _assign(points, centres)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        present = sorted_labels[starts]
        sums = np.add.reduceat(points[order], starts, axis=0)
        counts = np.diff(np.r_[starts, len(points)])
        # An empty cluster keeps its centre: deterministic, and it stays a centroid.
        centres[present] = sums / counts[:, None]
        if metric == "angular":
            centres = _unit(centres)
    return centres.astype(np.float32)


# A basis is trained for collections of at least this dimension, keeping a
# sixth of it (`basis_dimensions`). A scan in the basis reads that share of a full
# scan's bytes, and its best candidates are re-ranked in full
# (`brainy.read.search.ReducedPool`). Measured at the default target 0.95, with
# 1M rows (200 queries) and the shared MiniLM set (500): 64 dimensions
# re-ranking 8 x 160 candidates against 96 re-ranking 4 x 160, recall@10
# 0.982 / 0.990 at 12.3 / 15.5 ms on the Gaussian set, 0.987 / 0.998 at
# 8.0 / 10.0 ms on the mixture, 0.977 / 0.980 at 1.04 / 1.03 ms on the real
# vectors; at 0.99, 0.997 either way. 48 dimensions re-ranking 16 x 160: 0.978 at
# 11.3 ms (Gaussian), 0.976 at 8.0 ms (mixture).
BASIS_MIN_DIMENSION = 128
# Rows of the sample a block of `train_basis`'s moment sums.
_MOMENT_ROWS = 4096


def basis_dimensions(dimension: int) -> int:
    """The dimensions of the basis a scan reads, for vectors of `dimension`."""
    return dimension // 6


def train_basis(sample: np.ndarray, metric: str) -> np.ndarray | None:
    """The top `basis_dimensions` eigenvectors of the sample's second moment
    (uncentred: inner products, not distances from the mean, are what a scan
    ranks by), as a dimension x r float32 matrix; None below
    `BASIS_MIN_DIMENSION`. Angular rows are normalised first, as they are scored.

    The moment is summed a block of rows at a time, in float64: the whole sample
    in float64 (and its normalised copy) was the peak of a compaction's memory,
    400 MB for 65,536 rows of 384 dimensions."""
    count, dimension = sample.shape
    if dimension < BASIS_MIN_DIMENSION or count < dimension:
        return None
    moment = np.zeros((dimension, dimension))
    for start in range(0, count, _MOMENT_ROWS):
        points = np.array(sample[start : start + _MOMENT_ROWS], dtype=np.float64)
        if metric == "angular":
            points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-30)
        moment += points.T @ points
    values, vectors = np.linalg.eigh(moment)
    top = np.argsort(-values)[: basis_dimensions(dimension)]
    return np.ascontiguousarray(vectors[:, top], dtype=np.float32)
