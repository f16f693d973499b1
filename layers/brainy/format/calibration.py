"""Build-time calibration: how a segment is searched at each recall target.

Annoy's default `search_k` (n × n_trees) gives poor recall on real embeddings,
and the `search_k` that reaches a given recall depends on the data and the
segment's size (DESIGN §11). So a segment measures it when it is built, on its
own rows: a seeded sample of rows is used as queries, each with its own row left
out of both answers (a real query is not in the index, and a row always finds
itself), and `search_k` doubles from `k × n_trees` until the recall@k of Annoy
against an exact scan reaches each target. Exact search wins where Annoy needs
so many nodes that a scan of every row is faster (both timed here, per query, on
this machine) or where no `search_k` up to `n × n_trees` reaches the target.

What is recorded (the segment header's optional `"calibration"`):

    {"k": 10, "sample": 48,
     "search_k": {"0.9": 640, "0.95": 1280, "0.99": 5120},   # None: unreachable
     "exact": {"0.9": false, "0.95": false, "0.99": true}}

`search_k` is absolute, measured for `k` = 10 results; a search for more results
(or over-fetching past masked rows) scales it up (see `brainy.read.search`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from annoy import AnnoyIndex

from brainy.core.heap import release_freed
from brainy.format.partitioning import centroid_scores, nearest_centroids

# Recall levels recorded, as the header's keys ("0.9", "0.95", "0.99").
LEVELS = (0.90, 0.95, 0.99)
CALIBRATION_K = 10
# Enough queries to tell 0.95 from 0.99 (each contributes k answers), few enough
# that the build's cost is the trees, not the calibration.
SAMPLE = 48
# Exact scans are timed on a block of at most this many rows and scaled to n.
_TIMED_ROWS = 65_536
# Rows of a ground-truth pass scored at a time: each chunk is copied (contiguous,
# normalised) and scored against every query, so it bounds what the pass holds
# beside the segment (8,192 rows of 384 dimensions: 12.6 MB a copy).
_GT_CHUNK = 8_192


def level_key(level: float) -> str:
    return f"{level:g}"


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)


def _ground_truth(
    vectors: np.ndarray, queries: np.ndarray, own: np.ndarray, metric: str, k: int
) -> np.ndarray:
    """The exact best `k` rows for each query, leaving out its `own` row (-1:
    none): one matrix product per chunk of rows, the best kept across chunks."""
    best = Neighbours(queries, metric, k)
    for start in range(0, vectors.shape[0], _GT_CHUNK):
        block = vectors[start : start + _GT_CHUNK]
        best.add(block, np.arange(start, start + block.shape[0]), exclude=own)
    return best.labels


def _queries(
    vectors: np.ndarray, rows: np.ndarray, metric: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The calibration's queries and the row each must not find (-1: none).

    A third are sampled rows, their own row left out. Rows alone are optimistic:
    a row sits where the data is dense, and real queries need not (measured:
    queries drawn away from the data's clusters lost a third of their recall at
    a search_k rows alone judged enough). So a third are midpoints of two rows
    (between clusters) and a third are drawn from one Gaussian with the sample's
    mean and covariance (no clusters at all: the hard case).
    """
    m = len(rows)
    third = m // 3
    base = np.asarray(vectors[rows], dtype=np.float32)
    if metric == "angular":
        base = _normalise(base)
    queries = base.copy()
    # Midpoints of the second third with other random rows.
    other = np.asarray(vectors[np.sort(rng.choice(vectors.shape[0], size=third))], np.float32)
    if metric == "angular":
        other = _normalise(other)
    queries[third : 2 * third] = (base[third : 2 * third] + other) / 2
    # Random combinations of the centred sample have its mean and covariance,
    # without forming the d × d matrix.
    centred = base - base.mean(axis=0)
    weights = rng.standard_normal((m - 2 * third, m)).astype(np.float32) / np.sqrt(m - 1)
    queries[2 * third :] = base.mean(axis=0) + weights @ centred
    own = rows.astype(np.int64).copy()
    own[third:] = -1
    return np.ascontiguousarray(queries, dtype=np.float32), own


