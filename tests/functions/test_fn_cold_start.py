"""A search function's first requests arriving together (functions-framework serves
them on threads): every one answers over everything committed, one Brainy instance
serves them all, and each segment is downloaded once.

The bucket holds `BATCHES` versions behind a stale `_latest` hint (as a writer that
stopped between its commit and the hint leaves it), so the first refresh has to
probe forward through them all: that is the window the concurrent searches land in.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from harness import COLLECTION, DIMENSION, FunctionServer, Launcher, Reply, event_request
from prometheus_client.parser import text_string_to_metric_families

from brainy.storage import open_store

BATCHES = 24
CONCURRENT = 16
K = 3


@pytest.fixture(scope="module")
def vectors(launch: Launcher, file_store_url: str) -> np.ndarray:
    """`BATCHES` one-record batches, each indexed in its own version; `_latest` left
    pointing at version 1."""
    ingest, indexer = launch("ingest", file_store_url), launch("indexer", file_store_url)
    data = np.random.default_rng(3).normal(size=(BATCHES, DIMENSION))
    for i, vector in enumerate(data.tolist()):
        reply = ingest.post(
            "/ingest", {"collection": COLLECTION, "records": [{"id": f"c{i}", "vector": vector}]}
        )
        headers, body = event_request("gcs-binary", "local", [reply.json()["batch"]])
        assert indexer.post("/", data=body, headers=headers).status == 200
    store = open_store(file_store_url)
    store.put(f"{COLLECTION}/manifests/_latest", json.dumps({"version": 1}).encode())
    store.close()
    return data


def expected_ids(vectors: np.ndarray, query: np.ndarray) -> list[str]:
    cosine = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    return [f"c{i}" for i in np.argsort(-cosine)[:K]]


def first_searches(
    launch: Launcher, store_url: str, query: np.ndarray
) -> tuple[FunctionServer, list[Reply]]:
    """A fresh search function, and its first `CONCURRENT` searches sent at once."""
    search = launch("search", store_url, THREADS=str(CONCURRENT))
    body = {"collection": COLLECTION, "vector": query.tolist(), "k": K}
    start = threading.Barrier(CONCURRENT)

    def one(_: int) -> Reply:
        start.wait()
        return search.post("/search", body)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        replies = list(pool.map(one, range(CONCURRENT)))
    assert {r.status for r in replies} == {200}, [str(r) for r in replies]
    return search, replies


def test_concurrent_first_searches_all_see_what_is_committed(
    launch: Launcher, file_store_url: str, vectors: np.ndarray
) -> None:
    _, replies = first_searches(launch, file_store_url, vectors[0])

    answers = [(r.json()["version"], [h["id"] for h in r.json()["results"]]) for r in replies]
    assert answers == [(BATCHES, expected_ids(vectors, vectors[0]))] * CONCURRENT


def test_concurrent_first_searches_share_one_instance_and_one_load_per_segment(
    launch: Launcher, file_store_url: str, vectors: np.ndarray
) -> None:
    search, _ = first_searches(launch, file_store_url, vectors[1])
    # Whatever the first burst saw, a later search sees every segment.
    assert (
        search.post(
            "/search", {"collection": COLLECTION, "vector": vectors[1].tolist(), "k": K}
        ).json()["version"]
        == BATCHES
    )

    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(search.get("/metrics").body.decode())
        for s in family.samples
    }
    assert samples[("brainy_search_seconds_count", ())] == CONCURRENT + 1
    # One load a segment, shared by the concurrent searches (the folder store's
    # segments are read in place: an `open` each, no download).
    assert samples[("brainy_object_store_requests_total", ("open", "search"))] == BATCHES
    assert ("brainy_object_store_requests_total", ("download", "search")) not in samples
