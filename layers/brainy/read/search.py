"""The search path (DESIGN §9): resolve the manifest, make sure each live segment is
in the local cache, query segments in parallel, drop masked and filtered rows,
merge best-first. Small segments (and selective filters) are searched exactly.

A semantic collection's search ranks its centroids for the query and searches
the segments of the `nprobe` nearest partitions plus every level-0 segment (not
yet routed); a probe that finds fewer than `k` hits (a selective filter, heavy
masking) searches the other partitions too, so pruning never answers with fewer
hits than a full search would. A collection never compacted has no centroids yet
and is searched in full.

A segment a query needs that is not cached, and that it would scan, is searched
from its sketch (`brainy.read.cold`) where a background warm-up will download it
behind the answer: the first queries of a fresh instance read a fraction of the
bytes of the segments they probe."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.core.errors import VersionNotVisible
from brainy.core.results import Hit, SearchResult
from brainy.format.centroids import Centroids, read_centroids
from brainy.format.partitioning import centroid_scores, probed_partitions
from brainy.format.segment import LoadedSegment
from brainy.format.sketch import CorruptSketch
from brainy.read.cache import CachedSegment, SegmentCache
from brainy.read.coalesce import Coalescer
from brainy.read.cold import SketchSearch
from brainy.read.recall import RecallMonitor, RecallSample
from brainy.read.scoring import Scored, best_of, scores
from brainy.read.warmup import BackgroundWarmer, WarmReport
from brainy.storage import ObjectStore
from brainy.table.deletions import Masks
from brainy.table.manifest import Manifest, Manifests, ManifestView, SegmentRef

DEFAULT_RECALL_TARGET = 0.95
# A query reads the sketches of the segments it needs that are not cached only if
# they come to this many bytes (see `Searcher._split_cold`): at the ~100 MB/s one
# instance reads from S3, less takes a few round trips' time to download whole.
SKETCH_MIN_BYTES = 64 * 2**20
log = logging.getLogger(__name__)
T = TypeVar("T")


def plan(
    calibration: Mapping[str, Any] | None, recall_target: float
) -> tuple[bool, int | None, int]:
    """How a segment is searched at `recall_target`: (exact, search_k, k) — the
    calibrated `search_k` for `k` results, or None where the segment has no
    calibration (built before it, or small) and `search_k_factor` applies.

    The recorded level at or above the target answers it (0.9 answers 0.85 and
    0.9; 0.95 answers 0.93); a target above every recorded level, 1.0 included,
    is searched exactly, as is a level at which the segment recorded a scan as
    faster than Annoy or no `search_k` reaching it.
    """
    if recall_target >= 1.0:
        return True, None, 0
    if not calibration:
        return False, None, 0
    levels = sorted(
        (float(key), value, calibration.get("exact", {}).get(key, False))
        for key, value in calibration.get("search_k", {}).items()
    )
    for level, search_k, exact in levels:
        if level >= recall_target - 1e-9:
            if exact or search_k is None:
                return True, None, 0
            return False, int(search_k), int(calibration.get("k", 10))
    return True, None, 0


def probes(
    schema: CollectionSchema,
    centroids: Centroids,
    refs: list[SegmentRef],
    recall_target: float,
) -> tuple[int, float]:
    """How a semantic collection is searched at `recall_target`: (partitions to
    probe, the recall target a probed segment past `exact_threshold` is searched
    at; the others are searched at `recall_target` itself).

    The two stages multiply: a true neighbour is found if its partition is probed
    and the segment's search finds it. Partitions small enough to be scanned
    exactly (`exact_threshold`) lose nothing; the others are searched at the
    target's square root (0.95 → 0.975), which loses at most the rest of their
    share `s` of the rows. So the probes carry `target / (1 - s x (1 - √target))`:
    the whole target where every partition is scanned, its square root where none
    is, and in between as much as the large partitions call for (one partition
    past the threshold no longer costs every query the square root). The probes
    are those the centroids' calibration measured for that level; an explicit
    `nprobe`, or centroids without calibration, use `CollectionSchema.probes`; a
    target above every calibrated level (1.0 included) probes every partition.
    """
    partitions = len(centroids)
    if recall_target >= 1.0:
        return partitions, recall_target
    if schema.nprobe is not None or not centroids.calibration:
        return schema.probes(partitions), recall_target
    rows = large = 0
    for ref in refs:
        if ref.level > 0:
            rows += ref.count
            large += ref.count if ref.count > schema.exact_threshold else 0
    if not large:
        level, segment_target = recall_target, recall_target
    else:
        segment_target = math.sqrt(recall_target)
        level = recall_target / (1.0 - large / rows * (1.0 - segment_target))
    found = centroids.probes_for(min(level, segment_target))
    return (partitions if found is None else found), segment_target


def _allowed(
    seg: CachedSegment, blocked: np.ndarray | None, filters: Mapping[str, Any] | None
) -> np.ndarray | None:
    """The rows of `seg` matching `filters` and not `blocked` (None: no filter)."""
    if not filters:
        return None
    allowed = seg.filters.matching(filters)
    return allowed if blocked is None else allowed[~blocked[allowed]]


def _how(
    loaded: LoadedSegment,
    schema: CollectionSchema,
    recall_target: float,
    allowed: np.ndarray | None,
) -> tuple[bool, int | None, int]:
    """How a segment is searched at `recall_target`: (scanned exactly, else the
    Annoy `search_k` and the `k` it was calibrated for; see `plan`). A segment, or
    the rows a filter allows, within `exact_threshold` is always scanned."""
    exact, search_k, calibrated_k = plan(loaded.header.calibration, recall_target)
    scanned = (
        exact
        or loaded.count <= schema.exact_threshold
        or (allowed is not None and allowed.size <= schema.exact_threshold)
    )
    return scanned, search_k, calibrated_k


def scans_reduced(loaded: LoadedSegment, schema: CollectionSchema, recall_target: float) -> bool:
    """Whether an unfiltered query at `recall_target` scans this segment in the
    collection's reduced basis (see `search_segment`): what warming prepares."""
    scanned = _how(loaded, schema, recall_target, None)[0]
    return scanned and _worth_reducing(loaded.count, 10, recall_target)


