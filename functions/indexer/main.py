"""indexer — turns each created batch object into a committed segment.

Accepts a CloudEvent (binary or structured: GCS finalized, the CloudEvents S3
adapter's ObjectCreated), a raw S3 notification body, a Pub/Sub push envelope
and an EventBridge event. 2xx acknowledges (applied, already applied, ignored,
quarantined); a transient failure answers 5xx so the platform redelivers.
"""

import functions_framework
from flask import Request, Response

from brainy.entry import web
from brainy.write.events import parse_request


def _index(app, request: Request) -> Response:
    body = web.read_body(request, app.settings.max_body_size)
    objects = parse_request(dict(request.headers), body)
    results = app.index_objects(objects)
    return web.json_response(200, {"results": [r.__dict__ for r in results]})


ROUTES: web.Routes = {("POST", "/"): _index, ("POST", "/index"): _index}
web.serve_directly("indexer", ROUTES)


@functions_framework.http
def indexer(request: Request) -> Response:
    return web.serve(request, "indexer", ROUTES)
