"""Generated and malformed requests thrown at every endpoint of the real functions
(functions-framework servers on one local-folder bucket), with hypothesis.

Whatever arrives — a body of the endpoint's shape with wrong types, NaN, huge or
control-character values, any JSON, raw bytes, NDJSON, a body over the size
limit, CloudEvent headers, a wrong method — the answer is never a 5xx, every
error is JSON naming a field, its status is one the OpenAPI document lists for
that operation, and a rejected request leaves every object in the bucket as it
was. (hypothesis over schemathesis: the same properties, with bodies shaped by
hand to reach past the first check of each handler, and no extra dependency.)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from harness import (
    COLLECTION,
    CONFIG,
    DIMENSION,
    REPO,
    FunctionServer,
    Launcher,
    event_request,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainy.storage import ObjectStore, open_store
from servers import new_store_url

DOCUMENT = json.loads((REPO / "layers" / "brainy" / "entry" / "openapi.json").read_text())
MAX_BODY_SIZE = 4096
EXAMPLES = 40

# (function, method, path) of every operation in the document.
ENDPOINTS = sorted(
    (function, method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    for function in operation["x-brainy-functions"]
)
# Bookkeeping a writing instance keeps in the bucket whatever it is asked (its
# clock probe, rewritten at each measurement), not data a request could write.
BOOKKEEPING = "_brainy/probes/"


# ---------------------------------------------------------------- strategies

leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
anything = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
number = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
vector = (
    st.lists(st.floats(-1, 1, allow_subnormal=False), min_size=DIMENSION, max_size=DIMENSION)
    | st.lists(number, min_size=DIMENSION, max_size=DIMENSION)
    | st.lists(number, max_size=DIMENSION + 2)
    | anything
)
text = st.text(max_size=30) | st.sampled_from(["", "a" * 300, "a/../b", "x\x00y", "\u2028"])
ident = text | anything
collection = st.just(COLLECTION) | text | anything
record = st.fixed_dictionaries(
    {"id": ident}, optional={"vector": vector, "text": ident, "metadata": anything}
)

BODIES: dict[str, st.SearchStrategy[Any]] = {
    "/ingest": st.fixed_dictionaries(
        {"collection": collection},
        optional={
            "records": st.lists(record, max_size=3) | anything,
            "deletes": st.lists(ident, max_size=3) | anything,
            "extra": anything,
        },
    ),
    "/search": st.fixed_dictionaries(
        {"collection": collection},
        optional={
            "vector": vector,
            "text": ident,
            "k": st.integers(-2, 5000) | anything,
            "filter": anything,
            "min_version": st.integers(-2, 3) | anything,
            "recall_target": number | anything,
            "extra": anything,
        },
    ),
    "/warmup": st.fixed_dictionaries({}, optional={"collection": collection, "extra": anything}),
    "/compact": st.fixed_dictionaries({}, optional={"collection": collection, "force": anything}),
    "/index": st.one_of(
        st.fixed_dictionaries(
            {
                "Records": st.lists(
                    st.fixed_dictionaries(
                        {"eventName": text},
                        optional={
                            "s3": st.fixed_dictionaries(
                                {
                                    "bucket": st.fixed_dictionaries({"name": text | anything}),
                                    "object": st.fixed_dictionaries({"key": text | anything}),
                                }
                            )
                            | anything
                        },
                    ),
                    max_size=3,
                )
                | anything
            }
        ),
        st.fixed_dictionaries(
            {
                "message": st.fixed_dictionaries(
                    {},
                    optional={
                        "data": st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())
                        | anything,
                        "attributes": anything,
                    },
                )
                | anything
            }
        ),
        st.fixed_dictionaries({"bucket": text | anything, "name": text | anything}),
        st.fixed_dictionaries({"detail-type": st.just("Object Created"), "detail": anything}),
    ),
}
BODIES["/events"] = st.fixed_dictionaries(
    {"collection": collection}, optional={"version": st.integers(-2, 10**6) | anything}
)
BODIES["/"] = st.one_of(*BODIES.values())

# Requests a client that reads the document would send: they get past validation,
# so the paths that write are exercised too.
valid_vector = st.lists(st.floats(0.01, 1), min_size=DIMENSION, max_size=DIMENSION)
valid_id = st.text("abcdefghij0123456789-_", min_size=1, max_size=12)
valid_metadata = st.dictionaries(
    st.text("abcxyz", min_size=1, max_size=4),
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    max_size=3,
)
valid_record = st.fixed_dictionaries(
    {"id": valid_id, "vector": valid_vector}, optional={"metadata": valid_metadata}
)
batch_name = valid_id.map(lambda s: f"{COLLECTION}/wal/2026/01/01/w/{s}.batch")
VALID: dict[str, st.SearchStrategy[Any]] = {
    "/ingest": st.fixed_dictionaries(
        {
            "collection": st.just(COLLECTION),
            "records": st.lists(valid_record, min_size=1, max_size=3),
        },
        optional={"deletes": st.lists(valid_id, max_size=2)},
    ),
    "/search": st.fixed_dictionaries(
        {"collection": st.just(COLLECTION), "vector": valid_vector},
        optional={
            "k": st.integers(1, 20),
            "filter": valid_metadata,
            "min_version": st.integers(0, 2),
            "recall_target": st.floats(0.5, 1.0),
        },
    ),
    "/warmup": st.fixed_dictionaries({}, optional={"collection": st.just(COLLECTION)}),
    "/compact": st.fixed_dictionaries(
        {}, optional={"collection": st.just(COLLECTION), "force": st.booleans()}
    ),
    "/index": st.one_of(
        st.fixed_dictionaries({"bucket": st.just("local"), "name": batch_name}),
        st.lists(batch_name, min_size=1, max_size=2).map(
            lambda keys: {
                "Records": [
                    {
                        "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": "local"}, "object": {"key": key}},
                    }
                    for key in keys
                ]
            }
        ),
    ),
    "/events": st.fixed_dictionaries(
        {"collection": st.just(COLLECTION), "version": st.integers(1, 5)}
    ),
}
VALID["/"] = st.one_of(*VALID.values())

CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/x-ndjson",
    "application/cloudevents+json",
    "text/plain",
    "",
]
CE_TYPES = [
    "google.cloud.storage.object.v1.finalized",
    "com.amazonaws.s3.ObjectCreated:Put",
    "dev.brainy.index.updated",
]
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def ndjson(lines: list[Any]) -> bytes:
    return b"\n".join(encode(line) for line in lines)


@st.composite
def requests(draw: st.DrawFn, method: str, path: str) -> dict[str, Any]:
    """One request to `method path`: mostly of the endpoint's shape, often not."""
    valid = VALID.get(path, anything)
    shaped = BODIES.get(path, anything)
    kind = draw(
        st.sampled_from(["valid", "valid", "shaped", "shaped", "any", "ndjson", "bytes", "huge"])
    )
    content_type = "application/json"
    params = None
    if kind == "valid":
        body = encode(draw(valid))
    elif kind == "shaped":
        body = encode(draw(shaped))
    elif kind == "any":
        body = encode(draw(anything))
    elif kind == "ndjson":
        body = ndjson(draw(st.lists(valid_record | shaped | anything, max_size=4)))
        content_type = "application/x-ndjson"
        params = draw(
            st.just({"collection": COLLECTION}) | st.fixed_dictionaries({"collection": text})
        )
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        body = b"x" * (MAX_BODY_SIZE + 1)
    if draw(st.integers(0, 3)) == 0:
        content_type = draw(st.sampled_from(CONTENT_TYPES))
    headers = {"Content-Type": content_type}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(valid_id | header_text)
    if draw(st.integers(0, 3)) == 0:
        headers.update(
            {
                "ce-specversion": draw(st.sampled_from(["1.0", "0.3", ""]) | header_text),
                "ce-type": draw(st.sampled_from(CE_TYPES) | header_text),
                "ce-source": draw(header_text),
                "ce-id": draw(header_text),
                "ce-subject": draw(st.just(f"objects/{COLLECTION}/wal/x.batch") | header_text),
            }
        )
    if params is None and draw(st.integers(0, 3)) == 0:
        params = draw(st.fixed_dictionaries({"collection": text}))
    return {
        "method": draw(st.sampled_from([method, method, method, "GET", "PUT", "DELETE", "PATCH"])),
        "body": body if method == "POST" or draw(st.booleans()) else None,
        "headers": headers,
        "params": params,
    }


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ObjectStore]]:
    url = new_store_url("file", tmp_path_factory.mktemp("fuzz-bucket"))
    store = open_store(url)
    store.put("_brainy/config.json", json.dumps(CONFIG).encode())
    yield url, store
    store.close()