def _target(
    ref: SegmentRef, schema: CollectionSchema, recall_target: float, large: float | None
) -> float:
    """The target `ref` is searched at (see `probes`)."""
    return large if large is not None and ref.count > schema.exact_threshold else recall_target


def search_segment(
    seg: CachedSegment,
    blocked: np.ndarray | None,
    schema: CollectionSchema,
    query: np.ndarray,
    k: int,
    filters: Mapping[str, Any] | None,
    recall_target: float = DEFAULT_RECALL_TARGET,
    basis: np.ndarray | None = None,
    pools: dict[float, ReducedPool] | None = None,
) -> list[Scored]:
    """The best `k` rows of one segment matching `filters`, skipping the rows
    `blocked` (a boolean array over the segment's rows: masked) marks, searched
    as its calibration says for `recall_target` (see `plan`). With the
    collection's `basis`, an exact scan of more than `REDUCED_MIN_ROWS` rows
    below recall 1.0 is a scan in the basis's dimensions, its best candidates
    re-ranked in full (see `ReducedPool`): with `pools` (by recall target), the
    scan joins the query's pool and nothing is returned until its `best()`."""
    loaded = seg.loaded
    allowed = _allowed(seg, blocked, filters)
    if allowed is not None and allowed.size == 0:
        return []
    scanned, search_k, calibrated_k = _how(loaded, schema, recall_target, allowed)
    if scanned:
        reduced = _reducible(seg, basis, allowed, k, recall_target)
        if reduced is not None:
            assert basis is not None
            pool = _pool_for({} if pools is None else pools, schema, query, basis, k, recall_target)
            pool.add(seg, blocked, pool.projected @ reduced)
            return [] if pools is not None else pool.best()
        return _exact(loaded, schema.metric, query, k, blocked, allowed)
    return _approximate(loaded, schema, query, k, blocked, allowed, search_k, calibrated_k)


# Score-matrix cells (rows x queries) per matrix product of a batch: bounds the
# memory a batch takes on a large segment (64 MB of float32).
_BATCH_CELLS = 16 * 2**20


