"""compactor — HTTP function for a scheduler: `POST /compact {"collection": "c"}`
sweeps unindexed batches, merges segments under the collection's lease, collects
garbage past retention and verifies the result. Without a collection, every
declared collection is maintained in turn."""

import functions_framework
from flask import Request, Response

from brainy.core.errors import InvalidInput
from brainy.entry import web


def _compact(app, request: Request) -> Response:
    body = web.json_body(request, app.settings.max_body_size, empty={})
    if not isinstance(body, dict):
        raise InvalidInput("body", "expected a JSON object")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("force", f"expected true or false, got {force!r}")
    reports = app.maintain(body.get("collection"), force=force)
    ok = all(r["verify"]["ok"] for r in reports)
    return web.json_response(200 if ok else 500, {"collections": reports})


ROUTES: web.Routes = {("POST", "/compact"): _compact, ("POST", "/"): _compact}
web.serve_directly("compactor", ROUTES)


@functions_framework.http
def compactor(request: Request) -> Response:
    return web.serve(request, "compactor", ROUTES)
