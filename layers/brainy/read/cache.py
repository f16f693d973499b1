"""The segment cache of the search path (DESIGN §9): segments on local disk, bounded
by bytes, least recently used evicted, downloads shared and run in parallel."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainy.format.segment import LoadedSegment, load_segment
from brainy.read.filters import FilterIndex
from brainy.storage import ObjectStore
from brainy.table.manifest import SegmentRef


class CachedSegment:
    """A loaded segment and the filter index built over its metadata."""

    def __init__(self, loaded: LoadedSegment, project_on_scan: bool = True) -> None:
        self.loaded = loaded
        self.filters = FilterIndex(loaded.header.metadata)
        self._reduced: tuple[np.ndarray, np.ndarray] | None = None
        self._scans = 0
        self._project_on_scan = project_on_scan
        self._lock = threading.Lock()

    def reduced(self, basis: np.ndarray, *, now: bool = True) -> np.ndarray | None:
        """The rows projected on the collection's `basis` (angular rows unit length
        first, as they are scored), kept beside the segment (a sixth of its
        vectors' bytes), transposed: r x rows, a dimension a row, which a
        query's product reads a third faster than a row a row (measured: 4,000
        rows in 96 dimensions, 0.106 against 0.159 ms on one core).

        Computed at once with `now` (a warm-up), else not on a query's path: a
        projection costs about ten full scans of the segment. A scan that finds it
        missing scans in full and, where a background warm-up computes it (see
        `unprojected`), leaves it to that; without one, the second scan that asks
        computes it, so a cold query, which touches each of its segments once,
        leaves the projection to the segments that are searched again.
        """
        found = self._reduced
        if found is not None and found[0] is basis:
            return found[1]
        with self._lock:
            found = self._reduced
            if found is not None and found[0] is basis:
                return found[1]
            self._scans += 1
            if not now and (self._scans < 2 or not self._project_on_scan):
                return None
            loaded = self.loaded
            rows = loaded.vectors
            if loaded.header.metric == "angular":
                rows = rows / np.maximum(loaded.norms, 1e-30)[:, None]
            self._reduced = (basis, np.ascontiguousarray((rows @ basis).T))
            return self._reduced[1]

    def unprojected(self, basis: np.ndarray) -> bool:
        """Whether a scan asked for the projection on `basis` and found none."""
        found = self._reduced
        return self._scans > 0 and (found is None or found[0] is not basis)


@dataclass
class Warmed:
    """What one warm-up did to the cache.

    Attributes:
        loaded: segments loaded now (downloaded, or found on disk from an
            earlier process).
        bytes: their size on local disk.
        cached: segments that were in the cache already.
        skipped: segments left out because they did not fit in the budget.
    """

    loaded: int = 0
    bytes: int = 0
    cached: int = 0
    skipped: list[str] = field(default_factory=list)


class SegmentCache:
    """Segments on local disk, bounded by bytes, least recently used evicted.

    Concurrent requests for one segment share one download; downloads of
    different segments run in parallel.

    An evicted segment's files are unlinked at once, even while other queries
    still search it: a `LoadedSegment` maps its file when it is opened and never
    opens it by name again, and a mapping outlives the name. Its disk space comes
    back when the last query drops it. Files are unlinked under the lock, and a
    download of the same segment can only start under that lock once its entry
    is gone, so an unlink never removes a file a new download has just written.

    Args:
        store: where segments are downloaded from.
        cache_dir: the folder holding each segment's object (`<id>.seg`, read in
            place), or its `<id>.ann` and `<id>.json` (read split).
        max_bytes: the budget; a lookup may exceed it by the segments it needs.
        threads: parallel downloads.
    """

    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        max_bytes: int,
        threads: int,
        project_on_scan: bool = True,
    ) -> None:
        """
        Args:
            project_on_scan: a segment's second scan computes its projection (see
                `CachedSegment.reduced`); False leaves it to a warm-up.
        """
        self.store = store
        self.project_on_scan = project_on_scan
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedSegment] = OrderedDict()
        # The sum of the entries' sizes, kept as they come and go, so a lookup
        # within budget costs nothing however many segments are cached.
        self._bytes = 0
        self._inflight: dict[str, Future[CachedSegment]] = {}
        # Downloads a warm-up started, by id: their bytes count against the budget
        # before they land.
        self._planned: dict[str, SegmentRef] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="brainy-download")
        self.hits = 0
        self.misses = 0

    def get_many(self, refs: list[SegmentRef]) -> list[CachedSegment]:
        """The segments `refs` name, downloading (in parallel) those not cached.

        Raises:
            StorageError: a download failed.
            CorruptSegment: a segment fails its checksum.
        """
        found: list[CachedSegment | Future[CachedSegment]] = []
        missed = False
        with self._lock:
            for ref in refs:
                entry = self._entries.get(ref.id)
                if entry is not None:
                    self._entries.move_to_end(ref.id)
                    self.hits += 1
                    found.append(entry)
                    continue
                self.misses += 1
                missed = True
                fut = self._inflight.get(ref.id)
                if fut is None:
                    fut = self._pool.submit(self._load, ref)
                    self._inflight[ref.id] = fut
                found.append(fut)
        result = [f.result() if isinstance(f, Future) else f for f in found]
        if missed:  # what landed may push others out (all cached: nothing did)
            self._evict(keep={ref.id for ref in refs})
        return result

    def prefetch(self, refs: list[SegmentRef]) -> None:
        """Load the segments `refs` name that are neither cached nor on their way,
        without waiting: what a query searched without them (from their sketches)
        lands as `get_many` would have made it land, pushing others out. Errors
        are left to the next lookup, which downloads again."""
        keep = {ref.id for ref in refs}
        with self._lock:
            for ref in refs:
                if ref.id in self._entries or ref.id in self._inflight:
                    continue
                fut = self._pool.submit(self._load, ref)
                self._inflight[ref.id] = fut
                # Not done yet (its load ends under this lock), so the callback runs
                # on the download thread, not here under the lock it takes.
                fut.add_done_callback(lambda _: self._evict(keep))

    def cached(self, ref: SegmentRef) -> bool:
        return ref.id in self._entries

    def peek(self, ref: SegmentRef) -> CachedSegment | None:
        """The cached segment `ref` names, if any, without counting a hit."""
        return self._entries.get(ref.id)

    def warm(self, refs: list[SegmentRef], *, parallel: bool = True) -> Warmed:
        """Load the segments `refs` name that are not cached, in their order, as
        long as each fits in the budget beside what is cached: a warm-up never
        evicts (what queries use outranks what might be), it stops short instead.

        Args:
            parallel: download in parallel; otherwise one at a time, so that a
                background warm-up holds at most one download thread and the
                queries' downloads never queue behind a whole collection.

        Raises:
            StorageError: a download failed.
            CorruptSegment: a segment fails its checksum.
        """
        warmed = Warmed()
        pending: list[Future[CachedSegment]] = []
        for ref in refs:
            with self._lock:
                if ref.id in self._entries:
                    warmed.cached += 1
                    continue
                fut = self._inflight.get(ref.id)
                if fut is None:
                    # What is being downloaded lands in the cache too: count it.
                    planned = self._bytes + sum(r.bytes for r in self._planned.values())
                    if planned + ref.bytes > self.max_bytes:
                        warmed.skipped.append(ref.id)
                        continue
                    self._planned[ref.id] = ref
                    fut = self._pool.submit(self._load, ref)
                    self._inflight[ref.id] = fut
            if parallel:
                pending.append(fut)
            else:
                self._count(warmed, fut.result())
        for fut in pending:
            self._count(warmed, fut.result())
        return warmed

    @staticmethod
    def _count(warmed: Warmed, entry: CachedSegment) -> None:
        warmed.loaded += 1
        warmed.bytes += entry.loaded.size

    def _load(self, ref: SegmentRef) -> CachedSegment:
        try:
            entry = CachedSegment(
                load_segment(self.store, ref.key, ref.id, self.cache_dir, in_place=True),
                self.project_on_scan,
            )
            with self._lock:
                old = self._entries.pop(ref.id, None)
                if old is not None:
                    self._bytes -= old.loaded.size
                self._entries[ref.id] = entry
                self._bytes += entry.loaded.size
            # A segment's header (ids, metadata, filter index) lives as long as the
            # segment is cached: out of the cyclic collector's sight, which would
            # otherwise walk every cached row now and then (measured on 1M rows:
            # a 50 ms pause every ~200 queries, p99 73 ms against 27 ms frozen).
            gc.freeze()
            return entry
        finally:
            with self._lock:
                self._inflight.pop(ref.id, None)
                self._planned.pop(ref.id, None)

    def _evict(self, keep: set[str]) -> None:
        with self._lock:
            excess = self._bytes - self.max_bytes
            victims: list[str] = []
            # Least recently used first; what a lookup keeps sits at the other end.
            for sid, entry in self._entries.items():
                if excess <= 0:
                    break
                if sid not in keep:
                    victims.append(sid)
                    excess -= entry.loaded.size
            for sid in victims:
                self._bytes -= self._entries.pop(sid).loaded.size
                for suffix in (".ann", ".json", ".seg"):
                    (self.cache_dir / f"{sid}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
