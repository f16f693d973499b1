"""The Lambda adapter runs the functions' own handlers on the events Lambda delivers:
Function URL / HTTP API requests, SQS batches of S3 notifications and the
compactor's schedule (shapes in `tests/lambda_events.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.functions.harness import s3_notification, s3_test_event

from brainy.core.errors import InvalidInput
from brainy.entry import aws_lambda, web
from brainy.storage import open_store
from lambda_events import http_event, scheduled_event, sqs_event, sqs_message

CONFIG = {"collections": {"docs": {"dimension": 3, "metric": "angular"}}}
RECORDS = [
    {"id": "a", "vector": [1, 0, 0], "metadata": {"lang": "en"}},
    {"id": "b", "vector": [0, 1, 0], "metadata": {"lang": "fr"}},
]


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local bucket with the `docs` collection, and fresh instances of every role on it."""
    url = (tmp_path / "bucket").as_uri()
    open_store(url).put("_brainy/config.json", json.dumps(CONFIG).encode())
    monkeypatch.setenv("BRAINY_STORE", url)
    monkeypatch.setenv("BRAINY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BRAINY_REFRESH_INTERVAL", "0")
    monkeypatch.setattr(web, "_instances", {})
    return url


def _json(answer: dict[str, Any]) -> Any:
    assert answer["isBase64Encoded"] is False
    return json.loads(answer["body"])


def _ingest(records: list[dict[str, Any]]) -> str:
    answer = aws_lambda.ingest(
        http_event("POST", "/ingest", {"collection": "docs", "records": records})
    )
    assert answer["statusCode"] == 202, answer
    return _json(answer)["batch"]


def test_function_url_requests_reach_ingest_and_search(store_url: str) -> None:
    batch = _ingest(RECORDS)
    assert open_store(store_url).exists(batch)

    aws_lambda.indexer(sqs_event(sqs_message(s3_notification("local", [batch]))))
    answer = aws_lambda.search(
        http_event("POST", "/search", {"collection": "docs", "vector": [1, 0.1, 0], "k": 1})
    )

    assert answer["statusCode"] == 200
    assert answer["headers"]["Content-Type"] == "application/json"
    assert [hit["id"] for hit in _json(answer)["results"]] == ["a"]
    # The functions were imported inside the adapter's Flask app: it is left as it
    # is (only functions-framework's own app is served directly).
    assert not isinstance(aws_lambda._flask.wsgi_app, web.Direct)


def test_a_base64_body_and_the_query_string_arrive_as_sent(store_url: str) -> None:
    ndjson = b'{"id": "c", "vector": [0, 0, 1]}\n{"delete": "a"}\n'
    event = http_event(
        "POST",
        "/ingest",
        ndjson,
        query={"collection": "docs"},
        headers={"Content-Type": "application/x-ndjson", "Idempotency-Key": "k1"},
        binary=True,
    )

    first, again = aws_lambda.ingest(event), aws_lambda.ingest(event)

    assert first["statusCode"] == again["statusCode"] == 202
    assert (
        _json(first)
        == _json(again)
        == {
            "batch": _json(first)["batch"],
            "accepted": 1,
            "deleted": 1,
        }
    )
    assert "/wal/keyed/" in _json(first)["batch"]


def test_http_errors_and_metrics_come_back_as_the_function_answers_them(store_url: str) -> None:
    bad = aws_lambda.ingest(
        http_event(
            "POST", "/ingest", {"collection": "docs", "records": [{"id": "x", "vector": [1]}]}
        )
    )
    wrong_method = aws_lambda.search(http_event("GET", "/search"))
    metrics = aws_lambda.search(http_event("GET", "/metrics"))

    assert bad["statusCode"] == 400
    assert _json(bad)["error"]["field"] == "records[0].vector"
    assert wrong_method["statusCode"] == 405
    assert wrong_method["headers"]["Allow"] == "POST"
    assert metrics["statusCode"] == 200
    assert "brainy_" in metrics["body"]


def test_sqs_batch_reports_only_the_messages_that_failed(store_url: str) -> None:
    # A key with a space and a '+': S3 URL-encodes it in the notification.
    batch = _ingest(RECORDS)
    store = open_store(store_url)
    odd_key = "docs/wal/2026/11/27/odd writer/b+1.batch"
    store.put(odd_key, store.get(batch).data)
    store.delete(batch)
    good = sqs_message(s3_notification("local", [odd_key]), "good")
    test = sqs_message(s3_test_event("local"), "test-event")
    bad = sqs_message("this is not a storage event", "bad")

    answer = aws_lambda.indexer(sqs_event(test, good, bad))

    assert answer == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    hits = _json(
        aws_lambda.search(
            http_event("POST", "/search", {"collection": "docs", "vector": [0, 1, 0]})
        )
    )["results"]
    assert {hit["id"] for hit in hits} == {"a", "b"}


def test_a_message_the_indexer_fails_on_is_redelivered(store_url: str, tmp_path: Path) -> None:
    batch = _ingest(RECORDS)
    # A file where the manifests' folder belongs: no manifest can be read or committed.
    (tmp_path / "bucket" / "docs" / "manifests").write_text("in the way")

    answer = aws_lambda.indexer(sqs_event(sqs_message(s3_notification("local", [batch]), "m1")))

    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}


def test_the_schedule_runs_the_compactor_on_every_collection(store_url: str) -> None:
    for i in range(3):
        batch = _ingest([{"id": f"r{i}", "vector": [1, i, 0]}])
        aws_lambda.indexer(sqs_event(sqs_message(s3_notification("local", [batch]))))

    answer = aws_lambda.compactor(scheduled_event(), None)

    assert answer["statusCode"] == 200
    [report] = answer["body"]["collections"]
    assert report["collection"] == "docs"
    assert report["verify"]["ok"] is True


def test_an_event_of_unknown_shape_is_refused_by_name(store_url: str) -> None:
    with pytest.raises(InvalidInput, match="event: expected a Function URL"):
        aws_lambda.search({"Records": [{"eventSource": "aws:kinesis"}]})
