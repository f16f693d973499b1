"""What an operator reads from `GET /metrics` and `GET /health` of the real
functions (functions-framework servers on one local-folder bucket) as records are
ingested, indexed, searched and compacted: the series move as the work does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from harness import FunctionServer, Launcher, Reply, event_request
from prometheus_client.parser import text_string_to_metric_families

from brainy.storage import open_store
from brainy.table.manifest import Manifests
from servers import new_store_url

DIMENSION = 8
PARTITIONS = 4
CONFIG = {
    "collections": {"docs": {"dimension": DIMENSION, "metric": "angular", "partitions": PARTITIONS}}
}
# Long enough that the search instance never refreshes on its own during the test:
# only `min_version` moves it, so the lag between instances is deterministic.
SETTINGS = {"BRAINY_REFRESH_INTERVAL": "3600", "BRAINY_MIN_VERSION_TIMEOUT": "3"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: FunctionServer) -> Samples:
    reply = server.get("/metrics")
    assert reply.status == 200, str(reply)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series not yet created (as a counter
    that never moved is absent from the text)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(start)
    vectors = rng.normal(size=(n, DIMENSION)) + 0.1
    return [{"id": f"r{start + i}", "vector": v.tolist()} for i, v in enumerate(vectors)]


class Stack:
    """ingest, indexer, search and compactor on one bucket."""

    def __init__(self, launch: Launcher, url: str) -> None:
        self.url = url
        self.store = open_store(url)
        self.ingest = launch("ingest", url, **SETTINGS)
        self.indexer = launch("indexer", url, **SETTINGS)
        self.search = launch("search", url, **SETTINGS)
        self.compactor = launch("compactor", url, **SETTINGS)

    def put(self, batch: list[dict[str, Any]]) -> str:
        reply = self.ingest.post("/ingest", {"collection": "docs", "records": batch})
        assert reply.status == 202, str(reply)
        return reply.json()["batch"]

    def index(self, key: str) -> int:
        headers, body = event_request("gcs-binary", "local", [key])
        reply = self.indexer.post("/", data=body, headers=headers)
        assert reply.status == 200, str(reply)
        (result,) = reply.json()["results"]
        assert result["status"] == "applied", result
        return int(result["version"])

    def query(self, k: int = 3, **fields: Any) -> Reply:
        return self.search.post(
            "/search", {"collection": "docs", "vector": [1.0] * DIMENSION, "k": k, **fields}
        )

    def version(self) -> int:
        latest = Manifests(self.store, "docs").latest()
        return latest.version if latest else 0


@pytest.fixture(scope="module")
def stack(launch: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = new_store_url("file", tmp_path_factory.mktemp("metrics-bucket"))
    store = open_store(url)
    store.put("_brainy/config.json", json.dumps(CONFIG).encode())
    store.close()
    stack = Stack(launch, url)
    yield stack
    stack.store.close()


def test_ingest_counts_records_batches_and_puts(stack: Stack) -> None:
    before = scrape(stack.ingest)

    stack.put(records(3))
    stack.put(records(5, start=3))

    after = scrape(stack.ingest)
    moved = {
        name: value(after, name) - value(before, name)
        for name in (
            "brainy_records_ingested_total",
            "brainy_ingest_batch_records_count",
            "brainy_ingest_batch_records_sum",
            "brainy_ingest_seconds_count",
        )
    }
    assert moved == {
        "brainy_records_ingested_total": 8,
        "brainy_ingest_batch_records_count": 2,
        "brainy_ingest_batch_records_sum": 8,
        "brainy_ingest_seconds_count": 2,
    }
    # A batch of 3 falls in the bucket of batches of at most 10, not in that of 1.
    assert (
        value(after, "brainy_ingest_batch_records_bucket", le="10.0")
        - value(before, "brainy_ingest_batch_records_bucket", le="10.0")
        == 2
    )
    assert value(after, "brainy_ingest_batch_records_bucket", le="1.0") == 0
    puts = "brainy_object_store_requests_total"
    assert (
        value(after, puts, kind="put", role="ingest")
        - value(before, puts, kind="put", role="ingest")
        >= 2
    )


def test_indexer_and_search_report_the_collection_they_hold(stack: Stack) -> None:
    keys = [stack.put(records(4, start=100)), stack.put(records(6, start=200))]
    for key in keys:
        stack.index(key)
    version = stack.version()
    live = Manifests(stack.store, "docs").latest().live
    before = scrape(stack.search)

    reply = stack.query(k=3, min_version=version)

    assert reply.status == 200, str(reply)
    assert len(reply.json()["results"]) == 3
    after = scrape(stack.search)
    assert (
        value(after, "brainy_search_seconds_count") - value(before, "brainy_search_seconds_count")
        == 1
    )
    assert (
        value(after, "brainy_vectors_served_total") - value(before, "brainy_vectors_served_total")
        == 3
    )
    assert value(after, "brainy_searches_in_flight") == 0
    indexer = scrape(stack.indexer)
    for samples in (indexer, after):
        assert value(samples, "brainy_manifest_version", collection="docs") == version
        assert value(samples, "brainy_collection_vectors", collection="docs") == live
        assert value(samples, "brainy_collection_segments", collection="docs") >= 2
        assert value(samples, "brainy_collection_bytes", collection="docs") > 0
        assert value(samples, "brainy_consistency_lag_versions", collection="docs") == 0
    assert value(indexer, "brainy_object_store_requests_total", kind="put", role="indexer") > 0
    assert value(after, "brainy_object_store_requests_total", kind="put", role="search") == 0
    # The search instance read the segments through its cache: the ratio is a ratio.
    assert 0 <= value(after, "brainy_segment_cache_hit_ratio") <= 1


def test_a_newer_commit_shows_as_lag_between_instances_until_the_search_sees_it(
    stack: Stack,
) -> None:
    assert stack.query().status == 200
    served = value(scrape(stack.search), "brainy_manifest_version", collection="docs")

    newer = stack.index(stack.put(records(2, start=300)))

    committed = value(scrape(stack.indexer), "brainy_manifest_version", collection="docs")
    search = scrape(stack.search)
    assert committed == newer > served
    # What a dashboard computes: max over instances minus this instance's version.
    assert committed - value(search, "brainy_manifest_version", collection="docs") >= 1
    assert value(search, "brainy_manifest_checked_age_seconds", collection="docs") >= 0

    assert stack.query(min_version=newer).status == 200
    assert value(scrape(stack.search), "brainy_manifest_version", collection="docs") == newer


def test_concurrent_searches_show_in_flight(stack: Stack) -> None:
    # A search for a version never committed waits (BRAINY_MIN_VERSION_TIMEOUT) before
    # answering 409 or similar: it is in flight meanwhile.
    waiting = threading.Thread(target=lambda: stack.query(min_version=10**6))
    waiting.start()
    seen = 0.0
    try:
        while waiting.is_alive() and seen == 0:
            seen = value(scrape(stack.search), "brainy_searches_in_flight")
    finally:
        waiting.join()
    assert seen == 1
    assert value(scrape(stack.search), "brainy_searches_in_flight") == 0


def test_a_sweep_reports_the_index_lag_of_a_lost_event_then_none(stack: Stack) -> None:
    lost = stack.put(records(3, start=400))
    started = time.time()

    first = stack.compactor.post("/compact", {"collection": "docs"})

    assert first.status == 200, str(first)
    (report,) = first.json()["collections"]
    # Every batch whose event never came (this one, and the first test's) is applied.
    indexed = report["compaction"]["sweep"]["indexed_keys"]
    assert lost in indexed
    written = min(stack.store.head(key).modified for key in indexed)
    samples = scrape(stack.compactor)
    lag = value(samples, "brainy_index_lag_seconds", collection="docs")
    measured = value(samples, "brainy_index_lag_measured_timestamp_seconds", collection="docs")
    assert started <= measured <= time.time()
    assert lag == pytest.approx(measured - written, abs=1e-3)
    assert lag > 0

    second = stack.compactor.post("/compact", {"collection": "docs"})

    assert second.status == 200, str(second)
    samples = scrape(stack.compactor)
    assert value(samples, "brainy_index_lag_seconds", collection="docs") == 0
    assert (
        value(samples, "brainy_index_lag_measured_timestamp_seconds", collection="docs") > measured
    )
    # Only the compactor sweeps: the others never claim a lag they did not measure.
    assert ("brainy_index_lag_seconds", frozenset({("collection", "docs")})) not in scrape(
        stack.search
    )


def test_compaction_shows_partition_count_and_sizes(stack: Stack) -> None:
    reply = stack.compactor.post("/compact", {"collection": "docs", "force": True})

    assert reply.status == 200, str(reply)
    manifest = Manifests(stack.store, "docs").latest()
    partitioned = {ref.partition for ref in manifest.segments if ref.level > 0}
    assert len(partitioned) > 1
    for server in (stack.compactor, stack.search):
        if server is stack.search:
            assert stack.query(min_version=manifest.version).status == 200
        samples = scrape(server)
        assert value(samples, "brainy_manifest_version", collection="docs") == manifest.version
        assert value(samples, "brainy_partitions", collection="docs") == len(partitioned)
        assert value(samples, "brainy_partition_vectors_gcount", collection="docs") == len(
            partitioned
        )
        assert value(samples, "brainy_partition_vectors_gsum", collection="docs") == sum(
            ref.live for ref in manifest.segments if ref.level > 0
        )
        everything = value(samples, "brainy_partition_vectors_bucket", collection="docs", le="+Inf")
        assert everything == len(partitioned)
        assert value(samples, "brainy_collection_vectors", collection="docs") == manifest.live


def test_every_function_serves_health_and_metrics(stack: Stack) -> None:
    for server in (stack.ingest, stack.indexer, stack.search, stack.compactor):
        health = server.get("/health")
        assert health.status == 200, str(health)
        assert health.json()["role"] == server.name
        # Ingest reads no segment (least privilege may forbid it): nothing to check.
        assert ("partitions" in health.json()["checks"]) == (server is not stack.ingest)
        assert "brainy_clock_skew_seconds" in server.get("/metrics").body.decode()


def test_health_reports_partition_access_and_a_lost_segment(stack: Stack) -> None:
    healthy = stack.search.get("/health")
    assert healthy.status == 200, str(healthy)
    access = healthy.json()["checks"]["partitions"]
    manifest = Manifests(stack.store, "docs").latest()
    assert access["ok"] is True
    assert access["docs"]["segments"] == len(manifest.segments)
    assert access["docs"]["cached"] + access["docs"]["probed"] >= 1
    assert access["docs"]["unreadable"] == []

    # A segment object lost from the bucket: the indexer, which caches none, finds
    # it within as many checks as it takes its bounded probes to reach it.
    lost = manifest.segments[0].key
    stack.store.delete(lost)
    replies = [stack.indexer.get("/health") for _ in range(len(manifest.segments))]

    failing = [r for r in replies if r.status == 503]
    assert failing, [str(r) for r in replies]
    partitions = failing[0].json()["checks"]["partitions"]
    assert partitions["ok"] is False
    assert partitions["docs"]["unreadable"] == [{"key": lost, "error": "not found"}]
    assert all(r.json()["checks"]["partitions"]["docs"]["probed"] <= 2 for r in replies)
