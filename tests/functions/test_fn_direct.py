"""The functions serve their requests straight from WSGI (`web.serve_directly`),
ahead of Flask: functions-framework's app is wrapped when it imports each function,
and a request answered that way is answered exactly as through Flask, which still
serves when `LOG_EXECUTION_ID` asks for functions-framework's own logging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from harness import REPO, FunctionServer, Reply
from werkzeug.test import Client

from brainy.core import logs
from brainy.entry import web
from conftest import Launcher
from helpers import declare, make_app
from servers import new_store_url

FUNCTIONS = ["search", "ingest", "indexer", "compactor"]
DIMENSION = 8


def _wsgi_app_of(name: str, **env: str) -> str:
    """The class of the WSGI callable functions-framework builds for function `name`
    (in a process of its own: importing a function registers fork hooks)."""
    code = (
        "import sys; from functions_framework import create_app; "
        "app = create_app(sys.argv[1], f'functions/{sys.argv[1]}/main.py'); "
        "print(type(app.wsgi_app).__name__)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRAINY_")}
    done = subprocess.run(
        [sys.executable, "-c", code, name],
        cwd=REPO,
        env={**clean, "BRAINY_STORE": "file:///nonexistent", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_function_is_served_directly(name: str) -> None:
    assert _wsgi_app_of(name) == "Direct"


def test_execution_id_logging_keeps_the_frameworks_path() -> None:
    assert _wsgi_app_of("search", LOG_EXECUTION_ID="true") == "WsgiMiddleware"


@pytest.fixture(scope="module")
def both(
    launch: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[FunctionServer]]:
    """The search function served directly and through Flask, on one store."""
    tmp_path = tmp_path_factory.mktemp("direct")
    url = new_store_url("file", tmp_path)
    writer = make_app(url, tmp_path)
    declare(writer, "docs", dimension=DIMENSION)
    rng = np.random.default_rng(5)
    records = [
        {"id": str(i), "vector": rng.standard_normal(DIMENSION).tolist(), "metadata": {"i": i}}
        for i in range(300)
    ]
    writer.index_key(writer.ingest({"collection": "docs", "records": records}).batch)
    writer.close()
    settings = {"BRAINY_MODE": "read-only", "BRAINY_REFRESH_INTERVAL": "3600"}
    yield [
        launch("search", url, **settings),
        launch("search", url, LOG_EXECUTION_ID="true", **settings),
    ]


VECTOR = [0.25] * DIMENSION
REQUESTS: list[tuple[str, str, Any, dict[str, str]]] = [
    ("POST", "/search", {"collection": "docs", "vector": VECTOR, "k": 5}, {}),
    ("POST", "/", {"collection": "docs", "vector": VECTOR, "k": 3}, {}),
    ("POST", "/search/", {"collection": "docs", "vector": VECTOR, "filter": {"i": 7}}, {}),
    ("POST", "/search", {"collection": "docs", "vector": VECTOR[:-1]}, {}),
    ("POST", "/search", b'{"collection": "docs", "vector": [', {}),
    ("POST", "/search", {"collection": "docs", "vector": VECTOR}, {"X-Request-Id": "given-id-1"}),
    ("GET", "/search", None, {}),
    ("DELETE", "/health", None, {}),
    ("GET", "/nowhere", None, {}),
    ("GET", "/health", None, {}),
    ("GET", "/openapi.json", None, {}),
]


def _answer(
    server: FunctionServer, method: str, path: str, body: Any, headers: dict[str, str]
) -> Reply:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return server.request(
        method, path, data=data, headers={"Content-Type": "application/json", **headers}
    )


def _comparable(reply: Reply) -> tuple[int, str, Any, str | None]:
    body = json.loads(reply.body)
    if isinstance(body, dict):
        body.pop("took_ms", None)
        if "checks" in body:  # health: the instance's own id, uptime and cache differ
            body = {"status": body["status"], "checks": sorted(body["checks"])}
    return reply.status, reply.headers["Content-Type"], body, reply.headers.get("Allow")


@pytest.mark.parametrize(("method", "path", "body", "headers"), REQUESTS)
def test_direct_answers_equal_the_frameworks(
    both: list[FunctionServer], method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    direct, framework = (_answer(s, method, path, body, headers) for s in both)
    assert _comparable(direct) == _comparable(framework)
    assert direct.headers["X-Request-Id"]
    if "X-Request-Id" in headers:
        assert direct.headers["X-Request-Id"] == framework.headers["X-Request-Id"] == "given-id-1"


def test_a_failure_outside_the_handlers_is_answered_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the routing table is gone")

    monkeypatch.setattr(web, "_route", broken)
    reply = Client(web.Direct("search", {}, None)).post("/search", data=b"{}")
    assert reply.status_code == 500
    assert reply.json == {
        "error": {
            "code": "internal",
            "field": "server",
            "reason": "RuntimeError: the routing table is gone",
            "message": "server: RuntimeError: the routing table is gone",
        }
    }


def test_the_request_is_logged_once_its_answer_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log line follows the answer (the server closes it once sent), and still
    carries what the request bound: its id, the collection."""
    monkeypatch.setattr(web, "instance", lambda role, on_start=None: object())

    def echo(app: Any, request: Any) -> Any:
        logs.bind(collection="docs")
        return web.json_response(200, {"ok": True})

    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(logs.JsonFormatter().format(record)))

    logger = logging.getLogger("brainy.entry.web")
    handler = Keep()
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        client = Client(web.Direct("search", {("POST", "/echo"): echo}, None))
        reply = client.post("/echo", data=b"{}", headers={"X-Request-Id": "req-7"}, buffered=False)
        assert (reply.status_code, reply.get_data()) == (200, b'{"ok":true}')
        assert lines == []
        reply.close()
    finally:
        logger.removeHandler(handler)
    assert [(line["request_id"], line["collection"], line["status"]) for line in lines] == [
        ("req-7", "docs", 200)
    ]
    assert lines[0]["message"].startswith("POST /echo 200 (")
