"""One Brainy instance: its settings, its store and the use cases every entry point
(functions, CLI) calls. Entry points parse and respond; the work happens here."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core import logs
from brainy.core.config import (
    CONFIG_KEY,
    CollectionSchema,
    ConfigError,
    Settings,
    create_collection,
    drop_collection,
    load_settings,
    parse_layer,
    read_json_object,
)
from brainy.core.errors import Forbidden, InvalidInput, UnknownCollection
from brainy.format.batch import WriterClock, collection_of_batch
from brainy.maintenance.context import Maintenance, Progress
from brainy.read.search import DEFAULT_RECALL_TARGET, Searcher, SearchResult
from brainy.read.warmup import WarmReport
from brainy.service.clock import ClockCheck
from brainy.service.maintenance import maintain
from brainy.service.metrics import Metrics
from brainy.service.observe import (
    CollectionsCollector,
    Held,
    IndexLag,
    PartitionAccess,
    held_collections,
)
from brainy.storage import ObjectStore, StorageError
from brainy.table.manifest import Manifest, Manifests, VersionCache
from brainy.write.broadcast import (
    Broadcaster,
    Ignored,
    SnsConfirmation,
    confirm_subscription,
    open_sink,
    parse_delivery,
)
from brainy.write.embedders import check_embedder
from brainy.write.embedding_cache import EmbeddingCache
from brainy.write.events import ObjectCreated
from brainy.write.indexer import Indexer, IndexResult
from brainy.write.ingest import (
    IngestOutcome,
    ValidRequest,
    check_idempotency_key,
    check_matrix,
    check_vector,
    embed_text,
    validate,
    validate_vectors,
    write_batch,
)

log = logging.getLogger(__name__)

_QUERY_FIELDS = {"collection", "vector", "text", "k", "filter", "min_version", "recall_target"}
# A recall target below this is not worth a search (and no segment calibrates for it).
MIN_RECALL_TARGET = 0.5
_WARMUP_FIELDS = {"collection"}
PROBES_PREFIX = "_brainy/probes/"


@dataclass(frozen=True)
class SearchQuery:
    schema: CollectionSchema
    vector: np.ndarray
    k: int
    filters: dict[str, Any]
    min_version: int | None
    # Any number in [MIN_RECALL_TARGET, 1.0]: segments calibrate at 0.9, 0.95 and
    # 0.99, and a target is answered by the level at or above it (see
    # `brainy.read.search.plan`); 1.0 searches every segment exactly.
    recall_target: float = DEFAULT_RECALL_TARGET


class Brainy:
    """An instance of one role, bound to one store."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        for schema in settings.collections.values():
            check_embedder(schema, settings)
        self.settings = settings
        self.store = store
        # Explicit instance ids may be shared by every copy of a function: the
        # writer id adds a per-process nonce so (timestamp, writer) stays unique.
        self.writer_id = f"{settings.instance_id}-{uuid.uuid4().hex[:6]}"
        self.clock = WriterClock()
        self.started = time.time()
        self._collections = dict(settings.collections)
        self._config_checked = time.monotonic()
        self._lock = threading.Lock()
        self._searcher: Searcher | None = None
        self._indexer: Indexer | None = None
        self._versions = VersionCache()
        # Only writes carry the local clock into the bucket; a read-only instance
        # could not write the probe anyway.
        self.clock_check: ClockCheck | None = None
        if not settings.read_only:
            self.clock_check = ClockCheck(
                store,
                f"{PROBES_PREFIX}clock-{settings.instance_id}",
                settings.max_clock_skew,
                settings.clock_check_interval,
            )
        self.metrics = Metrics(
            self._cache_hit_ratio,
            self.clock_check.last_measured if self.clock_check else None,
            lambda: self._searcher.recall.recall if self._searcher else float("nan"),
            lambda: self.embeddings.hit_ratio,
            role=settings.role,
        )
        self.embeddings = EmbeddingCache.for_instance(
            settings, store, self.metrics.embeddings_computed.inc
        )
        store.add_observer(self.metrics.count_request)
        self.broadcaster = self._broadcaster()
        self.index_lag = IndexLag()
        # The newest manifest each maintenance pass left, by collection.
        self._maintained: dict[str, Manifest] = {}
        self.metrics.register(CollectionsCollector(self._held, self.index_lag))
        self.partition_access = PartitionAccess(
            store, lambda ref: self._searcher is not None and self._searcher.cache.cached(ref)
        )

    @classmethod
    def from_env(
        cls,
        role: str,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Brainy:
        """An instance configured from the environment and the bucket (a cold start).

        A writing instance on S3 first proves the endpoint honours conditional
        writes: some S3-compatible stores ignore `If-None-Match`, and there a
        commit would silently overwrite another. A writing instance then
        measures its clock against the store's (a skewed one starts, reports it
        in `/health`, and refuses writes).
        """
        settings, store = load_settings(env, role=role)
        if overrides:  # already parsed (`parse_layer`): the last, explicit layer
            settings = dataclasses.replace(settings, **overrides)
        if store.scheme == "s3" and not settings.read_only:
            store.check_conditional_writes(f"{PROBES_PREFIX}{settings.instance_id}")
        app = cls(settings, store)
        if app.clock_check is not None:
            app.clock_check.skew()
        return app

    # ------------------------------------------------------------ collections

    def schema(self, name: str) -> CollectionSchema | None:
        """A collection's schema; an unknown name re-reads the shared config (at most
        once per refresh interval), so collections created later are found."""
        schema = self._collections.get(name)
        if schema is not None:
            return schema
        with self._lock:
            if time.monotonic() - self._config_checked >= self.settings.refresh_interval:
                self._config_checked = time.monotonic()
                self._reload_collections()
        return self._collections.get(name)

    def require_schema(self, name: Any) -> CollectionSchema:
        if not isinstance(name, str) or not name:
            raise InvalidInput("collection", "required: the name of a collection")
        schema = self.schema(name)
        if schema is None:
            raise UnknownCollection(name)
        return schema

    def _reload_collections(self) -> None:
        raw, _ = read_json_object(self.store, CONFIG_KEY)
        if raw is None:
            return
        layer = parse_layer(raw, CONFIG_KEY)
        self._collections = {**layer.get("collections", {}), **self.settings.collections}

    def create_collection(self, schema: CollectionSchema) -> bool:
        if self.settings.read_only:
            raise Forbidden("mode", "a read-only instance cannot create collections")
        check_embedder(schema, self.settings)
        stored = self.manifests(schema.name).latest()
        created = create_collection(
            self.store, schema, stored=stored.schema if stored is not None else None
        )
        self._collections[schema.name] = schema
        return created

    def drop_collection(self, name: str, *, force: bool = False) -> None:
        """Remove a collection's declaration; its objects stay in the bucket (an
        instance still using it is never cut off mid-request, and creating it again
        with the same schema finds its data). One that holds data (rows, or
        batches not yet indexed) is dropped only with `force`."""
        if self.settings.read_only:
            raise Forbidden("mode", "a read-only instance cannot drop collections")
        self.require_schema(name)
        latest = self.manifests(name).latest()
        rows = latest.live if latest else 0
        if not force and (rows or next(iter(self.store.list(f"{name}/wal/")), None)):
            raise InvalidInput(
                "force", f"collection {name!r} holds data ({rows:,} live rows): pass force=True"
            )
        drop_collection(self.store, name)
        declared = {k: v for k, v in self.settings.collections.items() if k != name}
        self.settings = dataclasses.replace(self.settings, collections=declared)
        self._collections.pop(name, None)

    def collections(self) -> dict[str, CollectionSchema]:
        self._reload_collections()
        return dict(self._collections)

    def manifests(self, name: str) -> Manifests:
        return Manifests(
            self.store,
            name,
            gc_grace=self.settings.gc_grace,
            clock_margin=self.settings.max_clock_skew,
            on_commit=self.broadcaster.committed if self.broadcaster else None,
        )

    # ----------------------------------------------------------------- events

    def _broadcaster(self) -> Broadcaster | None:
        """Publishes index-updated events after this instance's commits, if sinks are
        configured (a read-only instance never commits)."""
        events = self.settings.events
        if self.settings.read_only or not events.sinks:
            return None
        sinks = [
            open_sink(spec, f"events.sinks[{i}]", self.settings.sns_endpoint_url)
            for i, spec in enumerate(events.sinks)
        ]
        source = f"/brainy/{self.settings.role}/{self.settings.instance_id}"
        return Broadcaster(sinks, source, events.queue_size, self.metrics.count_event)

    def flush_events(self) -> None:
        """Give the events of this request's commits up to `events.flush_timeout`
        to be sent before the function answers (its commits have landed already)."""
        if self.broadcaster is not None and self.settings.events.flush_timeout > 0:
            self.broadcaster.flush(self.settings.events.flush_timeout)

    def receive_event(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """`POST /events`: an index-updated event refreshes its collection now; an
        older (late, duplicate) version changes nothing. SNS subscription
        confirmations are confirmed."""
        if not self.settings.can_search:
            raise Forbidden("mode", "this instance is write-only: it serves no searches")
        delivery = parse_delivery(headers, body)
        if isinstance(delivery, Ignored):
            self.metrics.events_received.labels(outcome="ignored").inc()
            return {"ignored": delivery.reason}
        if isinstance(delivery, SnsConfirmation):
            endpoints = [self.settings.sns_endpoint_url or ""] + [
                s.endpoint_url or "" for s in self.settings.events.sinks
            ]
            arn = confirm_subscription(delivery, [e for e in endpoints if e])
            self.metrics.events_received.labels(outcome="confirmed").inc()
            return {"confirmed": delivery.topic_arn, "subscription_arn": arn}
        if self.schema(delivery.collection) is None:
            # Announced by a writer, so perhaps declared after this instance last
            # read the config (at most once per refresh interval otherwise).
            self._reload_collections()
        schema = self.require_schema(delivery.collection)
        before, now = self.searcher.refresh(schema.name, delivery.version)
        outcome = "refreshed" if now > before else "unchanged"
        self.metrics.events_received.labels(outcome=outcome).inc()
        return {"collection": schema.name, "announced": delivery.version,
                "previous": before, "version": now, "refreshed": now > before}  # fmt: skip

    # ----------------------------------------------------------------- ingest

    def ingest(
        self,
        payload: Mapping[str, Any],
        idempotency_key: str | None = None,
        timestamps: Sequence[int] | None = None,
    ) -> IngestOutcome:
        """Validate a request (`POST /ingest`'s body) and make it one durable batch.

        `timestamps` (a source's own clock, one per record: records, then deletes)
        replace the instance's clock as the records' last-writer-wins order."""
        started = self._start_ingest()
        key = check_idempotency_key(idempotency_key)
        request = validate(payload, self.settings, self.schema, self.embeddings.embed)
        logs.bind(collection=request.schema.name)
        return self._write(request, key, started, timestamps)

    def ingest_vectors(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict | None] | None = None,
    ) -> IngestOutcome:
        """Upserts given as columns (ids, a matrix with a vector a row, optionally
        metadata), as `brainy ingest X.npy` reads them: one batch, checked as
        `ingest` checks the same records, without their vectors ever becoming
        Python lists."""
        started = self._start_ingest()
        request = validate_vectors(collection, ids, vectors, self.settings, self.schema, metadata)
        return self._write(request, None, started)

    def _start_ingest(self) -> float:
        if self.settings.read_only:
            raise Forbidden("mode", "this instance is read-only: ingest is refused")
        return time.perf_counter()

    def _write(
        self,
        request: ValidRequest,
        key: str | None,
        started: float,
        timestamps: Sequence[int] | None = None,
    ) -> IngestOutcome:
        self._require_clock()
        outcome = write_batch(self.store, request, self.writer_id, self.clock, key, timestamps)
        self.metrics.ingest_seconds.observe(time.perf_counter() - started)
        self.metrics.records_ingested.inc(outcome.accepted + outcome.deleted)
        self.metrics.ingest_batch_records.observe(outcome.accepted + outcome.deleted)
        return outcome

    # ------------------------------------------------------------------ index

    @property
    def indexer(self) -> Indexer:
        if self._indexer is None:
            self._indexer = Indexer(
                self.store,
                self.schema,
                committed_by=self.writer_id,
                workdir=Path(self.settings.cache_dir) / "build",
                manifests_of=self.manifests,
            )
        return self._indexer

    @property
    def maintenance(self) -> Maintenance:
        """What sweep, compaction, GC and repair work with on this instance."""
        indexer = self.indexer
        return Maintenance(
            store=self.store,
            settings=self.settings,
            schema_of=self.schema,
            index=indexer.index,
            writer_id=self.writer_id,
            manifests_of=self.manifests,
            masks=indexer.masks,
            headers=indexer.headers,
            versions=self._versions,
        )

    def index_objects(self, objects: list[ObjectCreated]) -> list[IndexResult]:
        """Index every batch the events name; other objects are acknowledged."""
        self._require_clock()
        results = []
        for obj in objects:
            key = self.store.key_from_event(obj.bucket, obj.key)
            if key is None:
                results.append(IndexResult(obj.key, "ignored", detail="outside this store"))
                continue
            started = time.perf_counter()
            results.append(self.indexer.index(key))
            self.metrics.index_seconds.observe(time.perf_counter() - started)
            logs.bind(collection=collection_of_batch(key), version=results[-1].version)
        self.flush_events()
        return results

    def index_key(self, key: str) -> IndexResult:
        self._require_clock()
        return self.indexer.index(key)

    def _require_clock(self) -> None:
        """Refuse to write while the clock is too far from the store's.

        Raises:
            ClockSkewed: naming the measured skew and the limit.
        """
        if self.clock_check is not None:
            self.clock_check.require_within_bounds()

    # ----------------------------------------------------------------- search

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            with self._lock:
                if self._searcher is None:
                    self._searcher = Searcher(
                        self.store,
                        Path(self.settings.cache_dir) / "segments",
                        self.settings.cache_size,
                        self.settings.refresh_interval,
                        self.settings.query_threads,
                        self.settings.download_threads,
                        self.settings.background_warm,
                        self.settings.recall_sample,
                        lambda _: self.metrics.recall_samples.inc(),
                        self.settings.recall_budget,
                    )
        return self._searcher

    def parse_query(self, payload: Mapping[str, Any]) -> SearchQuery:
        """Validate a search request; raises `BrainyError` naming the bad field."""
        if not isinstance(payload, Mapping):
            raise InvalidInput("body", "expected a JSON object")
        unknown = sorted(set(payload) - _QUERY_FIELDS)
        if unknown:
            raise InvalidInput(unknown[0], f"unknown field (expected {sorted(_QUERY_FIELDS)})")
        schema = self.require_schema(payload.get("collection"))
        k = payload.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.settings.max_k:
            raise InvalidInput("k", f"expected an integer in [1, {self.settings.max_k}], got {k!r}")
        has_vector = payload.get("vector") is not None
        has_text = payload.get("text") is not None
        if has_vector == has_text:
            raise InvalidInput("vector", "give exactly one of vector or text")
        if has_vector:
            vector = check_vector(payload["vector"], "vector", schema)
        else:
            # A query is one short text: a bucket lookup would only add latency.
            vector = embed_text(
                schema,
                payload["text"],
                "text",
                lambda s, texts: self.embeddings.embed(s, texts, shared=False),
            )
        filters = payload.get("filter") or {}
        if not isinstance(filters, Mapping):
            raise InvalidInput("filter", "expected an object of field: value")
        for field, value in filters.items():
            if isinstance(value, (dict, list)):
                raise InvalidInput(f"filter.{field}", "expected a string, number, boolean or null")
        min_version = payload.get("min_version")
        if min_version is not None and (
            isinstance(min_version, bool) or not isinstance(min_version, int) or min_version < 0
        ):
            raise InvalidInput(
                "min_version", f"expected a non-negative integer, got {min_version!r}"
            )
        recall_target = payload.get("recall_target")
        if recall_target is None:
            recall_target = DEFAULT_RECALL_TARGET
        elif (
            isinstance(recall_target, bool)
            or not isinstance(recall_target, (int, float))
            or not MIN_RECALL_TARGET <= recall_target <= 1.0
        ):
            raise InvalidInput(
                "recall_target",
                f"expected a number in [{MIN_RECALL_TARGET}, 1.0], got {recall_target!r}",
            )
        return SearchQuery(schema, vector, k, dict(filters), min_version, float(recall_target))

    def search(self, payload: Mapping[str, Any], at: Manifest | None = None) -> SearchResult:
        """Answer a search request (`POST /search`'s body).

        Args:
            at: search this retained manifest version instead of the newest.
        """
        with self.metrics.searches_in_flight.track_inprogress():
            return self._search(payload, at)

    def _search(self, payload: Mapping[str, Any], at: Manifest | None) -> SearchResult:
        started = self._start_search()
        query = self.parse_query(payload)
        logs.bind(collection=query.schema.name)
        if at is None and not query.filters and not query.min_version:
            # Concurrent queries like it share their work (brainy.read.coalesce).
            result = self.searcher.search_shared(
                query.schema, query.vector, query.k, query.recall_target
            )
        else:
            result = self.searcher.search(
                query.schema,
                query.vector,
                query.k,
                query.filters,
                query.min_version,
                self.settings.min_version_timeout,
                query.recall_target,
                at,
            )
        self.metrics.search_seconds.observe(time.perf_counter() - started)
        self.metrics.vectors_served.inc(len(result.hits))
        logs.bind(version=result.version)
        return result

    def search_batch(
        self, payload: Mapping[str, Any], vectors: np.ndarray, at: Manifest | None = None
    ) -> list[SearchResult]:
        """`search` for every row of `vectors` (a matrix, a query a row, named
        `vectors[i]` in errors), at one manifest version; `payload`'s other fields
        (`collection`, `k`, `filter`, ...) apply to every query."""
        started = self._start_search()
        schema = self.require_schema(payload.get("collection"))
        if getattr(vectors, "ndim", 0) != 2 or not len(vectors):
            raise InvalidInput("vectors", "expected a matrix with one query vector a row")
        matrix = check_matrix(vectors, lambda i: f"vectors[{i}]", schema)
        query = self.parse_query({**payload, "vector": matrix[0].tolist()})
        with self.metrics.searches_in_flight.track_inprogress():
            results = self.searcher.search_batch(
                schema,
                matrix,
                query.k,
                query.filters,
                query.min_version,
                self.settings.min_version_timeout,
                query.recall_target,
                at,
            )
        self.metrics.search_seconds.observe(time.perf_counter() - started)
        self.metrics.vectors_served.inc(sum(len(r.hits) for r in results))
        return results

    def _start_search(self) -> float:
        if not self.settings.can_search:
            raise Forbidden("mode", "this instance is write-only: search is refused")
        return time.perf_counter()

    def warmup(self, payload: Any) -> list[WarmReport]:
        """Fill the cache with one collection (`{"collection": "c"}`) or every
        declared one (`{}`), within the cache budget. It only reads, so a
        read-only instance may warm; a write-only one has no cache to fill."""
        if not self.settings.can_search:
            raise Forbidden("mode", "this instance is write-only: warm-up is refused")
        if not isinstance(payload, Mapping):
            raise InvalidInput("body", "expected a JSON object")
        unknown = sorted(set(payload) - _WARMUP_FIELDS)
        if unknown:
            raise InvalidInput(unknown[0], f"unknown field (expected {sorted(_WARMUP_FIELDS)})")
        if "collection" in payload:
            names = [self.require_schema(payload["collection"]).name]
        else:
            names = sorted(self.collections())
        return [self.searcher.warm(name) for name in names]

    def start_warmup(self) -> threading.Thread | None:
        """Warm the collections the `warmup` setting names on a background thread,
        so the first request never waits for it (its downloads join the warm-up's
        in the cache). None when there is nothing to warm."""
        if not self.settings.warmup or not self.settings.can_search:
            return None

        def run() -> None:
            try:
                if self.settings.warmup == ("*",):
                    names = sorted(self.collections())
                else:
                    names = list(self.settings.warmup)
            except (ConfigError, StorageError):
                log.warning("warm-up at start: cannot list the collections", exc_info=True)
                return
            for name in names:
                try:
                    report = self.searcher.warm(name)
                    log.info("warm-up at start: %s", report.to_dict())
                except Exception:
                    # One collection failing (missing, unreadable) must not stop the others.
                    log.warning("warm-up at start of %s failed", name, exc_info=True)

        thread = threading.Thread(target=run, name="brainy-warmup", daemon=True)
        thread.start()
        return thread

    def _cache_hit_ratio(self) -> float:
        if self._searcher is None:
            return 0.0
        cache = self._searcher.cache
        total = cache.hits + cache.misses
        return cache.hits / total if total else 0.0

    # ------------------------------------------------------------ maintenance

    def maintain(
        self,
        collection: str | None = None,
        *,
        force: bool = False,
        progress: Progress | None = None,
    ) -> list[dict]:
        """Sweep, compact, collect garbage and verify one collection, or all of them
        (`progress`: told how far each step is)."""
        if self.settings.read_only:
            raise Forbidden("mode", "a read-only instance cannot compact")
        self._require_clock()
        if collection is None:
            names = sorted(self.collections())
        else:
            names = [self.require_schema(collection).name]
        reports = []
        for name in names:
            reports.append(maintain(self.maintenance, name, force=force, progress=progress))
            self._observe_pass(name, reports[-1])
        self.flush_events()
        return reports

    def _observe_pass(self, name: str, report: Mapping[str, Any]) -> None:
        """Keep what `/metrics` reports of a maintenance pass: the index lag its
        sweep measured, and the version it left."""
        swept = report["compaction"].get("sweep")
        if swept:
            self.index_lag.record(name, swept["lag"], swept["started"])
        latest = self.manifests(name).latest(self._maintained.get(name))
        if latest is not None:
            self._maintained[name] = latest

    def _held(self) -> dict[str, Held]:
        """The collections this instance holds a manifest of, for `/metrics`."""
        return held_collections(
            [self._indexer.held() if self._indexer is not None else {}, self._maintained],
            self._searcher.views() if self._searcher is not None else {},
        )

    # ----------------------------------------------------------------- status

    def status(self, name: str) -> dict[str, Any]:
        schema = self.require_schema(name)
        manifest: Manifest | None = self.manifests(name).latest()
        stats = manifest.stats() if manifest else {"version": 0, "segments": 0, "live": 0,
                                                   "masked": 0, "rows": 0, "bytes": 0}  # fmt: skip
        return {"collection": name, "schema": schema.to_dict(), **stats}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness and readiness: storage reachable, config loaded, manifests
        readable, their segments readable by an instance that reads them
        (`PartitionAccess`: the cache, and a bounded number of HEADs), and for a
        writing instance its clock close to the store's."""
        checks: dict[str, Any] = {}
        try:
            self.store.exists(CONFIG_KEY)
            checks["storage"] = {"ok": True, "url": self.store.url}
        except StorageError as e:
            checks["storage"] = {"ok": False, "error": str(e)}
        try:
            collections = self.collections()
            checks["config"] = {"ok": True, "collections": sorted(collections)}
        except (ConfigError, StorageError) as e:
            collections = {}
            checks["config"] = {"ok": False, "error": str(e)}
        manifests: dict[str, Any] = {}
        read: dict[str, Manifest] = {}
        for name in sorted(collections):
            try:
                m = self.manifests(name).latest()
                manifests[name] = {"ok": True, "version": m.version if m else 0}
                if m is not None:
                    read[name] = m
            except (StorageError, ValueError) as e:
                manifests[name] = {"ok": False, "error": str(e)}
        checks["manifests"] = {"ok": all(v["ok"] for v in manifests.values()), **manifests}
        if self.settings.can_search:
            # A write-only instance reads no segment (and may not be allowed to).
            checks["partitions"] = self.partition_access.check(read)
        if self.clock_check is not None:
            checks["clock"] = self.clock_check.health()
        ok = all(c["ok"] for c in checks.values())
        return ok, {
            "status": "ok" if ok else "degraded",
            "instance_id": self.settings.instance_id,
            "role": self.settings.role,
            "mode": self.settings.mode,
            "uptime_s": round(time.time() - self.started, 3),
            "checks": checks,
        }

    def close(self) -> None:
        if self.broadcaster is not None:
            self.broadcaster.close()
        self.embeddings.close()
        if self._searcher is not None:
            self._searcher.close()
        self.store.close()
