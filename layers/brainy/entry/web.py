"""HTTP glue shared by the functions: bodies in, JSON out, errors as clear 4xx/5xx.

Only the entry points and this module know HTTP; the layer below raises typed
errors and this maps them once.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from flask import Request, Response
from werkzeug.wsgi import ClosingIterator

from brainy.core import logs
from brainy.core.config import ConfigError
from brainy.core.errors import BrainyError, PayloadTooLarge, error_body
from brainy.core.jsonio import decode_json
from brainy.storage import ConditionalWritesUnsupported, ReadOnlyStore, StorageError
from brainy.table.manifest import CommitFailed

log = logging.getLogger(__name__)


# Dataclasses and datetimes go to `default=str`, as the standard encoder sends them.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def encode_json(body: Any) -> bytes:
    """Compact JSON, encoded by orjson (a search answer in a tenth of the standard
    encoder's time, bench/README.md "http"); what orjson refuses (integers beyond
    64 bits, keys that are not strings) by the standard encoder, so every body
    still encodes. NaN and infinities, never in an answer, become `null`."""
    try:
        return orjson.dumps(body, default=str, option=_ORJSON_OPTIONS)
    except TypeError:
        return json.dumps(body, separators=(",", ":"), default=str).encode()


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(encode_json(body), status=status, mimetype="application/json", headers=headers)


def error_response(
    status: int, code: str, field: str, reason: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response(status, error_body(code, field, reason), headers)


def read_body(request: Request, max_size: int) -> bytes:
    """The raw body, refused with 413 beyond `max_size` (before reading it, when the
    client announced its length)."""
    if request.content_length is not None and request.content_length > max_size:
        raise PayloadTooLarge("body", f"{request.content_length} bytes; at most {max_size}")
    data = request.stream.read(max_size + 1)
    if len(data) > max_size:
        raise PayloadTooLarge("body", f"more than {max_size} bytes")
    return data


def guarded(fn: Callable[[], Response]) -> Response:
    """Run a handler; turn the errors of the layer into responses."""
    try:
        return fn()
    except BrainyError as e:
        return json_response(e.status, e.to_dict())
    except ConfigError as e:
        field, _, reason = str(e).partition(": ")
        return error_response(400, "config", field, reason or str(e))
    except ReadOnlyStore as e:
        return error_response(403, "forbidden", "mode", str(e))
    except CommitFailed as e:
        return error_response(503, "contention", "manifest", str(e))
    except StorageError as e:
        log.exception("storage failure")
        return error_response(503, "storage", "storage", f"{type(e).__name__}: {e}")
    except Exception as e:
        # A bug, not the caller's doing: logged in full, answered as JSON all the same.
        log.exception("unexpected failure")
        return error_response(500, "internal", "server", f"{type(e).__name__}: {e}")


def method_not_allowed(request: Request, allowed: str) -> Response:
    return error_response(
        405,
        "method",
        "method",
        f"{request.method} {request.path}: use {allowed}",
        headers={"Allow": allowed.split()[0]},
    )


def not_found(request: Request, paths: list[str]) -> Response:
    return error_response(404, "not_found", "path", f"{request.path}: expected one of {paths}")


_instances: dict[str, Any] = {}
_instances_lock = threading.Lock()


def instance(role: str, on_start: Callable[[Any], object] | None = None) -> Any:
    """The process's Brainy instance for `role`, created on first use from the
    environment (a cold start reads the config once; warm calls reuse it).

    functions-framework serves requests on threads: the first requests of a cold
    instance wait for one Brainy rather than each building its own (with its own
    caches and metrics). A failed start is not kept, so the next request retries.

    Args:
        on_start: run once on the new instance (it must not block: it delays
            the request that created the instance).
    """
    from brainy.service.app import Brainy

    app = _instances.get(role)
    if app is None:
        with _instances_lock:
            app = _instances.get(role)
            if app is None:
                logs.configure(os.environ)
                app = _instances[role] = Brainy.from_env(role)
                logs.bind_process(instance_id=app.settings.instance_id, role=role)
                if on_start is not None:
                    on_start(app)
    return app


def start_after_fork(role: str, on_start: Callable[[Any], object]) -> None:
    """Create the instance (and run `on_start`) as soon as the serving process
    exists, before any request, on a background thread.

    functions-framework imports the function in gunicorn's master process and
    serves it in a forked worker: a thread started at import would stay behind
    in the master, so it starts in the child. Without a fork (the development
    server) the first request creates the instance, as it always does.
    """

    def start() -> None:
        try:
            instance(role, on_start)
        except Exception:
            # Not kept: the first request retries and answers with the error.
            log.exception("cannot start %s ahead of its first request", role)

    def after_fork() -> None:
        # Only a gunicorn worker: any other fork of a process that imported the
        # function (a subprocess with a `preexec_fn`, say) is not serving it.
        if "gunicorn.arbiter" in sys.modules:
            threading.Thread(target=start, name=f"brainy-start-{role}", daemon=True).start()

    os.register_at_fork(after_in_child=after_fork)


Handler = Callable[[Any, Request], Response]
Routes = dict[tuple[str, str], Handler]


def serve_directly(
    role: str, routes: Routes, on_start: Callable[[Any], object] | None = None
) -> None:
    """Serve the function's requests straight from WSGI: `serve` runs on a request
    built from the WSGI environ, in place of Flask and functions-framework's
    middleware.

    Called when the function's module is imported. functions-framework imports it
    inside the context of the Flask app it is about to serve, and `Direct` takes
    the place of the app's WSGI callable. Flask's dispatch (request context, URL map,
    response hooks) and the middleware's execution id cost about 0.3 ms a request
    and do nothing `serve` needs (bench/README.md "http"). Everything after the
    request is built is the same code as through Flask: routing, errors, logs.

    Nothing changes outside functions-framework's import (no app context, or an
    app that is not the one it builds, whose WSGI callable is its execution-id
    middleware: the Lambda adapter imports the module inside a Flask app of its
    own), nor when `LOG_EXECUTION_ID` asks for functions-framework's execution ids
    in the logs.
    """
    import flask
    from functions_framework.execution_id import WsgiMiddleware

    if not flask.has_app_context() or _execution_id_logging():
        return
    app = flask.current_app
    if isinstance(app.wsgi_app, WsgiMiddleware):
        app.wsgi_app = Direct(role, routes, on_start)  # type: ignore[method-assign]


def _execution_id_logging() -> bool:
    """functions-framework's own test of `LOG_EXECUTION_ID` (strtobool's truths,
    case as given)."""
    return os.environ.get("LOG_EXECUTION_ID") in ("y", "yes", "t", "true", "on", "1")


class Direct:
    """WSGI app: every request to `serve` (see `serve_directly`)."""

    def __init__(self, role: str, routes: Routes, on_start: Callable[[Any], object] | None) -> None:
        self.role = role
        self.routes = routes
        self.on_start = on_start

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        log_line: Callable[[], None] = _no_line

        def answer() -> Response:
            nonlocal log_line
            response, log_line = _served(request, self.role, self.routes, self.on_start)
            return response

        # What `serve` lets through answers as every other error does, not as the
        # server's HTML page.
        response = guarded(answer)
        # The request's log line is written when the server closes the answer, once
        # it has sent it: not in front of it (a log record and its write cost about
        # 50 us a request, a tenth of a small search's round trip).
        return ClosingIterator(response(environ, start_response), log_line)


def serve(
    request: Request,
    role: str,
    routes: Routes,
    on_start: Callable[[Any], object] | None = None,
) -> Response:
    """Route a request of a function: its own routes plus `GET /health`,
    `GET /metrics` and `GET /openapi.json`, which every function serves. `on_start` runs once on the
    instance the first request creates.

    The request runs in a logging context of its own: its records carry its id
    (answered in `X-Request-Id`) and the collection and version it worked on,
    and one record says how it ended."""
    response, log_line = _served(request, role, routes, on_start)
    log_line()
    return response


def _served(
    request: Request,
    role: str,
    routes: Routes,
    on_start: Callable[[Any], object] | None,
) -> tuple[Response, Callable[[], None]]:
    """`serve`'s answer, and the call that logs how the request ended (in the
    request's logging context, whenever it is made)."""
    context = contextvars.copy_context()
    response, took_ms = context.run(_answered, request, role, routes, on_start)
    # Probes (a platform polls /health and /metrics every few seconds) only at debug.
    quiet = request.method == "GET" and request.path in ("/health", "/metrics")
    status = response.status_code
    return response, lambda: context.run(
        log.log,
        logging.DEBUG if quiet else logging.INFO,
        "%s %s %d (%.1f ms)",
        request.method,
        request.path,
        status,
        took_ms,
        extra={"status": status, "duration_ms": took_ms},
    )


