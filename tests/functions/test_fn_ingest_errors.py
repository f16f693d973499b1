"""Bad ingest input (DESIGN §7): a 4xx whose JSON names the field and the reason,
and nothing written under `<collection>/wal/` — on every backend.

Bodies are raw bytes, as a client could send them: JSON has no NaN, but Python's
`json` (and so the server) reads the tokens `NaN` and `Infinity`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from harness import COLLECTION, MAX_BODY_SIZE, Deployment

GOOD = [0.5, -0.25, 1.0, 2.0, -1.5, 0.125, 3.0, -0.75]


def records_body(*records: dict | str, collection: str = COLLECTION) -> bytes:
    """A request body; a `str` record is spliced in verbatim (for NaN and friends)."""
    parts = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return f'{{"collection": {json.dumps(collection)}, "records": [{", ".join(parts)}]}}'.encode()


@dataclass(frozen=True)
class Bad:
    body: bytes | Callable[[], Iterator[bytes]]  # a callable makes a chunked body
    status: int
    field: str
    reason: str  # a fragment the reason must contain (case-insensitive)
    content_type: str = "application/json"
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None


def chunked_oversize() -> Iterator[bytes]:
    """A body sent chunked (no Content-Length): the server must count what it reads."""
    yield b'{"collection": "docs", "records": [], "pad": "'
    for _ in range(MAX_BODY_SIZE // 8192 + 1):
        yield b"x" * 8192
    yield b'"}'


CASES = {
    "wrong dimension": Bad(
        records_body({"id": "a", "vector": GOOD[:7]}), 400, "records[0].vector", "dimension"
    ),
    "NaN": Bad(
        records_body('{"id": "a", "vector": [0.1, 0.2, NaN, 0.4, 0.5, 0.6, 0.7, 0.8]}'),
        400, "records[0].vector[2]", "NaN",
    ),
    "Infinity": Bad(
        records_body('{"id": "a", "vector": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, Infinity]}'),
        400, "records[0].vector[7]", "Infinity",
    ),
    "-Infinity": Bad(
        records_body('{"id": "a", "vector": [-Infinity, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}'),
        400, "records[0].vector[0]", "Infinity",
    ),
    "float32 overflow": Bad(
        records_body({"id": "a", "vector": [1e39, *GOOD[1:]]}), 400, "records[0].vector",
        "float32",
    ),
    "string in vector": Bad(
        records_body({"id": "a", "vector": ["1", *GOOD[1:]]}), 400, "records[0].vector[0]",
        "number",
    ),
    "missing id": Bad(records_body({"vector": GOOD}), 400, "records[0].id", "non-empty string"),
    "empty id": Bad(records_body({"id": "", "vector": GOOD}), 400, "records[0].id", "non-empty"),
    "numeric id": Bad(records_body({"id": 7, "vector": GOOD}), 400, "records[0].id", "string"),
    "over-long id": Bad(
        records_body({"id": "x" * 513, "vector": GOOD}), 400, "records[0].id", "longer than 512"
    ),
    "control character in id": Bad(
        records_body({"id": "a\nb", "vector": GOOD}), 400, "records[0].id", "control"
    ),
    "bad second record": Bad(
        records_body({"id": "fine", "vector": GOOD}, {"id": "b", "vector": GOOD[:3]}),
        400, "records[1].vector", "dimension",
    ),
    "unknown collection": Bad(
        records_body({"id": "a", "vector": GOOD}, collection="nope"), 404, "collection", "nope"
    ),
    "missing collection": Bad(
        json.dumps({"records": [{"id": "a", "vector": GOOD}]}).encode(), 400, "collection",
        "required",
    ),
    "body too large": Bad(
        records_body({"id": "a", "vector": GOOD, "metadata": {"pad": "x" * MAX_BODY_SIZE}}),
        413, "body", str(MAX_BODY_SIZE),
    ),
    "body too large, chunked": Bad(chunked_oversize, 413, "body", str(MAX_BODY_SIZE)),
    "malformed JSON": Bad(b'{"collection": "docs", "records": [', 400, "body", "malformed JSON"),
    "not an object": Bad(b"[1, 2, 3]", 400, "body", "object"),
    "malformed NDJSON line": Bad(
        json.dumps({"id": "a", "vector": GOOD}).encode() + b"\n{oops\n",
        400, "line 2", "malformed JSON",
        content_type="application/x-ndjson", params={"collection": COLLECTION},
    ),
    "zero vector on angular": Bad(
        records_body({"id": "a", "vector": [0] * 8}), 400, "records[0].vector", "zero vector"
    ),
    "unknown request field": Bad(
        json.dumps({"collection": COLLECTION, "records": [], "upserts": []}).encode(),
        400, "upserts", "unknown field",
    ),
    "unknown record field": Bad(
        records_body({"id": "a", "vectors": GOOD}), 400, "records[0].vectors", "unknown field"
    ),
    "vector and text": Bad(
        records_body({"id": "a", "vector": GOOD, "text": "hello"}), 400, "records[0]",
        "exactly one of vector or text",
    ),
    "neither vector nor text": Bad(
        records_body({"id": "a"}), 400, "records[0]", "exactly one of vector or text"
    ),
    "metadata not an object": Bad(
        records_body({"id": "a", "vector": GOOD, "metadata": [1]}), 400, "records[0].metadata",
        "object",
    ),
    "nothing to ingest": Bad(records_body(), 400, "records", "nothing to ingest"),
    "delete also upserted": Bad(
        json.dumps(
            {"collection": COLLECTION, "records": [{"id": "a", "vector": GOOD}], "deletes": ["a"]}
        ).encode(),
        400, "deletes[0]", "also upserted",
    ),
    "bad Idempotency-Key": Bad(
        records_body({"id": "a", "vector": GOOD}), 400, "Idempotency-Key", "printable ASCII",
        headers={"Idempotency-Key": "k" * 256},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_gets_a_4xx_naming_the_field_and_writes_nothing(
    deployment: Deployment, case: Bad
) -> None:
    before = deployment.wal_keys()

    reply = deployment.ingest.post(
        "/ingest",
        data=case.body if isinstance(case.body, bytes) else case.body(),
        headers={"Content-Type": case.content_type, **(case.headers or {})},
        params=case.params,
    )

    assert reply.status == case.status, str(reply)
    error = reply.error
    assert error["field"] == case.field, error
    assert case.reason.lower() in error["reason"].lower(), error
    assert case.field in error["message"]
    assert deployment.wal_keys() == before


def ingest_with_key(deployment: Deployment, key: str, vector: list[float]):
    body = {"collection": COLLECTION, "records": [{"id": "idem", "vector": vector}]}
    return deployment.ingest.post("/ingest", body, headers={"Idempotency-Key": key})


def test_same_idempotency_key_twice_writes_one_batch(deployment: Deployment) -> None:
    key = f"client-{uuid.uuid4()}"
    before = set(deployment.wal_keys())

    first = ingest_with_key(deployment, key, GOOD)
    second = ingest_with_key(deployment, key, GOOD)

    assert (first.status, second.status) == (202, 202), (str(first), str(second))
    assert first.json() == second.json()
    assert set(deployment.wal_keys()) - before == {first.json()["batch"]}


def test_same_idempotency_key_with_another_body_is_refused(deployment: Deployment) -> None:
    key = f"client-{uuid.uuid4()}"
    first = ingest_with_key(deployment, key, GOOD)
    assert first.status == 202, str(first)
    before = deployment.wal_keys()

    reply = ingest_with_key(deployment, key, [-x for x in GOOD])

    assert reply.status == 422, str(reply)
    assert reply.error["field"] == "Idempotency-Key"
    assert "different" in reply.error["reason"]
    assert deployment.wal_keys() == before


def test_idempotent_retry_is_indexed_once(deployment: Deployment) -> None:
    key = f"client-{uuid.uuid4()}"
    vector = [0.3, 0.1, -0.4, 0.15, 0.9, -0.2, 0.65, 0.35]
    body = {"collection": COLLECTION, "records": [{"id": f"retry-{key}", "vector": vector}]}
    replies = [
        deployment.ingest.post("/ingest", body, headers={"Idempotency-Key": key}) for _ in range(2)
    ]
    batch = replies[0].json()["batch"]
    version = deployment.index(batch)

    found = deployment.query(vector, k=20, min_version=version).json()["results"]

    assert [hit["id"] for hit in found].count(f"retry-{key}") == 1