@pytest.fixture(scope="module")
def functions(launch: Launcher, bucket: tuple[str, ObjectStore]) -> dict[str, FunctionServer]:
    url, _ = bucket
    limits = {
        "BRAINY_MAX_BODY_SIZE": str(MAX_BODY_SIZE),
        "BRAINY_MIN_VERSION_TIMEOUT": "0.1",
    }
    # One batch indexed, so searches, warm-ups and compactions have data to reach.
    servers = {
        name: launch(name, url, **limits) for name in ("ingest", "search", "indexer", "compactor")
    }
    reply = servers["ingest"].post(
        "/ingest",
        {"collection": COLLECTION, "records": [{"id": "seed", "vector": [1.0] * DIMENSION}]},
    )
    assert reply.status == 202, str(reply)
    headers, body = event_request("gcs-binary", "local", [reply.json()["batch"]])
    indexed = servers["indexer"].post("/", data=body, headers=headers)
    assert indexed.status == 200, str(indexed)
    return servers


def objects(store: ObjectStore) -> dict[str, tuple[int, str]]:
    """Every object of the bucket (but instance bookkeeping) with its size and etag."""
    return {
        info.key: (info.size, info.etag)
        for info in store.list("")
        if not info.key.startswith(BOOKKEEPING)
    }


# --------------------------------------------------------------------- tests


@pytest.mark.parametrize(("function", "method", "path"), ENDPOINTS)
def test_no_request_gets_a_5xx_or_writes_when_refused(
    functions: dict[str, FunctionServer],
    bucket: tuple[str, ObjectStore],
    function: str,
    method: str,
    path: str,
) -> None:
    _, store = bucket
    server = functions[function]
    documented = DOCUMENT["paths"][path][method.lower()]["responses"]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(request=requests(method, path))
    def check(request: dict[str, Any]) -> None:
        before = objects(store)
        reply = server.request(
            request["method"],
            path,
            data=request["body"],
            headers=request["headers"],
            params=request["params"],
        )
        described = f"{request['method']} {path} {request}: {reply}"
        assert reply.status < 500 or _not_yet_visible(reply), described
        if reply.status >= 400:
            # A field may be named "" (an unknown key "" in the body): named all the same.
            assert isinstance(reply.error["field"], str), described
            assert reply.error["reason"], described
            assert objects(store) == before, f"a refused request wrote: {described}"
        if request["method"] == method:
            assert str(reply.status) in documented, described
        else:
            assert reply.status == 405, described

    check()


def _not_yet_visible(reply: Any) -> bool:
    """A search's `min_version` not visible within the timeout: a documented 503
    telling the client to retry, not a fault."""
    return reply.status == 503 and reply.error["code"] == "version_not_visible"
