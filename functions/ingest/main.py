"""ingest — write-only HTTP function: `POST /ingest` makes a batch durable, then 202."""

import functions_framework
from flask import Request, Response

from brainy.entry import web
from brainy.write.ingest import parse_body


def _ingest(app, request: Request) -> Response:
    body = web.read_body(request, app.settings.max_body_size)
    payload = parse_body(body, request.content_type or "", request.args.get("collection"))
    outcome = app.ingest(payload, request.headers.get("Idempotency-Key"))
    return web.json_response(202, outcome.to_dict())


ROUTES: web.Routes = {("POST", "/ingest"): _ingest, ("POST", "/"): _ingest}
web.serve_directly("ingest", ROUTES)


@functions_framework.http
def ingest(request: Request) -> Response:
    return web.serve(request, "ingest", ROUTES)
