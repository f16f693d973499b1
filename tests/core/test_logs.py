"""`brainy.core.logs`: the JSON line format and the request id, in-process; the CLI
refuses an unknown `BRAINY_LOG_FORMAT` naming it."""

from __future__ import annotations

import contextvars
import json
import logging

import pytest

from brainy.core import logs
from brainy.entry.cli import main


def record(message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("brainy.test", logging.WARNING, __file__, 1, message, (), exc_info)


def test_a_json_line_carries_the_bound_fields_extras_and_the_traceback() -> None:
    def in_request() -> str:
        logs.bind(request_id="r-1", collection="docs", version=7)
        try:
            raise ValueError("boom")
        except ValueError as e:
            rec = record("it broke", e)
        rec.status = 503
        return logs.JsonFormatter().format(rec)

    line = json.loads(contextvars.copy_context().run(in_request))
    assert line["message"] == "it broke" and line["level"] == "WARNING"
    assert (line["request_id"], line["collection"], line["version"]) == ("r-1", "docs", 7)
    assert line["status"] == 503 and "ValueError: boom" in line["exception"]
    # Bound in the request's context only: nothing leaks to the next one.
    assert "request_id" not in json.loads(logs.JsonFormatter().format(record("later")))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Request-Id": "abc-123"}, "abc-123"),
        ({"X-Cloud-Trace-Context": "105445AA7843bc8bf206b12000100000/1;o=1"},
         "105445aa7843bc8bf206b12000100000"),
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
         "4bf92f3577b34da6a3ce929d0e0e4736"),
        # A client's id that could break a log line is not taken as is.
        ({"X-Request-Id": "a\nb", "traceparent": "junk"}, None),
    ],
)  # fmt: skip
def test_request_id_from_headers(headers: dict[str, str], expected: str | None) -> None:
    rid = logs.request_id(headers)
    if expected is None:
        assert len(rid) == 32 and rid != logs.request_id(headers)
    else:
        assert rid == expected


def test_the_cli_refuses_an_unknown_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["locks", "list"], env={"BRAINY_LOG_FORMAT": "yaml"})
    assert status == 2
    assert "error: BRAINY_LOG_FORMAT: expected one of ['text', 'json']" in capsys.readouterr().err
