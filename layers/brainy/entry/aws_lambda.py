"""AWS Lambda adapter: Lambda events in, the functions' own handlers run.

functions-framework serves the target of `functions/<name>/main.py` on Cloud Run
and on a laptop; on Lambda this module does that job: it turns an event into the
Flask request functions-framework would have built and calls the very same
target, so every platform runs one handler. The Lambda handlers are
`brainy.entry.aws_lambda.ingest`, `.search`, `.indexer` and `.compactor`; each
accepts

* a Function URL or API Gateway HTTP API request (payload format 2.0): answered
  with the target's HTTP response;
* an SQS batch whose messages carry S3 notifications (`s3:TestEvent` and
  URL-encoded keys included): each message is one `POST /` to the target, and
  every message not answered 2xx is reported in `batchItemFailures`, so SQS
  redelivers that one only (and moves it to the dead-letter queue in the end);
* an EventBridge scheduled event: `POST /` with an empty body, which the
  compactor reads as "every collection"; a 5xx answer raises, so Lambda records
  a failed invocation.

The deployment package carries `functions/` at its root (`make package`), where
`functions.<name>.main` imports as a namespace package, as it does from a
checkout.
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Request, Response
from werkzeug.test import EnvironBuilder

from brainy.core.errors import InvalidInput

log = logging.getLogger(__name__)

LambdaHandler = Callable[[Mapping[str, Any], Any], dict[str, Any]]
Target = Callable[[Request], Response]

# A Flask app only to give each request the context functions-framework gives it.
_flask = Flask("brainy-lambda")
# Bodies that go back to Lambda as text; anything else goes back base64-encoded.
_TEXT_TYPES = ("text/", "application/json", "application/openmetrics-text")


class InvocationFailed(RuntimeError):
    """The target answered 5xx to an event that has no HTTP caller to tell."""


@functools.cache
def target(name: str) -> Target:
    """The functions-framework target of `functions/<name>/main.py` (same name)."""
    return getattr(importlib.import_module(f"functions.{name}.main"), name)


def handler_for(name: str) -> LambdaHandler:
    """A Lambda handler running the target of `functions/<name>/main.py`."""

    def handle(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        if not isinstance(event, Mapping):
            raise InvalidInput("event", f"expected a JSON object, got {type(event).__name__}")
        if _is_http(event):
            return _to_http_answer(_call(name, _http_environ(event)))
        if _is_sqs(event):
            return _sqs_batch(name, event["Records"])
        if event.get("detail-type") == "Scheduled Event":
            return _scheduled(name, event)
        raise InvalidInput(
            "event",
            "expected a Function URL / HTTP API request (version 2.0), an SQS batch or an "
            f"EventBridge scheduled event; got one with keys {sorted(event)[:8]}",
        )

    handle.__name__ = handle.__qualname__ = name
    return handle


def _call(name: str, environ: dict[str, Any]) -> Response:
    with _flask.request_context(environ):
        from flask import request

        return target(name)(request._get_current_object())  # type: ignore[attr-defined]


def _post_environ(body: str) -> dict[str, Any]:
    return EnvironBuilder(
        path="/", method="POST", data=body.encode(), content_type="application/json"
    ).get_environ()


# ------------------------------------------------------------------ HTTP


def _is_http(event: Mapping[str, Any]) -> bool:
    context = event.get("requestContext")
    return event.get("version") == "2.0" and isinstance(context, Mapping) and "http" in context


def _http_environ(event: Mapping[str, Any]) -> dict[str, Any]:
    http = event["requestContext"]["http"]
    headers = dict(event.get("headers") or {})
    if event.get("cookies"):
        headers["cookie"] = "; ".join(event["cookies"])
    body = event.get("body") or ""
    data = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    return EnvironBuilder(
        path=event.get("rawPath") or http.get("path") or "/",
        method=http.get("method", "GET"),
        query_string=event.get("rawQueryString") or "",
        headers=headers,
        data=data,
        environ_overrides={"REMOTE_ADDR": http.get("sourceIp", "")},
    ).get_environ()


def _to_http_answer(response: Response) -> dict[str, Any]:
    data = response.get_data()
    text = (response.mimetype or "").startswith(_TEXT_TYPES)
    headers = {k: v for k, v in response.headers.items() if k.lower() != "set-cookie"}
    answer: dict[str, Any] = {
        "statusCode": response.status_code,
        "headers": headers,
        "body": data.decode() if text else base64.b64encode(data).decode(),
        "isBase64Encoded": not text,
    }
    cookies = response.headers.getlist("Set-Cookie")
    if cookies:
        answer["cookies"] = cookies
    return answer


# ------------------------------------------------------------------- SQS


def _is_sqs(event: Mapping[str, Any]) -> bool:
    records = event.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, Mapping) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def _sqs_batch(name: str, records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One `POST /` per message; the messages not answered 2xx are redelivered."""
    failures = []
    for record in records:
        try:
            response = _call(name, _post_environ(str(record.get("body", ""))))
            ok = 200 <= response.status_code < 300
            if not ok:
                log.error(
                    "sqs message %s: %s answered %s: %s",
                    record.get("messageId"),
                    name,
                    response.status_code,
                    response.get_data(as_text=True)[:2000],
                )
        except Exception:
            log.exception("sqs message %s: %s failed", record.get("messageId"), name)
            ok = False
        if not ok:
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


# --------------------------------------------------------------- schedule


def _scheduled(name: str, event: Mapping[str, Any]) -> dict[str, Any]:
    response = _call(name, _post_environ(""))
    body = json.loads(response.get_data()) if response.is_json else response.get_data(True)
    if response.status_code >= 500:
        raise InvocationFailed(
            f"scheduled {name} ({', '.join(event.get('resources') or [])}) answered "
            f"{response.status_code}: {json.dumps(body)[:2000]}"
        )
    return {"statusCode": response.status_code, "body": body}


ingest = handler_for("ingest")
search = handler_for("search")
indexer = handler_for("indexer")
compactor = handler_for("compactor")
