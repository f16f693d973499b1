"""Ingest over HTTP → the platform's event → the indexer → search, on every backend.

Each function runs as its own functions-framework process; they share nothing but
the bucket (a local folder, a moto S3 bucket, a fake-gcs-server bucket).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pytest
from harness import COLLECTION, DIMENSION, MAX_BODY_SIZE, Deployment

rng = np.random.default_rng(20240611)


def random_vector() -> list[float]:
    return rng.normal(size=DIMENSION).round(6).tolist()


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def hits(deployment: Deployment, vector: list[float], version: int, k: int = 10) -> list[dict]:
    reply = deployment.query(vector, k=k, min_version=version)
    assert reply.status == 200, str(reply)
    body = reply.json()
    assert body["version"] >= version
    assert isinstance(body["took_ms"], (int, float))
    return body["results"]


def assert_found_first(results: list[dict], rid: str, metadata: Any) -> None:
    assert results, "no results"
    assert results[0]["id"] == rid, results
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert results[0]["metadata"] == metadata


def test_ingest_answers_202_only_with_the_batch_durable(deployment: Deployment) -> None:
    rid = new_id("durable")
    reply = deployment.ingest.post(
        "/ingest",
        {"collection": COLLECTION, "records": [{"id": rid, "vector": random_vector()}]},
    )

    assert reply.status == 202, str(reply)
    body = reply.json()
    assert set(body) == {"batch", "accepted", "deleted"}
    assert (body["accepted"], body["deleted"]) == (1, 0)
    assert body["batch"].startswith(f"{COLLECTION}/wal/") and body["batch"].endswith(".batch")
    assert deployment.store.exists(body["batch"])


def test_every_delivery_form_of_the_platform_makes_a_record_searchable(
    deployment: Deployment,
) -> None:
    for form in deployment.forms:
        rid, vector = new_id(form), random_vector()
        metadata = {"form": form, "n": 1}
        key = deployment.put_records([{"id": rid, "vector": vector, "metadata": metadata}])

        version = deployment.index(key, form=form)

        assert_found_first(hits(deployment, vector, version), rid, metadata)


def test_ndjson_with_collection_parameter(deployment: Deployment) -> None:
    ids = [new_id("nd"), new_id("nd")]
    vectors = [random_vector(), random_vector()]
    lines = [
        json.dumps({"id": rid, "vector": vec, "metadata": {"line": i}})
        for i, (rid, vec) in enumerate(zip(ids, vectors, strict=True))
    ]
    lines.append(json.dumps({"delete": new_id("never-written")}))
    reply = deployment.ingest.post(
        "/ingest",
        data="\n".join(lines).encode() + b"\n",
        headers={"Content-Type": "application/x-ndjson"},
        params={"collection": COLLECTION},
    )

    assert reply.status == 202, str(reply)
    body = reply.json()
    assert (body["accepted"], body["deleted"]) == (2, 1)
    assert deployment.store.exists(body["batch"])
    version = deployment.index(body["batch"])
    for i, (rid, vec) in enumerate(zip(ids, vectors, strict=True)):
        assert_found_first(hits(deployment, vec, version), rid, {"line": i})


def test_deleted_id_no_longer_appears(deployment: Deployment) -> None:
    rid, vector = new_id("deleted"), random_vector()
    version = deployment.index(deployment.put_records([{"id": rid, "vector": vector}]))
    assert_found_first(hits(deployment, vector, version), rid, None)

    version = deployment.index(deployment.delete_ids([rid]))

    assert rid not in [hit["id"] for hit in hits(deployment, vector, version, k=100)]


def test_upserted_id_shows_its_newest_vector_and_metadata(deployment: Deployment) -> None:
    rid, old, new = new_id("upsert"), random_vector(), random_vector()
    deployment.index(deployment.put_records([{"id": rid, "vector": old, "metadata": {"v": 1}}]))

    version = deployment.index(
        deployment.put_records([{"id": rid, "vector": new, "metadata": {"v": 2}}])
    )

    assert_found_first(hits(deployment, new, version), rid, {"v": 2})
    copies = [hit for hit in hits(deployment, old, version, k=100) if hit["id"] == rid]
    assert len(copies) == 1
    assert copies[0]["metadata"] == {"v": 2}
    assert copies[0]["score"] == pytest.approx(cosine(old, new), abs=1e-4)


def test_min_version_reads_your_writes(deployment: Deployment) -> None:
    rid, vector = new_id("ryw"), random_vector()
    version = deployment.index(deployment.put_records([{"id": rid, "vector": vector}]))

    reply = deployment.query(vector, k=1, min_version=version)

    assert reply.status == 200, str(reply)
    assert reply.json()["version"] >= version
    assert reply.json()["results"][0]["id"] == rid


def test_min_version_never_committed_answers_503_after_the_timeout(
    deployment: Deployment,
) -> None:
    ahead = deployment.version() + 1000

    reply = deployment.query(random_vector(), min_version=ahead)

    assert reply.status == 503, str(reply)
    assert reply.error["field"] == "min_version"
    assert str(ahead) in reply.error["reason"]


def test_same_event_twice_changes_nothing_the_second_time(deployment: Deployment) -> None:
    rid, vector = new_id("twice"), random_vector()
    key = deployment.put_records([{"id": rid, "vector": vector}])
    version = deployment.index(key)

    for form in deployment.forms:
        reply = deployment.deliver(key, form=form)
        assert reply.status == 200, str(reply)
        (result,) = reply.json()["results"]
        assert (result["status"], result["version"]) == ("already-applied", version)

    assert deployment.version() == version
    assert [hit["id"] for hit in hits(deployment, vector, version)].count(rid) == 1


@pytest.mark.parametrize(
    "name",
    [
        "docs/segments/0123abcd/segment.bin",
        "docs/manifests/_latest",
        "_brainy/config.json",
        "notes/readme.txt",
        "docs/wal/2024/01/01/w/not-a-batch.json",
    ],
)
def test_event_for_an_object_outside_the_wal_is_acknowledged_and_ignored(
    deployment: Deployment, name: str
) -> None:
    before = deployment.version()
    for form in deployment.forms:
        reply = deployment.deliver_names([deployment.object_name(name)], form=form)

        assert reply.status == 200, f"{form}: {reply}"
        (result,) = reply.json()["results"]
        assert result["status"] == "ignored", (form, result)
    assert deployment.version() == before


def test_health_reports_instance_role_mode_and_checks(deployment: Deployment) -> None:
    for server, mode in zip(
        deployment.servers, ("write-only", "read-write", "read-only"), strict=True
    ):
        reply = server.get("/health")

        assert reply.status == 200, str(reply)
        body = reply.json()
        assert body["instance_id"] == f"{server.name}-{deployment.kind}"
        assert (body["role"], body["mode"], body["status"]) == (server.name, mode, "ok")
        checks = body["checks"]
        assert checks["storage"]["ok"] and checks["config"]["ok"] and checks["manifests"]["ok"]
        assert checks["config"]["collections"] == [COLLECTION]


@pytest.mark.parametrize("recall_target", [0.5, 0.9, 1])
def test_search_accepts_a_recall_target(file_deployment: Deployment, recall_target: float) -> None:
    rid = new_id("recall")
    vector = random_vector()
    version = file_deployment.index(file_deployment.put_records([{"id": rid, "vector": vector}]))

    reply = file_deployment.query(vector, k=3, min_version=version, recall_target=recall_target)

    assert reply.status == 200, str(reply)
    assert_found_first(reply.json()["results"], rid, None)


def test_too_large_body_is_refused_by_every_function(deployment: Deployment) -> None:
    body = b"{" + b" " * MAX_BODY_SIZE + b"}"
    for server, path in zip(deployment.servers, ("/ingest", "/", "/search"), strict=True):
        reply = server.post(path, data=body, headers={"Content-Type": "application/json"})
        assert reply.status == 413, f"{server.name}: {reply}"
        assert reply.error["field"] == "body"


def test_filter_returns_the_k_best_matching_records(deployment: Deployment) -> None:
    tag = uuid.uuid4().hex[:8]
    records = [
        {
            "id": f"filter-{tag}-{i}",
            "vector": random_vector(),
            "metadata": {"tag": tag, "color": "red" if i % 3 == 0 else "blue"},
        }
        for i in range(30)
    ]
    version = deployment.index(deployment.put_records(records))
    query = random_vector()
    red = [r for r in records if r["metadata"]["color"] == "red"]
    best = sorted(red, key=lambda r: -cosine(r["vector"], query))[:5]

    reply = deployment.query(query, k=5, filter={"tag": tag, "color": "red"}, min_version=version)

    assert reply.status == 200, str(reply)
    assert [hit["id"] for hit in reply.json()["results"]] == [r["id"] for r in best]


def test_text_record_is_found_by_the_same_text(deployment: Deployment) -> None:
    rid = new_id("text")
    text = f"object storage is the only source of truth {rid}"
    version = deployment.index(deployment.put_records([{"id": rid, "text": text}]))

    reply = deployment.search.post(
        "/search", {"collection": COLLECTION, "text": text, "k": 3, "min_version": version}
    )

    assert reply.status == 200, str(reply)
    assert_found_first(reply.json()["results"], rid, None)


def test_corrupt_batch_is_quarantined_and_acknowledged(deployment: Deployment) -> None:
    key = f"{COLLECTION}/wal/2024/01/01/writer/{uuid.uuid4().hex}.batch"
    deployment.store.put(key, b"BRAINYB1 this is not a batch")
    before = deployment.version()

    first = deployment.deliver(key)
    again = deployment.deliver_names([deployment.object_name(key)])

    assert first.status == 200, str(first)
    assert first.json()["results"][0]["status"] == "quarantined"
    assert not deployment.store.exists(key)
    assert deployment.store.exists(f"{COLLECTION}/quarantine/{key.partition('/')[2]}")
    assert again.status == 200, str(again)
    assert again.json()["results"][0]["status"] != "applied"
    assert deployment.version() == before


SEARCH_ERRORS = {
    "wrong dimension": ({"vector": [1.0] * 3}, 400, "vector"),
    "zero vector": ({"vector": [0.0] * DIMENSION}, 400, "vector"),
    "k zero": ({"vector": [1.0] * DIMENSION, "k": 0}, 400, "k"),
    "k not a number": ({"vector": [1.0] * DIMENSION, "k": "ten"}, 400, "k"),
    "unknown collection": ({"collection": "nope", "vector": [1.0] * DIMENSION}, 404, "collection"),
    "no vector nor text": ({}, 400, "vector"),
    "unknown field": ({"vector": [1.0] * DIMENSION, "limit": 3}, 400, "limit"),
    "filter not scalar": ({"vector": [1.0] * DIMENSION, "filter": {"a": [1]}}, 400, "filter.a"),
    "negative min_version": ({"vector": [1.0] * DIMENSION, "min_version": -1}, 400, "min_version"),
    "recall_target above 1": (
        {"vector": [1.0] * DIMENSION, "recall_target": 1.5},
        400,
        "recall_target",
    ),
    "recall_target below 0.5": (
        {"vector": [1.0] * DIMENSION, "recall_target": 0.2},
        400,
        "recall_target",
    ),
    "recall_target not a number": (
        {"vector": [1.0] * DIMENSION, "recall_target": "high"},
        400,
        "recall_target",
    ),
}


@pytest.mark.parametrize("case", list(SEARCH_ERRORS.values()), ids=list(SEARCH_ERRORS))
def test_bad_search_gets_a_4xx_naming_the_field(
    file_deployment: Deployment, case: tuple[dict, int, str]
) -> None:
    fields, status, field = case

    reply = file_deployment.search.post("/search", {"collection": COLLECTION, **fields})

    assert reply.status == status, str(reply)
    assert reply.error["field"] == field
    assert reply.error["reason"]


def test_malformed_search_body_gets_400(file_deployment: Deployment) -> None:
    reply = file_deployment.search.post(
        "/search", data=b'{"collection": "docs", "vector": [1,', headers={}
    )

    assert reply.status == 400, str(reply)
    assert reply.error["field"] == "body"
