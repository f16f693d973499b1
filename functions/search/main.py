"""search — read-only HTTP function: `POST /search` answers k nearest neighbours."""

import time

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


@functions_framework.http
def search(request: Request) -> Response:
    return web.serve(request, "search", {("POST", "/search"): _search, ("POST", "/"): _search})