def _annoy_recall(
    index: AnnoyIndex, queries: list[list[float]], own: np.ndarray, truth: np.ndarray,
    k: int, search_k: int,
) -> tuple[float, float]:  # fmt: skip
    """Mean recall@k of Annoy at `search_k`, and its mean seconds per query."""
    hits = 0
    started = time.perf_counter()
    for q, skip, want in zip(queries, own.tolist(), truth, strict=True):
        found = [r for r in index.get_nns_by_vector(q, k + 1, search_k=search_k) if r != skip]
        hits += len(set(found[:k]) & set(want.tolist()))
    seconds = (time.perf_counter() - started) / len(queries)
    return hits / (len(queries) * truth.shape[1]), seconds


def exact_seconds(vectors: np.ndarray, rows: np.ndarray, k: int) -> float:
    """Seconds per query of an exact scan of every row, as the search path does
    it (one matrix-vector product over contiguous rows, then the best k).

    The one measurement of this machine a calibration makes: tests replace it to
    pin the decision (a scan costing infinity keeps every segment on Annoy)."""
    n = vectors.shape[0]
    block = np.ascontiguousarray(vectors[: min(n, _TIMED_ROWS)], dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))  # no squared copy of the block
    timed = rows[:8]
    started = time.perf_counter()
    for r in timed.tolist():
        q = block[min(r, block.shape[0] - 1)]
        s = (block @ q) / np.maximum(norms * np.linalg.norm(q), 1e-30)
        np.argpartition(-s, min(k, s.size - 1))
    per_block = (time.perf_counter() - started) / len(timed)
    return per_block * n / block.shape[0]


def calibrate(
    index: AnnoyIndex, vectors: np.ndarray, metric: str, n_trees: int, seed: int
) -> dict[str, Any]:
    """Measure the `search_k` that reaches each of `LEVELS` on this segment, and
    whether an exact scan is faster there (see the module docstring).

    Args:
        index: the segment's built Annoy index.
        vectors: its rows' vectors (n × dimension, any strides).
        metric: the collection's metric.
        n_trees: trees in the index (the doubling starts at k × n_trees and
            stops at n × n_trees, Annoy's default).
        seed: seeds the sample, so a rebuild measures the same rows.

    Returns:
        The header's `"calibration"` object.
    """
    n = vectors.shape[0]
    k = min(CALIBRATION_K, n - 1)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(SAMPLE, n), replace=False))
    queries, own = _queries(vectors, rows, metric, rng)
    truth = _ground_truth(vectors, queries, own, metric, k)
    scan_seconds = exact_seconds(vectors, rows, k)
    # The exact passes' blocks, freed, are not held while Annoy maps its pages.
    release_freed()
    cap = n * n_trees
    search_k = min(cap, k * n_trees)
    found: dict[str, int | None] = {level_key(level): None for level in LEVELS}
    exact: dict[str, bool] = {level_key(level): True for level in LEVELS}
    while True:
        recall, seconds = _annoy_recall(index, queries.tolist(), own, truth, k, search_k)
        for level in LEVELS:
            key = level_key(level)
            if found[key] is None and recall >= level:
                found[key] = search_k
                exact[key] = seconds >= scan_seconds
        # Past the cost of a scan Annoy cannot win any higher target.
        if found[level_key(LEVELS[-1])] is not None or search_k >= cap or seconds > scan_seconds:
            break
        search_k = min(cap, search_k * 2)
    return {"k": CALIBRATION_K, "sample": len(rows), "search_k": found, "exact": exact}


# Recall levels a semantic collection's probe count is recorded for: finer than a
# segment's, because the probe stage's recall multiplies the segments' (see
# `brainy.read.search.Searcher.probes`).
PROBE_LEVELS = (0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
PROBE_QUERIES = 256


def probe_queries(sample: np.ndarray, metric: str, seed: int) -> np.ndarray:
    """`PROBE_QUERIES` queries shaped by `sample`: half midpoints of two rows
    (between clusters), half draws from one Gaussian with the sample's mean and
    covariance (no clusters at all). None is a row: measured against the whole
    collection, a row would find itself."""
    n = len(sample)
    m = min(PROBE_QUERIES, n)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=m + m // 2, replace=n < m + m // 2))
    queries, _ = _queries(sample, rows, metric, rng)
    return queries[len(rows) // 3 :][:m]


class Neighbours:
    """The exact best `k` rows of fixed `queries` over rows streamed a chunk at a
    time, kept as a label of each (its row number, or the partition holding it in
    a compaction's routing pass): one matrix product per chunk."""

    def __init__(self, queries: np.ndarray, metric: str, k: int = CALIBRATION_K) -> None:
        self.metric = metric
        self.queries = _normalise(queries) if metric == "angular" else queries
        self.k = k
        m = len(queries)
        self.scores = np.full((m, 0), -np.inf, dtype=np.float32)
        self.labels = np.zeros((m, 0), dtype=np.int64)

    def add(self, rows: np.ndarray, labels: np.ndarray, exclude: np.ndarray | None = None) -> None:
        """Rows and their labels; `exclude` (one label a query, -1: none) is a label
        each query must not find (its own row)."""
        block = np.ascontiguousarray(rows, dtype=np.float32)
        if self.metric == "angular":
            block = _normalise(block)
        s = self.queries @ block.T
        if self.metric == "euclidean":
            # -|b - q|² ranks as -L2 does; |q|² is constant per query.
            s = 2 * s - np.einsum("ij,ij->i", block, block)[None, :]
        labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), s.shape)
        if exclude is not None:
            s = np.where(exclude[:, None] == labels, -np.inf, s)
        s = np.concatenate([self.scores, s], axis=1)
        kept = np.concatenate([self.labels, labels], axis=1)
        take = min(self.k, s.shape[1])
        best = np.argpartition(-s, take - 1, axis=1)[:, :take]
        self.scores = np.take_along_axis(s, best, axis=1)
        self.labels = np.take_along_axis(kept, best, axis=1)


