"""Prometheus metrics of one instance (served at `GET /metrics`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)


class Metrics:
    """One registry per instance, so tests and several instances in one process
    do not share counters."""

    def __init__(
        self,
        cache_hit_ratio: Callable[[], float] | None = None,
        clock_skew: Callable[[], float] | None = None,
        search_recall: Callable[[], float] | None = None,
        embedding_cache_hit_ratio: Callable[[], float] | None = None,
        role: str = "",
    ) -> None:
        self.registry = CollectorRegistry()
        self.role = role
        self.search_seconds = Histogram(
            "brainy_search_seconds", "Search latency", registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.ingest_seconds = Histogram(
            "brainy_ingest_seconds", "Ingest latency (until the batch is durable)",
            registry=self.registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.index_seconds = Histogram(
            "brainy_index_seconds", "Batch indexing latency (build, upload, commit)",
            registry=self.registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.store_requests = Counter(
            "brainy_object_store_requests",
            "Object-store requests by kind and by the role of the instance sending them",
            ["kind", "role"], registry=self.registry,
        )  # fmt: skip
        self.searches_in_flight = Gauge(
            "brainy_searches_in_flight", "Searches being answered now", registry=self.registry
        )
        self.ingest_batch_records = Histogram(
            "brainy_ingest_batch_records", "Records (upserts and deletes) per ingested batch",
            registry=self.registry, buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self.vectors_served = Counter(
            "brainy_vectors_served", "Search results returned", registry=self.registry
        )
        self.records_ingested = Counter(
            "brainy_records_ingested", "Records made durable by ingest", registry=self.registry
        )
        self.cache_hit_ratio = Gauge(
            "brainy_segment_cache_hit_ratio", "Segment cache hits / lookups",
            registry=self.registry,
        )  # fmt: skip
        if cache_hit_ratio is not None:
            self.cache_hit_ratio.set_function(cache_hit_ratio)
        self.clock_skew = Gauge(
            "brainy_clock_skew_seconds",
            "Local clock minus the object store's, as last measured (NaN: not measured;"
            " only writing instances measure)",
            registry=self.registry,
        )
        self.clock_skew.set_function(clock_skew or (lambda: float("nan")))
        self.search_recall = Gauge(
            "brainy_search_recall",
            "Recall@k of sampled queries against an exact re-run, averaged over the"
            " latest 100 (NaN: none measured; see the recall_sample setting)",
            registry=self.registry,
        )
        self.search_recall.set_function(search_recall or (lambda: float("nan")))
        self.recall_samples = Counter(
            "brainy_search_recall_samples",
            "Sampled queries whose recall was measured",
            registry=self.registry,
        )
        self.events_published = Counter(
            "brainy_events_published",
            "Index-updated events by sink and outcome (ok, error, dropped: the queue was full)",
            ["sink", "outcome"],
            registry=self.registry,
        )
        self.events_received = Counter(
            "brainy_events_received",
            "Index-updated events received on POST /events, by outcome (refreshed,"
            " unchanged: the version was already served, confirmed, ignored)",
            ["outcome"],
            registry=self.registry,
        )

        self.embedding_cache_hit_ratio = Gauge(
            "brainy_embedding_cache_hit_ratio",
            "Texts whose embedding came from the embedding cache (in-process or the"
            " bucket's) / texts looked up",
            registry=self.registry,
        )
        self.embedding_cache_hit_ratio.set_function(embedding_cache_hit_ratio or (lambda: 0.0))
        self.embeddings_computed = Counter(
            "brainy_embeddings_computed",
            "Texts sent to a cached embedder (minilm, openai): the embedding cache's misses",
            registry=self.registry,
        )

    def count_event(self, sink: str, outcome: str) -> None:
        self.events_published.labels(sink=sink, outcome=outcome).inc()

    def count_request(self, kind: str) -> None:
        self.store_requests.labels(kind=kind, role=self.role).inc()

    def register(self, collector: Collector) -> None:
        """Add a collector computed at each scrape (`service.observe`)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
