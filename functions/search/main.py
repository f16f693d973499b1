"""search — read-only HTTP function: `POST /search` answers k nearest neighbours;
`POST /warmup` fills the cache ahead of queries."""

import os
import time

# numpy's BLAS on one thread per request: a query's products are small (k rows
# re-scored, or a segment under the exact threshold), its parallelism comes from
# concurrent requests and segments, and BLAS threads that spin-wait between calls
# fight requests for the cores (a 2,000-row search took 0.6 ms or 16 ms depending
# on the machine's load; see bench/README.md, "http"). Set before numpy loads;
# an operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import functions_framework
from flask import Request, Response

from brainy.entry import web


def _search(app, request: Request) -> Response:
    started = time.perf_counter()
    result = app.search(web.json_body(request, app.settings.max_body_size))
    return web.json_response(
        200,
        {
            "results": [hit.to_dict() for hit in result.hits],
            "version": result.version,
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )


def _warmup(app, request: Request) -> Response:
    reports = app.warmup(web.json_body(request, app.settings.max_body_size, empty={}))
    return web.json_response(200, {"collections": [r.to_dict() for r in reports]})


def _start(app) -> None:
    app.start_warmup()


# Warm-up at start begins as soon as the serving process exists, not at its first request.
web.start_after_fork("search", _start)


@functions_framework.http
def search(request: Request) -> Response:
    return web.serve(
        request,
        "search",
        {("POST", "/search"): _search, ("POST", "/"): _search, ("POST", "/warmup"): _warmup},
        on_start=_start,
    )
