"""Searching segments the cache does not hold from their sketches (issue 7 §3): the
first query of a fresh instance reads what it needs, not whole segments.

For each such segment: one ranged GET of its sketch (its rows at a byte a
dimension, a quarter of its bytes; see `brainy.format.sketch`), scanned as soon as
it lands, on the thread that fetched it. The best `sketch_candidates` rows of all
of them are then read on their own (ranged GETs, neighbours sharing one) and
scored exactly, and the headers of the segments holding the best `k` give their
ids and metadata. Measured on 1M Gaussian rows, 83 partitions probed at recall
target 0.95: 0.991 of the true best 10, as a search of the whole segments gives,
from 125 MB and about 115 requests instead of 600 MB.

The segments themselves are downloaded behind the answer (`Searcher` asks its
background warm-up), and once cached are searched as usual.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from brainy.format.segment import SegmentHeader, read_sketch, read_sketched_header
from brainy.format.sketch import CorruptSketch, Sketch, SketchSpan
from brainy.read.scoring import Scored, scores
from brainy.storage import ObjectStore
from brainy.table.manifest import SegmentRef

# Candidates nearer than this in a segment's object are read by one GET.
_GAP_BYTES = 64 * 1024


def sketch_candidates(k: int, recall_target: float) -> int:
    """Rows re-ranked exactly after a scan of sketches: measured on 1M Gaussian
    rows (83 partitions): the best 10, 20 and 40 by quantized score held 0.980,
    0.991 and 0.991 of the true best 10; twice as many above 0.95."""
    return k * (2 if recall_target <= 0.95 else 4)


@dataclass
class _Scanned:
    """A segment's best rows by its sketch (of those rows only: a query does not
    hold every sketch it scanned until it re-ranks)."""

    ref: SegmentRef
    sketch: Sketch
    approx: np.ndarray  # their estimated scores
    rows: np.ndarray  # increasing


class SketchSearch:
    """Searches segments by their sketches (see the module docstring).

    Args:
        store: where the segments are.
        blocked: the masked rows of a segment (see `brainy.table.deletions.Masks`).
        threads: parallel requests.
    """

    def __init__(
        self,
        store: ObjectStore,
        blocked: Callable[[SegmentRef], np.ndarray | None],
        threads: int,
    ) -> None:
        self.store = store
        self._blocked = blocked
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="brainy-sketch")

    def search(
        self,
        refs: list[SegmentRef],
        metric: str,
        query: np.ndarray,
        k: int,
        recall_target: float,
    ) -> list[Scored]:
        """The best `k` rows of `refs` (each with a sketch), best first.

        Raises:
            CorruptSketch: a sketch, header or row fails its check.
            StorageError: a read failed.
        """
        depth = sketch_candidates(k, recall_target)
        scanned = list(self._pool.map(lambda ref: self._scan(ref, metric, query, depth), refs))
        scanned = [s for s in scanned if s.rows.size]
        if not scanned:
            return []
        approx = np.concatenate([s.approx for s in scanned])
        owner = np.repeat(np.arange(len(scanned)), [s.rows.size for s in scanned])
        rows = np.concatenate([s.rows for s in scanned])
        if approx.size > depth:
            keep = np.argpartition(-approx, depth - 1)[:depth]
            owner, rows = owner[keep], rows[keep]
        chosen: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(0, np.int64))
        for i in np.unique(owner).tolist():
            chosen[i] = np.sort(rows[owner == i])
        exact = self._pool.map(
            lambda i: self._rescore(scanned[i], metric, query, chosen[i]), list(chosen)
        )
        found = [(sc, i, row) for i, part in zip(chosen, exact, strict=True) for sc, row in part]
        ranked = sorted(found, key=lambda t: -t[0])[:k]
        winners = sorted({i for _, i, _ in ranked})
        fetched = self._pool.map(lambda i: self._header(scanned[i]), winners)
        headers = dict(zip(winners, fetched, strict=True))
        return [(score, headers[i].ids[row], headers[i].metadata[row]) for score, i, row in ranked]

    def _header(self, scanned: _Scanned) -> SegmentHeader:
        return read_sketched_header(self.store, scanned.ref.key, scanned.sketch)

    def _scan(self, ref: SegmentRef, metric: str, query: np.ndarray, depth: int) -> _Scanned:
        assert ref.sketch is not None
        sketch = read_sketch(self.store, ref.key, SketchSpan.parse(ref.sketch))
        approx = sketch.scores(query)
        blocked = self._blocked(ref)
        if blocked is not None:
            approx[blocked] = -np.inf
        rows = np.arange(approx.size)
        if approx.size > depth:
            rows = np.sort(np.argpartition(-approx, depth - 1)[:depth])
        rows = rows[np.isfinite(approx[rows])]
        return _Scanned(ref, sketch.only(rows), approx[rows], rows)

    def _rescore(
        self, scanned: _Scanned, metric: str, query: np.ndarray, rows: np.ndarray
    ) -> list[tuple[float, int]]:
        """`rows` (increasing) of a segment read on their own and scored exactly."""
        start, stride, at = scanned.sketch.vectors
        dim = scanned.sketch.dimension
        vectors = np.empty((rows.size, dim), np.float32)
        cuts = np.flatnonzero(np.diff(rows) * stride > _GAP_BYTES) + 1
        done = 0
        for group in np.split(rows, cuts):
            first, last = int(group[0]), int(group[-1])
            data = self.store.get(
                scanned.ref.key,
                byte_range=(start + first * stride, start + (last + 1) * stride - 1),
            ).data
            if len(data) != (last - first + 1) * stride:
                raise CorruptSketch(f"{scanned.ref.key}: short read of rows {first}..{last}")
            span = np.ndarray((last - first + 1, dim), "<f4", data, at, strides=(stride, 4))
            vectors[done : done + group.size] = span[group - first]
            done += group.size
        scanned.sketch.check_rows(np.searchsorted(scanned.rows, rows), vectors, scanned.ref.key)
        # Norms as a cached segment computes them: the same scores, bit for bit.
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors)) if metric == "angular" else None
        found = scores(metric, vectors, query, norms)
        return list(zip(found.tolist(), rows.tolist(), strict=True))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