def search_segment_batch(
    seg: CachedSegment,
    blocked: np.ndarray | None,
    schema: CollectionSchema,
    queries: np.ndarray,
    k: int,
    filters: Mapping[str, Any] | None,
    recall_target: float = DEFAULT_RECALL_TARGET,
    basis: np.ndarray | None = None,
    pools: list[dict[float, ReducedPool]] | None = None,
) -> list[list[Scored]]:
    """`search_segment` for each row of `queries`, the same hits: a segment that
    `search_segment` would scan exactly is scanned once for all of them, one
    matrix product per block of queries (in the reduced basis, with `pools`: one
    per query, which the scan joins as `search_segment`'s does); otherwise
    (Annoy) each query is searched in turn."""
    loaded = seg.loaded
    n = loaded.count
    allowed = _allowed(seg, blocked, filters)
    if allowed is not None and allowed.size == 0:
        return [[] for _ in range(len(queries))]
    scanned = _how(loaded, schema, recall_target, allowed)[0]
    reduced = _reducible(seg, basis, allowed, k, recall_target) if scanned else None
    if reduced is not None and pools is not None:
        assert basis is not None
        joined = [
            _pool_for(pools[j], schema, q, basis, k, recall_target) for j, q in enumerate(queries)
        ]
        approx = np.stack([pool.projected for pool in joined]) @ reduced
        for pool, row in zip(joined, approx, strict=True):
            pool.add(seg, blocked, row)
        return [[] for _ in range(len(queries))]
    if not scanned or reduced is not None:
        return [
            search_segment(seg, blocked, schema, q, k, filters, recall_target, basis)
            for q in queries
        ]
    rows = np.arange(n) if allowed is None else allowed
    vectors = loaded.vectors if allowed is None else loaded.vectors[allowed]
    metric = schema.metric
    norms = loaded.norms[rows] if metric != "dot" else None
    out: list[list[Scored]] = []
    step = max(1, _BATCH_CELLS // max(len(rows), 1))
    for start in range(0, len(queries), step):
        block = queries[start : start + step]
        s = vectors @ block.T
        if metric == "angular":
            s /= np.maximum(norms[:, None] * np.linalg.norm(block, axis=1)[None, :], 1e-30)
        elif metric == "euclidean":
            # |x - q|² = |x|² - 2 x.q + |q|²: ranks the rows; the best are re-scored exactly.
            s = 2 * s - (norms**2)[:, None]
        if blocked is not None and allowed is None:
            s[blocked] = -np.inf
        for j in range(len(block)):
            top_s, top_rows = _top(s[:, j], rows, k)
            keep = np.isfinite(top_s)
            if metric == "euclidean":
                out.append(_rescore(loaded, metric, block[j], top_rows[keep], k))
            else:
                out.append(_hits(loaded, top_s[keep], top_rows[keep]))
    return out


def _hits(loaded: LoadedSegment, s: np.ndarray, rows: np.ndarray) -> list[Scored]:
    ids, metadata = loaded.header.ids, loaded.header.metadata
    return [(float(sc), ids[r], metadata[r]) for sc, r in zip(s, rows.tolist(), strict=True)]


def _top(scored: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scored.size > k:
        part = np.argpartition(-scored, k - 1)[:k]
        return scored[part], rows[part]
    return scored, rows


def _exact(
    loaded: LoadedSegment,
    metric: str,
    query: np.ndarray,
    k: int,
    blocked: np.ndarray | None,
    allowed: np.ndarray | None,
) -> list[Scored]:
    if allowed is None:
        s = scores(metric, loaded.vectors, query, loaded.norms if metric == "angular" else None)
        if blocked is not None:
            s = np.where(blocked, -np.inf, s)
        rows = np.arange(loaded.count)
        s, rows = _top(s, rows, k)
        keep = np.isfinite(s)
        s, rows = s[keep], rows[keep]
        return _hits(loaded, s, rows)
    return _rescore(loaded, metric, query, allowed, k)


def _rescore(
    loaded: LoadedSegment,
    metric: str,
    query: np.ndarray,
    rows: np.ndarray,
    k: int,
    *,
    cached_norms: bool = True,
) -> list[Scored]:
    """The best `k` of `rows`, scored exactly on their full vectors.

    Args:
        cached_norms: take angular norms from the segment's cached ones (computed
            over all its rows on first use); False computes only these rows'
            (a segment searched through Annoy never scans all its rows).
    """
    norms = loaded.norms[rows] if metric == "angular" and cached_norms else None
    s, rows = _top(scores(metric, loaded.vectors[rows], query, norms), rows, k)
    return _hits(loaded, s, rows)


# Below this many rows a full scan costs about what the reduced one does; nor does
# it pay where the candidates re-ranked would be more than 1/RERANK_SHARE of the
# rows (measured on 1M Gaussian rows in 250 partitions: at recall_target 0.99, 800
# candidates a 4,000-row partition made a query 7x slower than one numpy scan).
REDUCED_MIN_ROWS = 1024
RERANK_SHARE = 8
# A query's pool re-ranks this many times `rerank_candidates` (within a share of the
# rows scanned): measured on 1M Gaussian rows, 48 partitions probed, 96 dimensions,
# recall@10 was 0.934 / 0.953 / 0.960 re-ranking 1 / 2 / 4 times 160 rows in all,
# and 0.961 re-ranking 160 of each partition (7,680 rows, and 40 % more time). A
# basis of 64 dimensions needs twice the candidates of one of 96 for about the same
# recall (`brainy.format.partitioning.basis_dimensions`).
POOLED = 8


def _worth_reducing(rows: int, k: int, recall_target: float) -> bool:
    """Whether an exact scan of `rows` rows for the best `k` at `recall_target` is
    faster in the reduced basis (see `REDUCED_MIN_ROWS`, `RERANK_SHARE`)."""
    return recall_target < 1.0 and rows > max(
        REDUCED_MIN_ROWS, RERANK_SHARE * rerank_candidates(k, recall_target)
    )


def rerank_candidates(k: int, recall_target: float) -> int:
    """Rows of a reduced scan re-ranked in full: more for a higher target (160 for
    the best 10 at 0.95, 800 at 0.99). Measured on 200k Gaussian draws shaped
    like the shared MiniLM vectors, 96 of 384 dimensions: the best 300 of the
    whole 200k held 0.99 of the true best 10; a partition holds far fewer rows."""
    return max(64, int(0.8 * k / (1.0 - min(recall_target, 0.995))))


def _reducible(
    seg: CachedSegment,
    basis: np.ndarray | None,
    allowed: np.ndarray | None,
    k: int,
    recall_target: float,
) -> np.ndarray | None:
    """The rows of a segment to be scanned exactly, projected on the collection's
    `basis`, where a scan in the basis pays (no filter, `_worth_reducing`) and the
    projection is ready; None: scan in full."""
    if basis is None or allowed is not None:
        return None
    if not _worth_reducing(seg.loaded.count, k, recall_target):
        return None
    return seg.reduced(basis, now=False)


class ReducedPool:
    """Scans in the collection's reduced basis, pooled over the segments of a query:
    each segment's rows projected on `basis` (a sixth of the bytes of a full scan)
    are scored against the query's projection, and only the best
    `rerank_candidates` of all of them (not of each segment) are scored exactly on
    their full vectors. A query probing tens of partitions re-ranks a few hundred
    rows in all rather than a few hundred a partition."""

    def __init__(
        self, metric: str, query: np.ndarray, basis: np.ndarray, k: int, recall_target: float
    ) -> None:
        self.metric, self.query, self.k = metric, query, k
        q = query / max(float(np.linalg.norm(query)), 1e-30) if metric == "angular" else query
        self.projected = q @ basis
        self.candidates = rerank_candidates(k, recall_target)
        self.segments: list[CachedSegment] = []
        self.approx: list[np.ndarray] = []

    def add(self, seg: CachedSegment, blocked: np.ndarray | None, approx: np.ndarray) -> None:
        """A segment's rows scored in the basis: `projected @ reduced` (a fresh
        array, which the pool keeps and changes)."""
        if self.metric == "euclidean":
            # -|x - q|² ranks as 2 x.q - |x|² does.
            approx = 2 * approx - seg.loaded.norms**2
        if blocked is not None:
            approx[blocked] = -np.inf
        self.segments.append(seg)
        self.approx.append(approx)

    def best(self) -> list[Scored]:
        """The pool's best `k`: its candidates scored exactly on their full vectors."""
        if not self.segments:
            return []
        approx = np.concatenate(self.approx) if len(self.approx) > 1 else self.approx[0]
        starts = np.cumsum([0] + [a.size for a in self.approx])
        share = min(POOLED * self.candidates, approx.size // RERANK_SHARE)
        take = min(approx.size, max(self.candidates, share))
        if take < approx.size:
            chosen = np.argpartition(approx, approx.size - take)[approx.size - take :]
        else:
            chosen = np.arange(take)
        chosen = np.sort(chosen[np.isfinite(approx[chosen])])
        if not chosen.size:
            return []
        owner = np.searchsorted(starts, chosen, side="right") - 1
        rows = chosen - starts[owner]
        exact = np.empty(chosen.size, dtype=np.float32)
        bounds = np.flatnonzero(np.diff(owner)) + 1
        for span in np.split(np.arange(chosen.size), bounds):
            loaded = self.segments[int(owner[span[0]])].loaded
            picked = rows[span]
            norms = loaded.norms[picked] if self.metric == "angular" else None
            exact[span] = scores(self.metric, loaded.vectors[picked], self.query, norms)
        top = _top(exact, np.arange(chosen.size), self.k)[1]
        return [
            (float(exact[i]), *_row(self.segments[int(owner[i])].loaded, int(rows[i])))
            for i in top.tolist()
        ]


def _pool_for(
    pools: dict[float, ReducedPool],
    schema: CollectionSchema,
    query: np.ndarray,
    basis: np.ndarray,
    k: int,
    recall_target: float,
) -> ReducedPool:
    """The query's pool at `recall_target` in `pools`, made on first use."""
    pool = pools.get(recall_target)
    if pool is None:
        pool = pools[recall_target] = ReducedPool(schema.metric, query, basis, k, recall_target)
    return pool


def _row(loaded: LoadedSegment, row: int) -> tuple[str, Any]:
    return loaded.header.ids[row], loaded.header.metadata[row]


def _approximate(
    loaded: LoadedSegment,
    schema: CollectionSchema,
    query: np.ndarray,
    k: int,
    blocked: np.ndarray | None,
    allowed: np.ndarray | None,
    calibrated: int | None = None,
    calibrated_k: int = 10,
) -> list[Scored]:
    """Annoy's best `k` usable rows, re-scored exactly. `search_k` is the
    calibrated one scaled by the rows fetched (it was measured for
    `calibrated_k` results, and a masked or filtered fraction of rows needs
    proportionally more), or `search_k_factor` × the rows fetched without one."""
    n = loaded.count
    assert loaded.index is not None
    # The rows a hit may come from: None when every row may.
    usable: np.ndarray | None = None if blocked is None else ~blocked
    if allowed is not None:
        only = np.zeros(n, dtype=bool)
        only[allowed] = True
        usable = only if usable is None else usable & only
    fraction = 1.0 if usable is None else max(int(usable.sum()) / n, 1e-3)
    fetch = min(n, max(k * 2, int((k * 1.5) / fraction) + 1))
    qlist = query.tolist()
    while True:
        if calibrated is None:
            search_k = fetch * schema.search_k_factor
        else:
            search_k = int(calibrated * max(1.0, fetch / (2 * calibrated_k)))
        found = np.asarray(
            loaded.index.get_nns_by_vector(qlist, fetch, search_k=search_k), dtype=np.int64
        )
        rows = found if usable is None else found[usable[found]]
        if rows.size >= k or fetch >= n:
            break
        fetch = min(n, fetch * 4)
    if rows.size == 0:
        return []
    return _rescore(loaded, schema.metric, query, rows, k, cached_norms=False)


def _in_thread(fn: Callable[[], T]) -> Future[T]:
    """`fn()` run on a thread of its own (not a pool's: it may wait on pools)."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as e:
            done.set_exception(e)

    threading.Thread(target=run, name="brainy-cold", daemon=True).start()
    return done


class Searcher:
    """Answers k-nearest-neighbour queries over everything committed to a store."""

    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        cache_bytes: int,
        refresh_interval: float,
        query_threads: int = 4,
        download_threads: int = 8,
        background_warm: bool = True,
        recall_sample: float = 0.0,
        on_recall_sample: Callable[[float], Any] | None = None,
        recall_budget: float = 1.0,
    ) -> None:
        """
        Args:
            recall_sample: the fraction of queries re-run exactly in the background
                to measure recall (see `RecallMonitor`); 0 measures none.
            on_recall_sample: called with each measured recall.
            recall_budget: the share of one core those re-runs may take.
        """
        self.store = store
        self.refresh_interval = refresh_interval
        self.cache = SegmentCache(
            store, cache_dir, cache_bytes, download_threads, project_on_scan=not background_warm
        )
        self.masks = Masks(store)
        self._views: dict[str, ManifestView] = {}
        self._views_lock = threading.Lock()
        self._threads = query_threads
        self._pool = ThreadPoolExecutor(query_threads, thread_name_prefix="brainy-query")
        self.vectors_served = 0
        # Centroids objects by key: immutable, so fetched once per process.
        self._centroids: dict[str, Centroids] = {}
        self._centroids_lock = threading.Lock()
        self._background = (
            BackgroundWarmer(lambda name: self.warm(name, parallel=False))
            if background_warm
            else None
        )
        self.recall = RecallMonitor(recall_sample, on_sample=on_recall_sample, budget=recall_budget)
        self.coalescer = Coalescer()
        # Segments not cached are read from their sketches only where something
        # downloads them behind (a background warm-up), and where a download is
        # a transfer (a folder's segments are read in place).
        self._sketches = (
            SketchSearch(store, self.masks.blocked, 2 * download_threads)
            if background_warm and store.scheme != "file"
            else None
        )

    def centroids(self, key: str) -> Centroids:
        """The centroids object at `key` (one GET per key per process)."""
        found = self._centroids.get(key)
        if found is None:
            with self._centroids_lock:
                found = self._centroids.get(key)
                if found is None:
                    found = self._centroids[key] = read_centroids(self.store, key)
        return found

    def view(self, collection: str) -> ManifestView:
        with self._views_lock:
            view = self._views.get(collection)
            if view is None:
                view = ManifestView(Manifests(self.store, collection), self.refresh_interval)
                self._views[collection] = view
            return view

    def refresh(self, collection: str, version: int) -> tuple[int, int]:
        """Serve `collection` at `version` or newer now, without waiting for the
        refresh interval (an index-updated event announced it); an older or the
        same version changes nothing.

        Returns:
            (the version served before, the version served now).
        """
        held, current = self.view(collection).refresh_to(version)
        return held, current.version if current is not None else 0

    def views(self) -> dict[str, ManifestView]:
        """The collections this searcher has served, each with its view."""
        with self._views_lock:
            return dict(self._views)

    def manifest(
        self, collection: str, min_version: int | None = None, timeout: float = 10.0
    ) -> Manifest | None:
        view = self.view(collection)
        if min_version:
            current = view.wait_for(min_version, timeout)
            if current is None or current.version < min_version:
                have = current.version if current else 0
                raise VersionNotVisible(
                    "min_version",
                    f"version {min_version} is not visible after {timeout:g}s (newest: {have})",
                )
            return current
        return view.current()

    def search(
        self,
        schema: CollectionSchema,
        query: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None = None,
        min_version: int | None = None,
        timeout: float = 10.0,
        recall_target: float = DEFAULT_RECALL_TARGET,
        at: Manifest | None = None,
    ) -> SearchResult:
        """The best `k` rows for `query`; each segment is searched as its
        calibration says for `recall_target` (1.0: every segment exactly).

        Args:
            at: search this manifest version (a retained one: time travel)
                instead of the newest.
        """
        manifest = at or self.manifest(schema.name, min_version, timeout)
        if manifest is None:
            return SearchResult([], 0)
        schema.check_compatible(manifest.schema)
        refs = [ref for ref in manifest.segments if ref.live > 0]
        query = np.asarray(query, dtype=np.float32)
        rest: list[SegmentRef] = []
        basis, large_target = None, recall_target
        if manifest.centroids is not None:
            centroids = self.centroids(manifest.centroids)
            basis = centroids.basis
            nprobe, large_target = probes(schema, centroids, refs, recall_target)
            probed = set(probed_partitions(centroids.matrix, query, schema.metric, nprobe).tolist())
            chosen: list[SegmentRef] = []
            for ref in refs:
                (chosen if ref.level == 0 or ref.partition in probed else rest).append(ref)
            refs = chosen
        refs, cold = self._split_cold(refs, schema, filters, recall_target)

        def search_cold() -> list[Scored]:
            work = [(ref, np.zeros(1, np.int64)) for ref in cold]
            args = (schema, query[None, :], k, recall_target, basis, large_target)
            return self._search_cold(work, *args)[0]

        pending = None
        if cold and not all(self.cache.cached(r) for r in refs):
            pending = _in_thread(search_cold)  # beside the downloads (unsketched segments)
        found = self._search_segments(
            refs, schema, query, k, filters, recall_target, basis, large_target
        )
        if cold:
            found += search_cold() if pending is None else pending.result()
        if len(found) < k and rest:
            found += self._search_segments(
                rest, schema, query, k, filters, recall_target, basis, large_target
            )
        elif self._background is not None and (
            cold or any(not self.cache.cached(r) for r in rest) or self._unprojected(refs, basis)
        ):
            # The next query may probe other partitions: fetch them now, behind
            # this answer, rather than in front of that one; and project those
            # scanned in full for want of their projection.
            self._background.request(schema.name, manifest.version)
        best = best_of(found, k)
        hits = [Hit(rid, score, metadata) for score, rid, metadata in best]
        self.vectors_served += len(hits)
        if self.recall.wanted() and self._local(manifest):
            answered = tuple(hit.id for hit in hits)
            self.recall.submit(
                RecallSample(lambda: self._exact_ids(manifest, schema, query, k, filters), answered)
            )
        # Those read from sketches, downloaded behind the answer, as a query that
        # waited for them would have left them.
        self.cache.prefetch(cold)
        return SearchResult(hits, manifest.version)

    def _split_cold(
        self,
        refs: list[SegmentRef],
        schema: CollectionSchema,
        filters: Mapping[str, Any] | None,
        recall_target: float,
    ) -> tuple[list[SegmentRef], list[SegmentRef]]:
        """`refs` split into those searched as usual and those searched from their
        sketches: not cached and sketched, for an unfiltered query below recall 1.0
        (an exact one reads every row in full; a filter reads the headers), where
        they come to `SKETCH_MIN_BYTES` (below it, downloading them whole costs
        about what the round trips of sketch, rows and headers do, and caches them).
        A segment searched through Annoy once cached is scanned from its sketch
        (more exact, not less)."""
        if self._sketches is None or filters or recall_target >= 1.0:
            return refs, []
        warm: list[SegmentRef] = []
        cold: list[SegmentRef] = []
        for ref in refs:
            (cold if ref.sketch is not None and not self.cache.cached(ref) else warm).append(ref)
        if sum(ref.bytes for ref in cold) < SKETCH_MIN_BYTES:
            return refs, []
        return warm, cold

    def _search_cold(
        self,
        cold: list[tuple[SegmentRef, np.ndarray]],
        schema: CollectionSchema,
        queries: np.ndarray,
        k: int,
        recall_target: float,
        basis: np.ndarray | None,
        large_target: float,
    ) -> list[list[Scored]]:
        """The best `k` of segments not cached for each query (see
        `_search_batch_segments`), from their sketches (the caller has them
        downloaded behind its answer, see `SegmentCache.prefetch`); downloaded
        first and searched whole if a sketch fails its check (the segment's own
        digest then says whether the object or the read was bad)."""
        assert self._sketches is not None
        try:
            return self._sketches.search_batch(cold, schema.metric, queries, k, recall_target)
        except CorruptSketch as e:
            log.warning("searching whole segments instead of their sketches: %s", e)
            return self._search_batch_segments(
                cold, len(queries), schema, queries, k, None, recall_target, basis, large_target
            )

    def search_shared(
        self,
        schema: CollectionSchema,
        query: np.ndarray,
        k: int,
        recall_target: float = DEFAULT_RECALL_TARGET,
    ) -> SearchResult:
        """`search` of an unfiltered query at the newest version, sharing its work
        with the concurrent ones of the same collection, `k` and target (see
        `brainy.read.coalesce`): the same answer."""
        return self.coalescer.search(
            (schema, k, recall_target),
            np.asarray(query, dtype=np.float32),
            lambda q: self.search(schema, q, k, recall_target=recall_target),
            lambda m: self.search_batch(schema, m, k, recall_target=recall_target),
        )

    def search_batch(
        self,
        schema: CollectionSchema,
        queries: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None = None,
        min_version: int | None = None,
        timeout: float = 10.0,
        recall_target: float = DEFAULT_RECALL_TARGET,
        at: Manifest | None = None,
    ) -> list[SearchResult]:
        """`search` for every row of `queries` (a matrix, a query a row), the same
        hits, at one manifest version: each segment is fetched once and, where it
        is scanned exactly, scanned once for every query that searches it (see
        `search_segment_batch`)."""
        manifest = at or self.manifest(schema.name, min_version, timeout)
        queries = np.asarray(queries, dtype=np.float32)
        m = len(queries)
        if manifest is None:
            return [SearchResult([], 0) for _ in range(m)]
        schema.check_compatible(manifest.schema)
        refs = [ref for ref in manifest.segments if ref.live > 0]
        everyone = np.arange(m)
        basis, large_target = None, recall_target
        # Which queries search which segment: all of them, unless partitions prune.
        wanted: list[tuple[SegmentRef, np.ndarray]] = [(ref, everyone) for ref in refs]
        rest: list[list[SegmentRef]] = [[] for _ in range(m)]
        if manifest.centroids is not None and m:
            centroids = self.centroids(manifest.centroids)
            basis = centroids.basis
            nprobe, large_target = probes(schema, centroids, refs, recall_target)
            scored = centroid_scores(queries, centroids.matrix, schema.metric)
            nprobe = min(nprobe, scored.shape[1])
            probed = np.zeros(scored.shape, dtype=bool)
            top = np.argpartition(-scored, nprobe - 1, axis=1)[:, :nprobe]
            np.put_along_axis(probed, top, True, axis=1)
            wanted = []
            for ref in refs:
                if ref.level == 0:
                    wanted.append((ref, everyone))
                    continue
                who = np.flatnonzero(probed[:, ref.partition])
                if who.size:
                    wanted.append((ref, who))
                for q in np.flatnonzero(~probed[:, ref.partition]).tolist():
                    rest[q].append(ref)
        cold = self._split_cold([ref for ref, _ in wanted], schema, filters, recall_target)[1]
        if cold and m:
            sketched = {ref.id for ref in cold}
            found = self._search_cold(
                [item for item in wanted if item[0].id in sketched],
                schema, queries, k, recall_target, basis, large_target,
            )  # fmt: skip
            wanted = [item for item in wanted if item[0].id not in sketched]
        else:
            found = [[] for _ in range(m)]
        for q, hits in enumerate(
            self._search_batch_segments(
                wanted, m, schema, queries, k, filters, recall_target, basis, large_target
            )
        ):
            found[q] += hits
        results = []
        for q in range(m):
            if len(found[q]) < k and rest[q]:
                # As `search`: a probe short of `k` hits searches the other partitions.
                found[q] += self._search_segments(
                    rest[q], schema, queries[q], k, filters, recall_target, basis, large_target
                )
            best = best_of(found[q], k)
            results.append(
                SearchResult([Hit(rid, sc, meta) for sc, rid, meta in best], manifest.version)
            )
        self.vectors_served += sum(len(r.hits) for r in results)
        self.cache.prefetch(cold)  # as `search` does
        return results

    def _search_batch_segments(
        self,
        wanted: list[tuple[SegmentRef, np.ndarray]],
        m: int,
        schema: CollectionSchema,
        queries: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None,
        recall_target: float,
        basis: np.ndarray | None,
        large_target: float | None = None,
    ) -> list[list[Scored]]:
        """The best `k` of each segment for each query that searches it, segments
        dealt to the query threads as `_search_segments` deals them (and searched
        at the target it gives them)."""
        segments = self.cache.get_many([ref for ref, _ in wanted])
        work = [(seg, ref, who) for seg, (ref, who) in zip(segments, wanted, strict=True)]
        tasks = self._tasks([ref for ref, _ in wanted], schema)

        def run(share: list[tuple[CachedSegment, SegmentRef, np.ndarray]]) -> list[list[Scored]]:
            found: list[list[Scored]] = [[] for _ in range(m)]
            pools: list[dict[float, ReducedPool]] = [{} for _ in range(m)]
            for seg, ref, who in share:
                blocked = self.masks.blocked(ref)
                target = _target(ref, schema, recall_target, large_target)
                hits = search_segment_batch(
                    seg, blocked, schema, queries[who], k, filters, target, basis,
                    [pools[q] for q in who.tolist()],
                )  # fmt: skip
                for q, scored in zip(who.tolist(), hits, strict=True):
                    found[q] += scored
            for q in range(m):
                for pool in pools[q].values():
                    found[q] += pool.best()
            return [best_of(f, k) for f in found]

        if tasks == 1:
            return run(work)
        parts = list(self._pool.map(run, [work[i::tasks] for i in range(tasks)]))
        return [[item for part in parts for item in part[q]] for q in range(m)]

    def _tasks(self, refs: list[SegmentRef], schema: CollectionSchema) -> int:
        """The query threads a search of `refs` is dealt to (see `_search_segments`):
        up to `query_threads` where most of them are past `exact_threshold`, else
        one, the caller's."""
        heavy = sum(ref.count > schema.exact_threshold for ref in refs)
        return min(self._threads, len(refs)) if 2 * heavy > len(refs) else 1

    def _unprojected(self, refs: list[SegmentRef], basis: np.ndarray | None) -> bool:
        """Whether a segment of `refs` was scanned in full for want of its
        projection on `basis` (see `CachedSegment.reduced`)."""
        if basis is None:
            return False
        for ref in refs:
            seg = self.cache.peek(ref)
            if seg is not None and seg.unprojected(basis):
                return True
        return False

    def _local(self, manifest: Manifest) -> bool:
        """Whether every live segment of `manifest` and its mask are held here: a
        recall sample is measured only then, so it never downloads (nor evicts
        what queries use); a collection queries have not loaded is sampled once
        warm."""
        return all(
            self.cache.cached(ref) and self.masks.known(ref)
            for ref in manifest.segments
            if ref.live > 0
        )

    def _exact_ids(
        self,
        manifest: Manifest,
        schema: CollectionSchema,
        query: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None,
    ) -> list[str]:
        """The exact best `k` ids at `manifest`: every live segment (no pruning)
        searched exactly, one at a time, on the caller's thread (the recall
        monitor's), so it never takes a query thread; nothing if a segment has
        left the cache since the query."""
        if not self._local(manifest):
            return []
        found: list[Scored] = []
        for ref in manifest.segments:
            if ref.live > 0:
                (seg,) = self.cache.get_many([ref])
                blocked = self.masks.blocked(ref)
                found += search_segment(seg, blocked, schema, query, k, filters, 1.0)
        best = best_of(found, k)
        return [rid for _, rid, _ in best]

    def warm(self, collection: str, *, parallel: bool = True) -> WarmReport:
        """Load the newest manifest's live segments (level-0 first: every query
        searches them), their deletion files and the centroids into the cache,
        within its budget.

        Args:
            parallel: download in parallel (an explicit warm-up), or one segment
                at a time (in the background, beside queries).

        Raises:
            StorageError: the manifest or an object could not be read.
            CorruptSegment: a segment fails its checksum.
        """
        started = time.perf_counter()
        manifest = self.manifest(collection)
        if manifest is None:
            return WarmReport(collection, 0, 0, 0, 0, 0, 0, time.perf_counter() - started)
        if manifest.centroids is not None:
            self.centroids(manifest.centroids)
        refs = sorted((ref for ref in manifest.segments if ref.live > 0), key=lambda r: r.level > 0)
        warmed = self.cache.warm(refs, parallel=parallel)
        skipped = set(warmed.skipped)
        centroids = self.centroids(manifest.centroids) if manifest.centroids else None
        basis = centroids.basis if centroids is not None else None
        schema = CollectionSchema.from_dict(collection, manifest.schema)
        large = probes(schema, centroids, refs, DEFAULT_RECALL_TARGET)[1] if centroids else None
        for ref in refs:
            if ref.id not in skipped:
                self.masks.blocked(ref)
                seg = self.cache.get_many([ref])[0] if basis is not None else None
                target = _target(ref, schema, DEFAULT_RECALL_TARGET, large)
                if seg is not None and scans_reduced(seg.loaded, schema, target):
                    # Warmed for queries: the projection too (see CachedSegment.reduced).
                    seg.reduced(basis)
        return WarmReport(
            collection,
            manifest.version,
            len(refs),
            warmed.loaded,
            warmed.bytes,
            warmed.cached,
            len(skipped),
            time.perf_counter() - started,
        )

    def _search_segments(
        self,
        refs: list[SegmentRef],
        schema: CollectionSchema,
        query: np.ndarray,
        k: int,
        filters: Mapping[str, Any] | None,
        recall_target: float,
        basis: np.ndarray | None = None,
        large_target: float | None = None,
    ) -> list[Scored]:
        """The best `k` of each segment, in parallel, downloading those not cached;
        a segment past `exact_threshold` at `large_target` (see `probes`), the
        others at `recall_target`.

        A query searching mostly segments past `exact_threshold` (searched through
        Annoy, or long scans) deals them to at most `query_threads` tasks, each
        searching its share one after another and keeping its best `k`. A query
        searching mostly small segments (a semantic search probes tens to hundreds
        of partitions, each a fraction of a millisecond) searches them all on the
        caller's thread, their scans pooled (see `ReducedPool`): spread over
        threads, or beside a large segment's search on another, they queue on the
        interpreter's lock (measured on 1M Gaussian rows, 77 partitions probed, 4
        of them past the threshold: 15 ms p50 on one thread, 20-40 ms with the 4
        on others).
        """
        segments = self.cache.get_many(refs)
        pairs = list(zip(segments, refs, strict=True))
        tasks = self._tasks(refs, schema)

        def run(share: list[tuple[CachedSegment, SegmentRef]]) -> list[Scored]:
            found: list[Scored] = []
            pools: dict[float, ReducedPool] = {}
            for seg, ref in share:
                blocked = self.masks.blocked(ref)
                target = _target(ref, schema, recall_target, large_target)
                found += search_segment(
                    seg, blocked, schema, query, k, filters, target, basis, pools
                )
            for pool in pools.values():
                found += pool.best()
            return best_of(found, k)

        if tasks == 1:
            return run(pairs)
        parts = self._pool.map(run, [pairs[i::tasks] for i in range(tasks)])
        return [item for part in parts for item in part]

    def close(self) -> None:
        self.recall.close()
        if self._sketches is not None:
            self._sketches.close()
        if self._background is not None:
            self._background.close()
        self._pool.shutdown(wait=False)
        self.cache.close()
