"""The OpenAPI document: every function serves the one kept in the repo, it is a
valid OpenAPI 3.1 document, and it documents exactly the routes the functions
answer (found by asking each real function, as a client would)."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator

import pytest
from harness import REPO, FunctionServer, Launcher
from openapi_spec_validator import validate

DOCUMENT = REPO / "layers" / "brainy" / "entry" / "openapi.json"
FUNCTIONS = ("ingest", "search", "indexer", "compactor")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


@pytest.fixture(scope="module")
def functions(launch: Launcher, file_store_url: str) -> Iterator[dict[str, FunctionServer]]:
    yield {name: launch(name, file_store_url) for name in FUNCTIONS}


def documented(document: dict) -> set[tuple[str, str, str]]:
    """(function, METHOD, path) of every operation, by its `x-brainy-functions`."""
    return {
        (function, method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for function in operation["x-brainy-functions"]
    }


def served(server: FunctionServer) -> set[tuple[str, str, str]]:
    """The routes a function answers: the paths its 404 lists, and of each the methods
    it does not refuse with 405. A POST carries a JSON array, which every handler
    refuses without writing anything."""
    missing = server.get("/no-such-path")
    assert missing.status == 404, str(missing)
    paths = ast.literal_eval(missing.error["reason"].split("expected one of ", 1)[1])
    found = set()
    for path in paths:
        for method in METHODS:
            body = b"[]" if method != "GET" else None
            headers = {"Content-Type": "application/json"} if body else {}
            reply = server.request(method, path, data=body, headers=headers)
            assert reply.status < 500, f"{method} {path}: {reply}"
            if reply.status != 405:
                found.add((server.name, method, path))
    return found


def test_every_function_serves_the_document_kept_in_the_repo(
    functions: dict[str, FunctionServer],
) -> None:
    for server in functions.values():
        reply = server.get("/openapi.json")
        assert reply.status == 200, str(reply)
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.body == DOCUMENT.read_bytes()


def test_the_document_is_valid_openapi_3_1() -> None:
    document = json.loads(DOCUMENT.read_text())
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_every_served_route_is_documented_and_every_documented_one_served(
    functions: dict[str, FunctionServer],
) -> None:
    document = json.loads(DOCUMENT.read_text())
    answered = set().union(*(served(server) for server in functions.values()))
    expected = documented(document)

    assert answered - expected == set(), "served but not documented"
    assert expected - answered == set(), "documented but not served"


def test_documented_status_codes_include_every_error_answer_of_a_route(
    functions: dict[str, FunctionServer],
) -> None:
    # The answers a client most often meets: malformed JSON and a wrong method.
    document = json.loads(DOCUMENT.read_text())
    for function, method, path in documented(document):
        if method != "POST":
            continue
        reply = functions[function].request(
            "POST", path, data=b"{", headers={"Content-Type": "application/json"}
        )
        assert str(reply.status) in document["paths"][path]["post"]["responses"], (
            f"{function} POST {path}: {reply}"
        )
        assert reply.error["field"]