def _answered(
    request: Request,
    role: str,
    routes: Routes,
    on_start: Callable[[Any], object] | None,
) -> tuple[Response, float]:
    """The answer and its milliseconds, in the request's logging context."""
    rid = logs.request_id(request.headers)
    logs.bind(request_id=rid, role=role, collection=None, version=None)
    started = time.perf_counter()
    response = _route(request, role, routes, on_start)
    response.headers["X-Request-Id"] = rid
    return response, round((time.perf_counter() - started) * 1000, 3)


def _no_line() -> None:
    """No log line: `serve` failed before its answer (`guarded` logged why)."""


def _route(
    request: Request,
    role: str,
    routes: Routes,
    on_start: Callable[[Any], object] | None,
) -> Response:
    try:
        app = instance(role, on_start)
    except ConfigError as e:
        log.error("configuration invalid: %s", e)
        field, _, reason = str(e).partition(": ")
        return error_response(500, "config", field, reason or str(e))
    except ConditionalWritesUnsupported as e:
        log.error("cannot start: %s", e)
        return error_response(500, "storage", "storage", str(e))
    except StorageError as e:
        # Storage unreachable at a cold start: 503, so a platform redelivers.
        log.exception("cannot start: storage failure")
        return error_response(503, "storage", "storage", f"{type(e).__name__}: {e}")
    table: dict[tuple[str, str], Handler] = {
        ("GET", "/health"): _health,
        ("GET", "/metrics"): _metrics,
        ("GET", "/openapi.json"): _openapi,
        **routes,
    }
    path = request.path.rstrip("/") or "/"
    handler = table.get((request.method, path))
    if handler is None:
        allowed = [m for (m, p) in table if p == path]
        if allowed:
            return method_not_allowed(request, " ".join(allowed))
        return not_found(request, sorted({p for _, p in table}))
    return guarded(lambda: handler(app, request))


def _health(app: Any, request: Request) -> Response:
    ok, body = app.health()
    return json_response(200 if ok else 503, body)


def _metrics(app: Any, request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(app.metrics.render(), status=200, mimetype=CONTENT_TYPE_LATEST)


def openapi_document() -> bytes:
    """The OpenAPI document of the functions (`entry/openapi.json`, package data),
    read once per process."""
    global _openapi_bytes
    if _openapi_bytes is None:
        _openapi_bytes = resources.files("brainy.entry").joinpath("openapi.json").read_bytes()
    return _openapi_bytes


_openapi_bytes: bytes | None = None


def _openapi(app: Any, request: Request) -> Response:
    return Response(openapi_document(), status=200, mimetype="application/json")


def json_body(request: Request, max_size: int, *, empty: Any = None) -> Any:
    """A JSON body (malformed JSON → 400 naming `body`); `empty`, when given, is
    what an empty body means."""
    from brainy.core.errors import InvalidInput

    data = read_body(request, max_size)
    if empty is not None and not data.strip():
        return empty
    try:
        return decode_json(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput("body", f"malformed JSON ({e})") from None
