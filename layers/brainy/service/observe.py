"""What `/metrics` and `/health` say about the collections an instance holds.

Everything here is computed from state the instance already has — the manifests
it serves or last committed, the index lag its last sweep measured, its segment
cache — so a scrape sends no request to the store. Only the health check's
partition access spends requests, a bounded number of HEADs per collection.

Why the index lag comes from sweeps: the age of the oldest batch not yet applied
is only known by listing `wal/`, and a listing per scrape would cost a request per
thousand batches, every 15 seconds, on every instance. The sweeper (the compactor's
pass, `brainy compact`) lists `wal/` anyway and learns which batches were still
unapplied; it records the lag it found with the time it measured it, and the
gauge carries both, so a dashboard sees how old the figure is. Events cannot
replace it: a lost event is exactly the lag the gauge must show, and nothing
arrives for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from brainy.storage import NotFound, ObjectStore, StorageError
from brainy.table.manifest import Manifest, ManifestView, SegmentRef

# Live vectors per partition: the buckets of `brainy_partition_vectors`.
PARTITION_BUCKETS = (100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)
# HEAD requests `/health` may send per collection to check its segments are readable.
HEALTH_PROBES = 2


@dataclass(frozen=True)
class Held:
    """A collection as this instance holds it.

    Attributes:
        manifest: the version it serves (a search instance) or last committed or
            read (a writer).
        newest: the newest version it has heard of (from `_latest`, an event, its
            own commit); `newest - manifest.version` is its consistency lag.
        checked_age: seconds since it last asked the store for a newer version.
    """

    manifest: Manifest
    newest: int
    checked_age: float


def held_collections(
    written: Iterable[Mapping[str, Manifest]], views: Mapping[str, ManifestView]
) -> dict[str, Held]:
    """What an instance holds, by collection: the newest of the manifests it
    committed or read (`written`), unless it serves one through a view (search).

    Args:
        written: manifests by collection, as writers keep them; a writer heard of
            no newer version than its own, and last confirmed it when it read or
            committed it (`Manifest.confirmed`).
        views: a search instance's views of the collections it has served.
    """
    clock = time.monotonic()
    held: dict[str, Held] = {}
    for manifests in written:
        for name, manifest in manifests.items():
            if name not in held or held[name].manifest.version < manifest.version:
                held[name] = Held(manifest, manifest.version, clock - manifest.confirmed)
    for name, view in views.items():
        current, newest, age = view.state()
        if current is not None:
            held[name] = Held(current, newest, age)
    return held


class IndexLag:
    """The index lag of each collection, as the last sweep of it measured."""

    def __init__(self) -> None:
        self._lag: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def record(self, collection: str, lag: float, measured_at: float) -> None:
        """`lag`: seconds the oldest unapplied batch had waited at `measured_at`
        (epoch seconds, when the listing began)."""
        with self._lock:
            known = self._lag.get(collection)
            if known is None or known[1] <= measured_at:
                self._lag[collection] = (lag, measured_at)

    def snapshot(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            return dict(self._lag)


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["collection"])


class CollectionsCollector(Collector):
    """The per-collection series of `/metrics`, computed at each scrape."""

    def __init__(self, held: Callable[[], Mapping[str, Held]], index_lag: IndexLag) -> None:
        self.held = held
        self.index_lag = index_lag

    def collect(self) -> Iterator[Metric]:
        version = _gauge(
            "brainy_manifest_version",
            "Manifest version this instance serves (search) or last committed or read"
            " (writers); max over instances minus this is the cross-instance lag",
        )
        lag = _gauge(
            "brainy_consistency_lag_versions",
            "Newest version this instance has heard was committed minus the version it serves",
        )
        age = _gauge(
            "brainy_manifest_checked_age_seconds",
            "Seconds since this instance last asked the store for a newer version",
        )
        vectors = _gauge("brainy_collection_vectors", "Live vectors in the held version")
        size = _gauge("brainy_collection_bytes", "Bytes of the held version's segments")
        segments = _gauge("brainy_collection_segments", "Segments of the held version")
        partitions = _gauge(
            "brainy_partitions", "Partitions holding compacted segments in the held version"
        )
        distribution = GaugeHistogramMetricFamily(
            "brainy_partition_vectors",
            "Live vectors per partition in the held version (unrouted level-0 segments"
            " not counted)",
            labels=["collection"],
        )
        for name, held in sorted(self.held().items()):
            m = held.manifest
            version.add_metric([name], m.version)
            lag.add_metric([name], max(0, held.newest - m.version))
            age.add_metric([name], held.checked_age)
            vectors.add_metric([name], m.live)
            size.add_metric([name], m.bytes)
            segments.add_metric([name], len(m.segments))
            sizes = partition_sizes(m.segments)
            partitions.add_metric([name], len(sizes))
            distribution.add_metric(
                [name], _buckets(sizes.values()), gsum_value=sum(sizes.values())
            )
        yield from (version, lag, age, vectors, size, segments, partitions, distribution)
        lag_seconds = _gauge(
            "brainy_index_lag_seconds",
            "Age of the oldest batch not yet applied, when last measured (by a sweep:"
            " the compactor's pass)",
        )
        measured = _gauge(
            "brainy_index_lag_measured_timestamp_seconds",
            "When brainy_index_lag_seconds was measured (epoch seconds)",
        )
        for name, (seconds, at) in sorted(self.index_lag.snapshot().items()):
            lag_seconds.add_metric([name], seconds)
            measured.add_metric([name], at)
        yield from (lag_seconds, measured)


def partition_sizes(segments: tuple[SegmentRef, ...]) -> dict[int, int]:
    """Live vectors per partition, of the segments routed to one."""
    sizes: dict[int, int] = {}
    for ref in segments:
        if ref.level > 0 and ref.partition is not None:
            sizes[ref.partition] = sizes.get(ref.partition, 0) + ref.live
    return sizes


def _buckets(values: Any) -> list[tuple[str, float]]:
    values = list(values)
    out = [(str(b), float(sum(v <= b for v in values))) for b in PARTITION_BUCKETS]
    return [*out, ("+Inf", float(len(values)))]


class PartitionAccess:
    """Checks that an instance can read the segments of the collections it serves,
    at a bounded cost: a segment in the local cache is readable (it was verified
    when it came); of the others, `probes` per collection are HEAD-requested, the
    next ones at the next check, so repeated checks cover every segment in turn.
    """

    def __init__(
        self,
        store: ObjectStore,
        cached: Callable[[SegmentRef], bool],
        probes: int = HEALTH_PROBES,
    ) -> None:
        self.store = store
        self.cached = cached
        self.probes = probes
        self._round: dict[str, int] = {}

    def check(self, manifests: Mapping[str, Manifest]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, manifest in sorted(manifests.items()):
            out[name] = self._collection(name, manifest)
        return {"ok": all(c["ok"] for c in out.values()), **out}

    def _collection(self, name: str, manifest: Manifest) -> dict[str, Any]:
        cached = [ref for ref in manifest.segments if self.cached(ref)]
        remote = sorted(
            (ref for ref in manifest.segments if not self.cached(ref)), key=lambda r: r.key
        )
        start = self._round.get(name, 0)
        chosen = [remote[(start + i) % len(remote)] for i in range(min(self.probes, len(remote)))]
        self._round[name] = start + len(chosen)
        unreadable = []
        for ref in chosen:
            try:
                self.store.head(ref.key)
            except NotFound:
                unreadable.append({"key": ref.key, "error": "not found"})
            except StorageError as e:
                unreadable.append({"key": ref.key, "error": f"{type(e).__name__}: {e}"})
        return {
            "ok": not unreadable,
            "version": manifest.version,
            "segments": len(manifest.segments),
            "cached": len(cached),
            "probed": len(chosen),
            "unreadable": unreadable,
        }
