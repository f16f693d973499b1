"""Firehose benchmark (issue 6 §1): does the table format last under a firehose?

Writers ingest small batches (re-upserts and ~30% deletes of ids that exist) into
one collection on a local-folder store; every batch's object-created event reaches
one of several indexers — duplicated, reordered, some late — through
`Brainy.index_key`, the code an event reaches; a compactor runs its periodic
`maintain` pass every N commits, as a scheduler would. Measured:

* the newest manifest version's size over the run, against the bound the issue
  sets (1 KB per segment + 16 KB), and whether it grows with commits;
* what each commit writes: manifest versions (at most one), objects and bytes by
  prefix under the collection, requests by kind;
* at the end, the live set read back through search against an independent
  last-writer-wins model of every batch, and a deep `verify`.

Only the public API is used (Brainy, Manifests.latest/key, the store's
observer, Batch.decode, verify), so the same harness runs unchanged against a new
manifest format. The one place that reads records back is `live_ids`.

Run: `python -m bench.firehose [--commits N] ...`; figures go to
`bench/results/firehose.json`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.format.batch import UPSERT, Batch
from brainy.maintenance.verify import verify
from brainy.service.app import Brainy
from brainy.storage import ObjectStore, open_store
from brainy.table.manifest import Manifests

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "firehose"

# Settings a run may override, as `BRAINY_<NAME>` variables; unset, each keeps the
# product default (retention 1 h, gc_grace 1 h, batch_retention 7 d, tombstone_grace
# 1 d), so by default GC deletes nothing within a run of minutes.
RETENTION_SETTINGS = ("retention", "gc_grace", "batch_retention", "tombstone_grace")
REPORTED_SETTINGS = (*RETENTION_SETTINGS, "compact_min_segments", "max_segments_per_partition")


@dataclass(frozen=True)
class FirehoseConfig:
    """One simulated firehose. `commits` counts batches ingested (each one commit)."""

    commits: int = 20_000
    writers: int = 2
    indexers: int = 2
    ids: int = 3_000
    dimension: int = 16
    partitions: int = 4
    batch_min: int = 5
    batch_max: int = 20
    delete_share: float = 0.3
    duplicate_rate: float = 0.1
    late_rate: float = 0.05
    late_min: int = 10
    late_max: int = 200
    window: int = 8
    compact_every: int = 200
    samples: int = 20
    seed: int = 0
    # Overrides of RETENTION_SETTINGS, e.g. {"retention": "30s"}.
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_min <= self.batch_max:
            raise ValueError("batch sizes: expected 1 <= batch_min <= batch_max")
        if self.ids > 100_000:
            raise ValueError("ids: at most 100,000 (the live set is read back with k = ids)")
        unknown = set(self.settings) - set(RETENTION_SETTINGS)
        if unknown:
            raise ValueError(f"settings: unknown {sorted(unknown)} (known: {RETENTION_SETTINGS})")


# ------------------------------------------------------------------ measuring


@dataclass
class Usage:
    """What one store did between two readings: requests by kind, objects written
    (key, bytes) and keys deleted."""

    requests: Counter[str] = field(default_factory=Counter)
    written: list[tuple[str, int]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class Meter:
    """Counts one store object's requests (its observer hook) and records the objects
    it writes and deletes, whatever their keys: the format's layout is not assumed.

    Writes are seen by shadowing the store's public `put`, `upload` and `delete`
    on this one instance, so every component holding the store is measured and no
    other store is touched.
    """

    def __init__(self, store: ObjectStore) -> None:
        self._lock = threading.Lock()  # compaction writes from several threads
        self._usage = Usage()
        store.add_observer(self._count)
        put, upload, delete = store.put, store.upload, store.delete

        def tapped_put(key: str, data: bytes, **kw: Any) -> str:
            etag = put(key, data, **kw)
            self._wrote(key, len(data))
            return etag

        def tapped_upload(key: str, path: Path, **kw: Any) -> str:
            etag = upload(key, path, **kw)
            self._wrote(key, Path(path).stat().st_size)
            return etag

        def tapped_delete(key: str, **kw: Any) -> None:
            delete(key, **kw)
            with self._lock:
                self._usage.deleted.append(key)

        store.put = tapped_put  # type: ignore[method-assign]
        store.upload = tapped_upload  # type: ignore[method-assign]
        store.delete = tapped_delete  # type: ignore[method-assign]

    def _count(self, kind: str) -> None:
        with self._lock:
            self._usage.requests[kind] += 1

    def _wrote(self, key: str, size: int) -> None:
        with self._lock:
            self._usage.written.append((key, size))

    def take(self) -> Usage:
        """What happened since the last `take`."""
        with self._lock:
            usage, self._usage = self._usage, Usage()
        return usage


def area(collection: str, key: str) -> str:
    """The top-level folder a key lies in under its collection (`segments/`,
    `manifests/`, ...), or under the bucket for shared objects (`_brainy/locks/`)."""
    head = f"{collection}/"
    parts = (key[len(head) :] if key.startswith(head) else key).split("/")
    if not key.startswith(head) and len(parts) > 2:
        return f"{parts[0]}/{parts[1]}/"
    return f"{parts[0]}/" if len(parts) > 1 else parts[0]


_NUMBER = re.compile(r"\d+")


def is_manifest_version(manifests: Manifests, key: str) -> bool:
    """Whether `key` is a manifest version object (not a hint or a side object):
    recognised through `Manifests.key` itself, whatever the naming scheme."""
    name = key.rsplit("/", 1)[-1]
    return any(manifests.key(int(n)) == key for n in _NUMBER.findall(name))


def summary(values: Iterable[float]) -> dict[str, float]:
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    p50, p99 = np.percentile(arr, [50, 99])
    figures = {"mean": arr.mean(), "p50": p50, "p99": p99, "max": arr.max()}
    return {"n": int(arr.size), **{k: round(float(v), 4) for k, v in figures.items()}}


@dataclass
class WriteCost:
    """What one delivery, ingest or maintenance pass wrote and asked for."""

    manifests: int
    objects: dict[str, int]  # by area
    bytes: dict[str, int]  # by area
    deleted: dict[str, int]  # by area
    requests: dict[str, int]  # by kind

    @classmethod
    def of(cls, usage: Usage, collection: str, manifests: Manifests) -> WriteCost:
        objects: Counter[str] = Counter()
        size: Counter[str] = Counter()
        for key, n in usage.written:
            objects[area(collection, key)] += 1
            size[area(collection, key)] += n
        return cls(
            manifests=sum(is_manifest_version(manifests, key) for key, _ in usage.written),
            objects=dict(objects),
            bytes=dict(size),
            deleted=dict(Counter(area(collection, key) for key in usage.deleted)),
            requests=dict(usage.requests),
        )

    @property
    def total_objects(self) -> int:
        return sum(self.objects.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def cost_figures(costs: list[WriteCost]) -> dict[str, Any]:
    """Mean/p50/p99/max of objects and bytes (in all and by area) and requests by
    kind over a list of costs."""
    areas = sorted({a for c in costs for a in c.objects})
    kinds = sorted({k for c in costs for k in c.requests})
    return {
        "count": len(costs),
        "manifests_written": summary(c.manifests for c in costs),
        "objects": summary(c.total_objects for c in costs),
        "bytes": summary(c.total_bytes for c in costs),
        "by_prefix": {
            a: {
                "objects": summary(c.objects.get(a, 0) for c in costs),
                "bytes": summary(c.bytes.get(a, 0) for c in costs),
            }
            for a in areas
        },
        "requests": {k: summary(c.requests.get(k, 0) for c in costs) for k in kinds},
        "requests_total": summary(sum(c.requests.values()) for c in costs),
    }


# ------------------------------------------------- reading the collection back


def manifest_figures(store: ObjectStore, collection: str) -> tuple[int, int, int]:
    """(version, bytes of its manifest object, segments) of the newest version.

    Reads through `Manifests.latest`, `Manifests.key` and the version's list of
    segments only, which any manifest format keeps.
    """
    manifests = Manifests(store, collection)
    manifest = manifests.latest()
    if manifest is None:
        return 0, 0, 0
    size = store.head(manifests.key(manifest.version)).size
    return manifest.version, size, len(manifest.segments)


@dataclass
class LiveSet:
    """The live records a reader sees: id → (unit vector, metadata)."""

    version: int
    records: dict[str, tuple[np.ndarray, Any]]
    duplicates: list[str]  # ids returned more than once (live twice)


def live_ids(app: Brainy, collection: str) -> LiveSet:
    """Every live record of `collection`, read back as a user would: by search.

    The one place the harness reads records back, and it goes through
    `Brainy.search` alone, so it needs no change when masks move out of the
    manifest (a format change that breaks it breaks search). One query per basis
    vector e_j with k = `max_k` returns every live row; its score is
    cos(v, e_j) = v_j / |v| (angular) or v_j (dot), so the `dimension` queries
    give each row's direction as well as its id and metadata.

    Raises:
        RuntimeError: more live rows than `max_k` (set `BRAINY_MAX_K` higher).
    """
    schema = app.require_schema(collection)
    if schema.metric not in ("angular", "dot"):
        raise ValueError(f"live_ids reads vectors back for angular or dot, not {schema.metric}")
    k = app.settings.max_k
    basis = np.eye(schema.dimension, dtype=np.float32)
    results = [app.search({"collection": collection, "vector": e.tolist(), "k": k}) for e in basis]
    if len({r.version for r in results}) != 1:
        raise RuntimeError("the collection changed while it was read back")
    hits = results[0].hits
    if len(hits) >= k:
        raise RuntimeError(f"{len(hits)} live rows reach max_k={k}: raise BRAINY_MAX_K")
    seen = Counter(h.id for h in hits)
    duplicates = sorted(rid for rid, n in seen.items() if n > 1)
    ids = sorted(seen)
    position = {rid: i for i, rid in enumerate(ids)}
    vectors = np.zeros((len(ids), schema.dimension), dtype=np.float64)
    for j, result in enumerate(results):
        rows = np.fromiter((position[h.id] for h in result.hits), dtype=np.int64)
        vectors[rows, j] = np.fromiter((h.score for h in result.hits), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    metadata = {h.id: h.metadata for h in hits}
    return LiveSet(
        results[0].version,
        {rid: (vectors[position[rid]], metadata[rid]) for rid in ids},
        duplicates,
    )


class LastWriterWins:
    """The reference, independent of the engine: each id keeps the record with the
    greatest (timestamp, writer) over every batch ever written; a delete that wins
    leaves the id absent."""

    def __init__(self) -> None:
        self.best: dict[str, tuple[tuple[int, str], np.ndarray | None, Any]] = {}

    def apply(self, batch: Batch) -> None:
        # Vectors are stored for upserts only, in record order.
        upsert_row = np.cumsum([op == UPSERT for op in batch.ops]) - 1
        for i, rid in enumerate(batch.ids):
            order = (int(batch.timestamps[i]), batch.writer)
            current = self.best.get(rid)
            if current is None or current[0] < order:
                vector = batch.vectors[upsert_row[i]] if batch.ops[i] == UPSERT else None
                self.best[rid] = (order, vector, batch.metadata[i])

    def live(self) -> dict[str, tuple[np.ndarray, Any]]:
        return {rid: (v, meta) for rid, (_, v, meta) in self.best.items() if v is not None}


def compare_live(expected: dict[str, tuple[np.ndarray, Any]], actual: LiveSet) -> dict[str, Any]:
    """Counts (and a few examples) of every way `actual` differs from `expected`."""
    missing = sorted(set(expected) - set(actual.records))
    unexpected = sorted(set(actual.records) - set(expected))
    common = sorted(set(expected) & set(actual.records))
    wrong_metadata = [rid for rid in common if expected[rid][1] != actual.records[rid][1]]
    wrong_vector: list[str] = []
    if common:
        want = np.stack([expected[rid][0] for rid in common]).astype(np.float64)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        got = np.stack([actual.records[rid][0] for rid in common])
        bad = ~np.all(np.isclose(got, want, atol=1e-5), axis=1)
        wrong_vector = [common[i] for i in np.flatnonzero(bad)]
    problems = {
        "missing": missing,
        "unexpected": unexpected,
        "wrong_metadata": wrong_metadata,
        "wrong_vector": wrong_vector,
        "duplicates": actual.duplicates,
    }
    return {
        "equal": not any(problems.values()),
        "version": actual.version,
        "expected": len(expected),
        "read_back": len(actual.records),
        **{name: len(ids) for name, ids in problems.items()},
        "examples": {name: ids[:5] for name, ids in problems.items() if ids},
    }


# ----------------------------------------------------------------- simulation


@dataclass
class Delivery:
    """One event handed to an indexer."""

    step: int
    records: int
    status: str
    version: int | None
    seconds: float
    cost: WriteCost


@dataclass
class FirehoseResult:
    """Raw figures of one run; `to_json` summarises them."""

    config: FirehoseConfig
    settings: dict[str, Any]
    deliveries: list[Delivery] = field(default_factory=list)
    ingests: list[WriteCost] = field(default_factory=list)
    passes: list[WriteCost] = field(default_factory=list)
    pass_seconds: list[float] = field(default_factory=list)
    repairs: int = 0
    # (commits applied so far, manifest bytes) after every indexer commit.
    manifest_sizes: list[tuple[int, int]] = field(default_factory=list)
    # (batches ingested, version, manifest bytes, segments, seconds since start).
    samples: list[tuple[int, int, int, int, float]] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    final_version: int = 0
    final_bytes: int = 0
    final_segments: int = 0
    live: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def commits(self) -> list[Delivery]:
        """Deliveries that committed a new version."""
        return [d for d in self.deliveries if d.status == "applied"]

    @property
    def bound(self) -> int:
        return 1024 * self.final_segments + 16_384

    @property
    def within_bound(self) -> bool:
        return self.final_bytes < self.bound

    def halves(self) -> tuple[int, int]:
        """Largest manifest over the first and over the second half of the commits."""
        sizes = [size for _, size in self.manifest_sizes]
        half = len(sizes) // 2
        return max(sizes[:half], default=0), max(sizes[half:], default=0)

    def to_json(self) -> dict[str, Any]:
        first, second = self.halves()
        wall = self.seconds.get("total", 0.0)
        n = max(self.config.commits, 1)
        every = max(1, len(self.manifest_sizes) // 100)
        return {
            "benchmark": "firehose",
            "config": asdict(self.config),
            "settings": self.settings,
            "seconds": self.seconds,
            "seconds_per_commit": round(wall / n, 5),
            "events": dict(self.events),
            "manifest": {
                "final_version": self.final_version,
                "final_bytes": self.final_bytes,
                "segments": self.final_segments,
                "bound_bytes": self.bound,
                "within_bound": self.within_bound,
                "max_bytes": max((s for _, s in self.manifest_sizes), default=0),
                "max_bytes_first_half": first,
                "max_bytes_second_half": second,
                "over_run": [
                    {"batches": b, "version": v, "bytes": s, "segments": g, "seconds": t}
                    for b, v, s, g, t in self.samples
                ],
                "bytes_by_commit": self.manifest_sizes[::every],
            },
            "per_commit": {
                **cost_figures([d.cost for d in self.commits]),
                "seconds": summary(d.seconds for d in self.commits),
                "records": summary(d.records for d in self.commits),
            },
            "per_redelivery": cost_figures(
                [d.cost for d in self.deliveries if d.status != "applied"]
            ),
            "per_ingest": cost_figures(self.ingests),
            "per_maintenance_pass": {
                **cost_figures(self.passes),
                "seconds": summary(self.pass_seconds),
                "repairs": self.repairs,
            },
            "live": self.live,
            "verify": self.verify,
        }


def _env(url: str, cache: Path, role: str, settings: dict[str, str]) -> dict[str, str]:
    return {
        "BRAINY_STORE": url,
        "BRAINY_ROLE": role,
        "BRAINY_CACHE_DIR": str(cache),
        "BRAINY_REFRESH_INTERVAL": "0",
        **{f"BRAINY_{name.upper()}": value for name, value in settings.items()},
    }


class Firehose:
    """One run of the simulation on a fresh local-folder store under `root`."""

    def __init__(self, config: FirehoseConfig, root: Path) -> None:
        self.cfg = config
        root.mkdir(parents=True, exist_ok=True)
        self.url = (root / "bucket").resolve().as_uri()

        def instance(role: str, n: int, **extra: str) -> Brainy:
            env = _env(self.url, root / f"cache-{role}-{n}", role, config.settings)
            return Brainy.from_env(role, {**env, **extra})

        admin = instance("cli", 0)
        admin.create_collection(
            CollectionSchema(COLLECTION, dimension=config.dimension, partitions=config.partitions)
        )
        self.writers = [instance("ingest", i) for i in range(config.writers)]
        self.indexers = [instance("indexer", i) for i in range(config.indexers)]
        self.compactor = instance("compactor", 0)
        # Reads every live row at once: k must reach the id space.
        self.reader = instance("search", 0, BRAINY_MAX_K=str(max(config.ids + 1, 1000)))
        # Measurements read through a store of their own, so they are not counted.
        self.probe = open_store(self.url, read_only=True)
        self.manifests = Manifests(self.probe, COLLECTION)
        self.writer_meters = [Meter(app.store) for app in self.writers]
        self.indexer_meters = [Meter(app.store) for app in self.indexers]
        self.compactor_meter = Meter(self.compactor.store)
        self.rng = np.random.default_rng(config.seed)
        self.order = random.Random(config.seed)
        self.model = LastWriterWins()
        self.present = np.zeros(config.ids, dtype=bool)  # ids the writers believe live
        self.result = FirehoseResult(
            config,
            {name: getattr(self.compactor.settings, name) for name in REPORTED_SETTINGS},
        )
        self._pending: list[str] = []  # events in flight, delivered in random order
        self._late: list[tuple[int, float, str]] = []  # (due step, tie-break, key)
        # batch key → (ingest step, records): the step shows reordering.
        self._batches: dict[str, tuple[int, int]] = {}
        self._delivered: set[str] = set()
        self._newest_delivered = -1
        self._applied = 0

    # ---------------------------------------------------------------- writing

    def _ingest(self, step: int) -> str:
        cfg, rng = self.cfg, self.rng
        n = int(rng.integers(cfg.batch_min, cfg.batch_max + 1))
        live = np.flatnonzero(self.present)
        deletes = rng.choice(live, min(int(rng.binomial(n, cfg.delete_share)), live.size), False)
        drawn = rng.choice(cfg.ids, n, replace=False)
        upserts = drawn[~np.isin(drawn, deletes)][: n - deletes.size]
        vectors = rng.standard_normal((upserts.size, cfg.dimension)).astype(np.float32)
        self.present[upserts] = True
        self.present[deletes] = False
        w = int(rng.integers(len(self.writers)))
        outcome = self.writers[w].ingest(
            {
                "collection": COLLECTION,
                "records": [
                    # A tag unique to the record, so a wrong winner shows in its metadata.
                    {"id": f"id-{i}", "vector": v, "metadata": {"rev": f"{step}.{j}"}}
                    for j, (i, v) in enumerate(zip(upserts.tolist(), vectors.tolist(), strict=True))
                ],
                "deletes": [f"id-{i}" for i in deletes.tolist()],
            }
        )
        self.result.ingests.append(
            WriteCost.of(self.writer_meters[w].take(), COLLECTION, self.manifests)
        )
        self.model.apply(Batch.decode(self.probe.get(outcome.batch).data, outcome.batch))
        self._batches[outcome.batch] = (step, int(upserts.size + deletes.size))
        return outcome.batch

    # ------------------------------------------------------------- delivering

    def _deliver(self, step: int, key: str, *, may_defer: bool) -> None:
        cfg, events = self.cfg, self.result.events
        if may_defer and self.order.random() < cfg.late_rate:
            due = step + self.order.randint(cfg.late_min, cfg.late_max)
            heapq.heappush(self._late, (due, self.order.random(), key))
            events["held_late"] += 1
            return
        i = self.order.randrange(len(self.indexers))
        started = time.perf_counter()
        result = self.indexers[i].index_key(key)
        seconds = time.perf_counter() - started
        cost = WriteCost.of(self.indexer_meters[i].take(), COLLECTION, self.manifests)
        seq, records = self._batches[key]
        events["deliveries"] += 1
        events[f"status_{result.status}"] += 1
        if seq < self._newest_delivered:
            events["out_of_order"] += 1
        self._newest_delivered = max(self._newest_delivered, seq)
        self._delivered.add(key)
        self.result.deliveries.append(
            Delivery(step, records, result.status, result.version, seconds, cost)
        )
        if result.status == "applied" and result.version is not None:
            self._applied += 1
            size = self.probe.head(self.manifests.key(result.version)).size
            self.result.manifest_sizes.append((self._applied, size))
        if self.order.random() < cfg.duplicate_rate:
            self._pending.append(key)
            events["duplicated"] += 1

    def _drain(self, step: int, keep: int, *, may_defer: bool) -> None:
        while self._late and self._late[0][0] <= step:
            self._pending.append(heapq.heappop(self._late)[2])
        while len(self._pending) > keep:
            j = self.order.randrange(len(self._pending))
            self._pending[j], self._pending[-1] = self._pending[-1], self._pending[j]
            self._deliver(step, self._pending.pop(), may_defer=may_defer)

    # ------------------------------------------------------------ maintaining

    def _maintain(self) -> None:
        started = time.perf_counter()
        [report] = self.compactor.maintain(COLLECTION)
        self.result.pass_seconds.append(time.perf_counter() - started)
        self.result.passes.append(
            WriteCost.of(self.compactor_meter.take(), COLLECTION, self.manifests)
        )
        # maintain repairs what its verify finds; a sound format never needs it.
        self.result.repairs += "repair" in report

    # -------------------------------------------------------------------- run

    def run(
        self, on_sample: Callable[[tuple[int, int, int, int, float]], None] | None = None
    ) -> FirehoseResult:
        """Ingest `commits` batches, deliver every event, maintain on schedule, then
        read everything back; `on_sample` sees each row of the manifest-size table."""
        cfg, res = self.cfg, self.result
        sample_every = max(1, cfg.commits // max(cfg.samples, 1))
        started = time.perf_counter()
        for step in range(1, cfg.commits + 1):
            self._pending.append(self._ingest(step))
            self._drain(step, cfg.window, may_defer=True)
            if step % cfg.compact_every == 0:
                self._maintain()
            if step % sample_every == 0 or step == cfg.commits:
                res.samples.append((step, *manifest_figures(self.probe, COLLECTION),
                                    round(time.perf_counter() - started, 2)))  # fmt: skip
                if on_sample is not None:
                    on_sample(res.samples[-1])
        # The stream stops: every event still in flight arrives, then the next
        # scheduled pass runs.
        while self._pending or self._late:
            self._drain(cfg.commits + cfg.late_max, 0, may_defer=False)
        self._maintain()
        res.seconds["run"] = round(time.perf_counter() - started, 3)
        checked = time.perf_counter()
        res.final_version, res.final_bytes, res.final_segments = manifest_figures(
            self.probe, COLLECTION
        )
        res.events["batches"] = cfg.commits
        res.events["batches_delivered"] = len(self._delivered)
        res.live = compare_live(self.model.live(), live_ids(self.reader, COLLECTION))
        report = verify(self.probe, COLLECTION, deep=True)
        res.verify = {
            "ok": report.ok,
            "version": report.version,
            "segments_checked": report.segments_checked,
            "batches_checked": report.batches_checked,
            "problems": [p.to_dict() for p in report.problems[:10]],
        }
        res.seconds["check"] = round(time.perf_counter() - checked, 3)
        res.seconds["total"] = round(time.perf_counter() - started, 3)
        return res

    def close(self) -> None:
        for app in (*self.writers, *self.indexers, self.compactor, self.reader):
            app.close()
        self.probe.close()


# ------------------------------------------------------------------------ CLI

_ROW = "{:>9}  {:>8}  {:>14}  {:>8}  {:>12}  {:>9}"


def _print_sample(sample: tuple[int, int, int, int, float]) -> None:
    batches, version, size, segments, seconds = sample
    print(_ROW.format(batches, version, size, segments, 1024 * segments + 16_384, seconds))


def _print_summary(figures: dict[str, Any]) -> None:
    m, per, live = figures["manifest"], figures["per_commit"], figures["live"]
    holds = "holds" if m["within_bound"] else "DOES NOT HOLD"
    print(
        f"\nnewest manifest: {m['final_bytes']} bytes, {m['segments']} segments; "
        f"bound {m['bound_bytes']} bytes: {holds} (largest during the run: {m['max_bytes']}; "
        f"first half {m['max_bytes_first_half']}, second half {m['max_bytes_second_half']})"
    )
    print(
        f"per commit ({per['count']}): manifests written max {per['manifests_written']['max']:g}"
        f"; objects mean {per['objects']['mean']:g} max {per['objects']['max']:g}; bytes mean "
        f"{per['bytes']['mean']:g} p50 {per['bytes']['p50']:g} p99 {per['bytes']['p99']:g} "
        f"max {per['bytes']['max']:g}"
    )
    for prefix, f in per["by_prefix"].items():
        o, b = f["objects"], f["bytes"]
        print(
            f"  {prefix:<14} objects mean {o['mean']:<6g} max {o['max']:<4g} bytes mean "
            f"{b['mean']:<10g} p50 {b['p50']:<9g} p99 {b['p99']:<10g} max {b['max']:g}"
        )
    requests = ", ".join(
        f"{kind} {s['mean']:g}/{s['max']:g}" for kind, s in per["requests"].items()
    )
    print(f"  requests per commit by kind (mean/max): {requests}")
    print(f"events: {figures['events']}")
    passes = figures["per_maintenance_pass"]
    print(
        f"maintenance: {passes['count']} passes, mean {passes['seconds']['mean']:g} s, "
        f"{passes['repairs']} needed repair"
    )
    print(
        f"live set: {'equals' if live['equal'] else 'DIFFERS FROM'} last-writer-wins "
        f"({live['read_back']} read back, {live['expected']} expected); "
        f"verify {'clean' if figures['verify']['ok'] else 'NOT clean'}"
    )
    print(
        f"wall time {figures['seconds']['total']:g} s "
        f"({figures['seconds_per_commit'] * 1000:.2f} ms per commit)"
    )


def parse_args(argv: list[str] | None = None) -> tuple[FirehoseConfig, argparse.Namespace]:
    d = FirehoseConfig()
    p = argparse.ArgumentParser(prog="python -m bench.firehose", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--commits", type=int, default=d.commits, help="batches ingested, one commit each")
    add("--writers", type=int, default=d.writers, help="ingest instances")
    add("--indexers", type=int, default=d.indexers, help="indexer instances events go to")
    add("--ids", type=int, default=d.ids, help="size of the id space (re-upserts, deletes)")
    add("--dimension", type=int, default=d.dimension)
    add("--partitions", type=int, default=d.partitions)
    add("--batch-min", type=int, default=d.batch_min, help="records per batch, at least")
    add("--batch-max", type=int, default=d.batch_max, help="records per batch, at most")
    add("--delete-share", type=float, default=d.delete_share, help="share of records deleted")
    add("--duplicate-rate", type=float, default=d.duplicate_rate, help="events delivered twice")
    add("--late-rate", type=float, default=d.late_rate, help="events held back")
    add("--late-max", type=int, default=d.late_max, help="commits a late event waits, at most")
    add("--window", type=int, default=d.window, help="events in flight, delivered shuffled")
    add("--compact-every", type=int, default=d.compact_every, help="commits between passes")
    add("--samples", type=int, default=d.samples, help="rows of the manifest-size table")
    add("--seed", type=int, default=d.seed)
    for name in RETENTION_SETTINGS:
        add(f"--{name.replace('_', '-')}", help=f"override {name} (e.g. 30s); default: product's")
    add("--out", type=Path, default=RESULTS / "firehose.json", help="where the JSON goes")
    add("--store", type=Path, help="folder for the bucket and caches (kept); default: a temp one")
    args = p.parse_args(argv)
    settings = {
        name: getattr(args, name) for name in RETENTION_SETTINGS if getattr(args, name) is not None
    }
    config = FirehoseConfig(
        commits=args.commits,
        writers=args.writers,
        indexers=args.indexers,
        ids=args.ids,
        dimension=args.dimension,
        partitions=args.partitions,
        batch_min=args.batch_min,
        batch_max=args.batch_max,
        delete_share=args.delete_share,
        duplicate_rate=args.duplicate_rate,
        late_rate=args.late_rate,
        late_max=args.late_max,
        window=args.window,
        compact_every=args.compact_every,
        samples=args.samples,
        seed=args.seed,
        settings=settings,
    )
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    root = args.store or Path(tempfile.mkdtemp(prefix="brainy-firehose-"))
    print(f"firehose: {config.commits} commits on {root}; settings {config.settings or 'defaults'}")
    print(_ROW.format("batches", "version", "manifest_bytes", "segments", "bound_bytes", "seconds"))
    sim = Firehose(config, root)
    try:
        figures = sim.run(on_sample=_print_sample).to_json()
    finally:
        sim.close()
        if args.store is None:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1) + "\n")
    _print_summary(figures)
    print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
