"""Logging: plain text by default, one JSON object a line with `BRAINY_LOG_FORMAT=json`
(what Cloud Logging and CloudWatch Logs Insights parse into fields).

A JSON line carries `time`, `level`, `message`, `logger`, and whatever of
`instance_id`, `role`, `request_id`, `collection`, `version` is known where it
was logged: the web glue binds the request id for the span of a request, the
use cases bind the collection and version they work on (`bind`), and the
instance binds its id and role for the whole process (`bind_process`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from brainy.core.config import ConfigError

FORMATS = ("text", "json")
FIELDS = ("instance_id", "role", "request_id", "collection", "version")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: dict[str, contextvars.ContextVar[Any]] = {
    name: contextvars.ContextVar(f"brainy_log_{name}", default=None) for name in FIELDS
}
_process: dict[str, Any] = {}
_lock = threading.Lock()
# Attributes every LogRecord has: anything else on a record came in `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def bind(**fields: Any) -> None:
    """Attach fields (`request_id`, `collection`, `version`, ...) to every record logged
    from here on in the current context (a request runs in a context of its own)."""
    for name, value in fields.items():
        _context[name].set(value)


def bind_process(**fields: Any) -> None:
    """Fields for every record of the process (its instance id and role), where the
    current context does not say otherwise."""
    _process.update(fields)


def current() -> dict[str, Any]:
    """The known fields, context over process."""
    out = {}
    for name in FIELDS:
        value = _context[name].get()
        if value is None:
            value = _process.get(name)
        if value is not None:
            out[name] = value
    return out


def request_id(headers: Mapping[str, str]) -> str:
    """The request's id: the client's `X-Request-Id`, else the trace id of Cloud Run's
    `X-Cloud-Trace-Context` or W3C `traceparent`, else a new one."""
    given = (headers.get("X-Request-Id") or "").strip()
    if _REQUEST_ID_RE.match(given):
        return given
    trace = (headers.get("X-Cloud-Trace-Context") or "").split("/", 1)[0].strip()
    if re.fullmatch(r"[0-9a-fA-F]{1,64}", trace):
        return trace.lower()
    parts = (headers.get("traceparent") or "").strip().split("-")
    if len(parts) == 4 and re.fullmatch(r"[0-9a-f]{32}", parts[1]) and set(parts[1]) != {"0"}:
        return parts[1]
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the record, the bound fields, its `extra=` fields and
    the exception's traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            **current(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (a test's capture,
    a CLI run's redirect), like logging's own last resort."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def log_format(env: Mapping[str, str]) -> str:
    """`BRAINY_LOG_FORMAT`, validated: `text` (the default) or `json`."""
    value = env.get("BRAINY_LOG_FORMAT") or "text"
    if value not in FORMATS:
        raise ConfigError(f"BRAINY_LOG_FORMAT: expected one of {list(FORMATS)}, got {value!r}")
    return value


def configure(env: Mapping[str, str], *, level: int = logging.INFO) -> None:
    """Send the process's log records to stderr in the format `env` asks for.

    Idempotent: one handler, on the root logger, however often it is called (the
    format follows the latest call); `brainy`'s loggers log at `level`, others at
    their own (the root's warnings). Handlers others added (a test's capture) stay,
    except on AWS Lambda, whose runtime's own handler gets the format instead (a
    second handler would log every record twice).

    Raises:
        ConfigError: `BRAINY_LOG_FORMAT` is neither `text` nor `json` (the handler
            is then set up in text, so the error itself is readable).
    """
    on_lambda = bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))
    try:
        chosen = log_format(env)
    except ConfigError:
        _install("text", level, on_lambda)
        raise
    _install(chosen, level, on_lambda)


def _install(chosen: str, level: int, on_lambda: bool) -> None:
    formatter = JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT)
    root = logging.getLogger()
    with _lock:
        handlers = list(root.handlers) if on_lambda else []
        if not handlers:
            handler = next((h for h in root.handlers if isinstance(h, _Stderr)), None)
            if handler is None:
                handler = _Stderr()
                root.addHandler(handler)
            handlers = [handler]
        for handler in handlers:
            handler.setFormatter(formatter)
        logging.getLogger("brainy").setLevel(level)
