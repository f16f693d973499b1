"""Modes, health, metrics and routing of the functions, on a local-folder store.

`BRAINY_MODE=write-only` makes search refuse with 403; `read-only` makes ingest
refuse with 403 and write nothing (the store refuses before any request).
"""

from __future__ import annotations

import pytest
from harness import COLLECTION, DIMENSION, FunctionServer
from prometheus_client.parser import text_string_to_metric_families

from brainy.storage import open_store
from conftest import Launcher

QUERY = {"collection": COLLECTION, "vector": [1.0] * DIMENSION, "k": 3}
RECORDS = {"collection": COLLECTION, "records": [{"id": "m", "vector": [1.0] * DIMENSION}]}


def all_keys(store_url: str) -> list[str]:
    store = open_store(store_url, read_only=True)
    try:
        return [info.key for info in store.list("")]
    finally:
        store.close()


@pytest.fixture(scope="module")
def search(launch: Launcher, file_store_url: str) -> FunctionServer:
    return launch("search", file_store_url, BRAINY_INSTANCE_ID="search-modes")


def test_write_only_search_refuses_search_with_403(launch: Launcher, file_store_url: str) -> None:
    server = launch("search", file_store_url, BRAINY_MODE="write-only")

    reply = server.post("/search", QUERY)

    assert reply.status == 403, str(reply)
    assert reply.error["field"] == "mode"
    assert "write-only" in reply.error["reason"]
    health = server.get("/health").json()
    assert (health["role"], health["mode"]) == ("search", "write-only")


def test_read_only_ingest_refuses_with_403_and_writes_nothing(
    launch: Launcher, file_store_url: str
) -> None:
    server = launch("ingest", file_store_url, BRAINY_MODE="read-only")
    before = all_keys(file_store_url)

    reply = server.post("/ingest", RECORDS, headers={"Idempotency-Key": "read-only-attempt"})

    assert reply.status == 403, str(reply)
    assert reply.error["field"] == "mode"
    assert all_keys(file_store_url) == before


def test_health_shows_instance_role_mode_status_and_checks(search: FunctionServer) -> None:
    reply = search.get("/health")

    assert reply.status == 200, str(reply)
    body = reply.json()
    assert body["instance_id"] == "search-modes"
    assert (body["role"], body["mode"], body["status"]) == ("search", "read-only", "ok")
    assert set(body["checks"]) == {"storage", "config", "manifests", "partitions"}
    assert body["checks"]["manifests"][COLLECTION] == {"ok": True, "version": 0}


def test_metrics_is_prometheus_text_with_latency_and_store_requests(
    search: FunctionServer,
) -> None:
    assert search.post("/search", QUERY).status == 200

    reply = search.get("/metrics")

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body.decode()
    assert "brainy_search_seconds" in text
    assert "brainy_object_store_requests_total" in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("brainy_search_seconds_count", ())] >= 1
    requests = ("brainy_object_store_requests_total", (("kind", "get"), ("role", "search")))
    assert samples[requests] >= 1


def test_unknown_path_and_wrong_method_answer_json(search: FunctionServer) -> None:
    missing = search.get("/nowhere")
    wrong = search.get("/search")

    assert missing.status == 404 and missing.error["field"] == "path"
    assert wrong.status == 405 and wrong.error["field"] == "method"
    assert wrong.headers["Allow"] == "POST"


def test_invalid_setting_is_reported_naming_the_variable(
    launch: Launcher, file_store_url: str
) -> None:
    server = launch("search", file_store_url, BRAINY_MIN_VERSION_TIMEOUT="soon")

    reply = server.get("/health")

    assert reply.status == 500, str(reply)
    assert reply.error["field"] == "BRAINY_MIN_VERSION_TIMEOUT"
    assert "soon" in reply.error["reason"]
