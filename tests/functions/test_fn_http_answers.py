"""The search function over HTTP answers exactly what `Brainy.search` answers in
process: the same hits (ids, scores, metadata) in the same order and the same
version, for a collection of one segment (searched on the request's thread) and
one of several (searched on the query pool); and a bad request gets the same
error, naming the field and the reason, as the layer raises."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import FunctionServer

from brainy.core.errors import BrainyError
from brainy.maintenance.compaction import compact
from brainy.service.app import Brainy
from conftest import Launcher
from helpers import declare, make_app
from servers import new_store_url

DIMENSION = 8


def _fill(url: str, tmp_path: Path) -> None:
    """`one`: 400 rows compacted into one segment; `many`: three level-0 segments."""
    rng = np.random.default_rng(11)
    writer = make_app(url, tmp_path)
    for name, batches in (("one", 2), ("many", 3)):
        declare(writer, name, dimension=DIMENSION)
        for b in range(batches):
            records = [
                {
                    "id": f"{name}-{b}-{i}",
                    "vector": rng.standard_normal(DIMENSION).tolist(),
                    "metadata": {"i": i, "tag": ["red", "blue"][i % 2], "w": i / 7},
                }
                for i in range(200)
            ]
            writer.index_key(writer.ingest({"collection": name, "records": records}).batch)
    assert compact(writer.maintenance, "one", force=True).status == "compacted"
    writer.close()


@pytest.fixture(scope="module")
def served(
    launch: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FunctionServer, Brainy]]:
    """One search function, and an in-process search instance, on one filled store."""
    tmp_path = tmp_path_factory.mktemp("answers")
    url = new_store_url("file", tmp_path)
    _fill(url, tmp_path)
    search = launch("search", url, BRAINY_MODE="read-only", BRAINY_REFRESH_INTERVAL="3600")
    app = make_app(url, tmp_path, "search", BRAINY_MODE="read-only")
    yield search, app
    app.close()


def _expected(app: Brainy, payload: dict[str, Any]) -> dict[str, Any]:
    result = app.search(payload)
    return {"results": [hit.to_dict() for hit in result.hits], "version": result.version}


@pytest.mark.parametrize("collection", ["one", "many"])
def test_http_answers_equal_in_process_answers(
    served: tuple[FunctionServer, Brainy], collection: str
) -> None:
    search, app = served
    rng = np.random.default_rng(3)
    payloads: list[dict[str, Any]] = [
        {"collection": collection, "vector": rng.standard_normal(DIMENSION).tolist(), "k": k}
        for k in (1, 5, 10, 50)
    ]
    payloads.append({**payloads[1], "filter": {"tag": "blue"}})
    payloads.append({**payloads[2], "recall_target": 1.0})
    for payload in payloads:
        reply = search.post("/search", payload)
        assert reply.status == 200, str(reply)
        body = reply.json()
        assert set(body) == {"results", "version", "took_ms"}
        assert body["took_ms"] >= 0
        expected = _expected(app, payload)
        assert body["version"] == expected["version"] > 0
        assert body["results"] == expected["results"], payload
        assert len(body["results"]) == payload["k"]


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("wrong dimension", {"collection": "one", "vector": [0.5] * (DIMENSION - 1)}, "vector"),
    ("a string element", {"collection": "one", "vector": [0.5] * 7 + ["x"]}, "vector[7]"),
    ("NaN", {"collection": "one", "vector": [0.5] * 7 + [float("nan")]}, "vector[7]"),
    ("k zero", {"collection": "one", "vector": [0.5] * DIMENSION, "k": 0}, "k"),
    ("unknown field", {"collection": "one", "vector": [0.5] * DIMENSION, "kk": 1}, "kk"),
    ("no collection", {"vector": [0.5] * DIMENSION}, "collection"),
    ("unknown collection", {"collection": "nope", "vector": [0.5] * DIMENSION}, "collection"),
    ("not an object", [1, 2, 3], "body"),
    ("nested filter", {"collection": "one", "vector": [1.0] * 8, "filter": {"a": []}}, "filter.a"),
]


@pytest.mark.parametrize(
    ("case", "payload", "field"), BAD_REQUESTS, ids=[case for case, _, _ in BAD_REQUESTS]
)
def test_bad_requests_get_the_layers_error_naming_the_field(
    served: tuple[FunctionServer, Brainy], case: str, payload: Any, field: str
) -> None:
    search, app = served
    with pytest.raises(BrainyError) as raised:
        app.search(payload)
    reply = search.post("/search", data=json.dumps(payload).encode())
    assert reply.status == raised.value.status, str(reply)
    assert reply.json() == raised.value.to_dict()
    assert reply.error["field"] == field
    assert reply.error["reason"]


def test_malformed_json_is_refused_naming_the_body(served: tuple[FunctionServer, Brainy]) -> None:
    search, _ = served
    reply = search.post("/search", data=b'{"collection": "one", "vector": [0.5, ')
    assert reply.status == 400, str(reply)
    assert reply.error["field"] == "body"
    assert "malformed JSON" in reply.error["reason"]