def probes_by_level(
    queries: np.ndarray, truth: np.ndarray, centroids: np.ndarray, metric: str, margin: float
) -> dict[str, int]:
    """The probes reaching each of `PROBE_LEVELS`: a quantile of the rank, in each
    query's centroid order, of the partition holding each of its true neighbours
    (`truth`: queries x k partitions), taken with `margin` x the misses each
    level allows (1: none spared)."""
    partitions = len(centroids)
    order = np.argsort(-centroid_scores(queries, centroids, metric), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(partitions)[None, :], axis=1)
    needed = np.sort(np.take_along_axis(rank, truth, axis=1).ravel() + 1)
    out = {}
    for level in PROBE_LEVELS:
        quantile = 1 - (1 - level) * margin
        out[level_key(level)] = int(
            needed[min(needed.size, int(np.ceil(quantile * needed.size))) - 1]
        )
    return out


def calibrate_probes(
    sample: np.ndarray, centroids: np.ndarray, metric: str, seed: int, rows: int | None = None
) -> dict[str, Any]:
    """The partitions a query must probe, nearest centroid first, for its true
    `k` nearest neighbours to lie in them, at each of `PROBE_LEVELS`, estimated
    on the training sample alone (a compaction that streams every row measures
    it exactly instead: see `Neighbours`).

    `PROBE_QUERIES` rows are held out as queries (a third replaced by midpoints
    and Gaussian draws, as `_queries` makes them: real queries need not sit on
    the data), their exact neighbours found among the other rows, and each
    neighbour's partition ranked by the query's centroid order. The probes
    reaching a level are a quantile of those ranks, taken with half the misses
    each level allows (real queries came out harder than held-out rows).

    A sample is sparser than the collection of `rows` rows: its k-th neighbour
    lies about as far as the collection's (k x rows / sample)-th, farther from
    the query and nearer a partition boundary. So a sample of a larger
    collection looks for the best k x sample / rows (at least 1) neighbours,
    which still errs on the side of recall.

    Args:
        rows: the collection's live rows (None: the sample is all of them).

    Returns:
        `{"nprobe": {"0.9": probes, ...}, "sample": rows, "queries": m, "k": k}`.
    """
    n = len(sample)
    m = min(PROBE_QUERIES, n // 4)
    k = min(CALIBRATION_K, n - m - 1)
    if m < 8 or k < 1:
        return {}
    rng = np.random.default_rng(seed)
    held = np.zeros(n, dtype=bool)
    held[rng.choice(n, size=m, replace=False)] = True
    base = np.ascontiguousarray(sample[~held], dtype=np.float32)
    queries, _ = _queries(sample, np.flatnonzero(held), metric, rng)
    if rows is not None and rows > len(base):
        k = max(1, round(k * len(base) / rows))
    truth = _ground_truth(base, queries, np.full(m, -1), metric, k)
    labels = nearest_centroids(base, centroids, metric)
    # Half the misses: measured on the shared MiniLM set, 64 partitions, the
    # sample said 17 probes reach 0.95, its 500 real queries needed 19.
    probes = probes_by_level(queries, labels[truth], centroids, metric, margin=0.5)
    return {"nprobe": probes, "sample": int(n - m), "queries": int(m), "k": int(k)}
