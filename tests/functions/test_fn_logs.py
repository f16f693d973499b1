"""Structured logs: functions served by functions-framework with
`BRAINY_LOG_FORMAT=json` write one JSON object a line, carrying the request's id
(the client's, or its trace's) and the collection and version it worked on."""

from __future__ import annotations

import json
import time
from typing import Any

from harness import COLLECTION, DIMENSION, FunctionServer

from brainy.service.app import Brainy
from conftest import Launcher

VECTOR = [1.0] + [0.0] * (DIMENSION - 1)


def log_lines(server: FunctionServer, wanted: int = 1, within: float = 10.0) -> list[Any]:
    """Every line the server logged, each parsed as JSON (a line that is not JSON
    fails the test); waits for at least `wanted` lines (a log is written after
    the answer)."""
    deadline = time.monotonic() + within
    while True:
        lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
        if len(lines) >= wanted or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def with_request_id(lines: list[dict[str, Any]], rid: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("request_id") == rid]


def indexed(store_url: str) -> int:
    """One record committed to `docs`; the manifest version it made."""
    app = Brainy.from_env("cli", {"BRAINY_STORE": store_url})
    try:
        outcome = app.ingest({"collection": COLLECTION, "records": [{"id": "x", "vector": VECTOR}]})
        version = app.index_key(outcome.batch).version
        assert version is not None
        return version
    finally:
        app.close()


def test_search_logs_json_lines_with_request_id_collection_and_version(
    launch: Launcher, file_store_url: str
) -> None:
    version = indexed(file_store_url)
    server = launch(
        "search", file_store_url, BRAINY_LOG_FORMAT="json", BRAINY_INSTANCE_ID="search-logs"
    )

    reply = server.post(
        "/search", {"collection": COLLECTION, "vector": VECTOR, "k": 1},
        headers={"X-Request-Id": "req-search-1"},
    )  # fmt: skip
    assert reply.status == 200, str(reply)
    assert reply.headers["X-Request-Id"] == "req-search-1"
    assert reply.json()["version"] == version

    lines = log_lines(server)
    mine = with_request_id(lines, "req-search-1")
    assert mine, lines
    line = mine[-1]
    assert line["collection"] == COLLECTION and line["version"] == version
    assert (line["role"], line["instance_id"]) == ("search", "search-logs")
    assert line["level"] == "INFO" and line["status"] == 200
    assert "POST /search 200" in line["message"] and line["logger"] == "brainy.entry.web"
    assert {"time", "level", "message", "logger"} <= set(line)

    # A request without an id of its own gets one, answered and logged.
    reply = server.post("/search", {"collection": COLLECTION, "vector": VECTOR})
    rid = reply.headers["X-Request-Id"]
    assert rid and with_request_id(log_lines(server, len(lines) + 1), rid)

    # A refused request is logged with its status and, its collection unknown, none.
    reply = server.post("/search", {"collection": "nope", "vector": VECTOR},
                        headers={"X-Request-Id": "req-bad"})  # fmt: skip
    assert reply.status == 404
    (bad,) = with_request_id(log_lines(server, len(lines) + 2), "req-bad")
    assert bad["status"] == 404 and "collection" not in bad and "version" not in bad


def test_ingest_logs_the_trace_id_and_collection(launch: Launcher, file_store_url: str) -> None:
    server = launch("ingest", file_store_url, BRAINY_LOG_FORMAT="json")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    reply = server.post(
        "/ingest", {"collection": COLLECTION, "records": [{"id": "y", "vector": VECTOR}]},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )  # fmt: skip
    assert reply.status == 202, str(reply)

    (line,) = with_request_id(log_lines(server), trace)
    assert line["collection"] == COLLECTION and line["role"] == "ingest"
    assert line["status"] == 202 and "version" not in line  # not committed yet

    reply = server.post(
        "/ingest", {"collection": COLLECTION, "records": [{"id": "z", "vector": VECTOR}]},
        headers={"X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1"},
    )  # fmt: skip
    assert reply.headers["X-Request-Id"] == "105445aa7843bc8bf206b12000100000"


def test_text_stays_the_default(launch: Launcher, file_store_url: str) -> None:
    server = launch("search", file_store_url)
    server.post("/search", {"collection": COLLECTION, "vector": VECTOR},
                headers={"X-Request-Id": "req-text"})  # fmt: skip
    deadline = time.monotonic() + 10
    while "POST /search 200" not in server.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in server.log_tail().splitlines() if "POST /search 200" in x)
    assert not line.startswith("{") and " INFO brainy.entry.web: " in line


def test_an_unknown_log_format_is_refused_naming_the_variable(
    launch: Launcher, file_store_url: str
) -> None:
    server = launch("search", file_store_url, BRAINY_LOG_FORMAT="xml")
    reply = server.get("/health")
    assert reply.status == 500
    assert reply.error["field"] == "BRAINY_LOG_FORMAT" and "json" in reply.error["reason"]
