"""Warming the search function's cache, through the real function process: `POST
/warmup`, warm-up at start (`BRAINY_WARMUP`) and the background warm-up after a
first query on a semantic collection. Store requests are read from `/metrics`;
waits poll with a timeout, and no time is asserted (bench/coldstart.py measures it)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from harness import FunctionServer

from brainy.storage import open_store
from brainy.table.manifest import Manifests
from conftest import Launcher
from helpers import semantic_collection
from servers import emulator_env

# Long enough that no manifest refresh lands between the requests a test counts.
NO_REFRESH = "3600"


def _live(url: str) -> int:
    manifest = Manifests(open_store(url, read_only=True), "docs").latest()
    assert manifest is not None
    return sum(1 for ref in manifest.segments if ref.live > 0)


def _search(search: FunctionServer, vector: np.ndarray) -> str:
    reply = search.post("/search", {"collection": "docs", "vector": vector.tolist(), "k": 1})
    assert reply.status == 200, str(reply)
    return reply.json()["results"][0]["id"]


def _wait_for_downloads(search: FunctionServer, expected: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    # Segment loads: downloads, or opens of a folder store's files read in place.
    while (found := sum(search.store_requests()[k] for k in ("download", "open"))) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return found


def _quiet(search: FunctionServer, still: float = 0.5, timeout: float = 30.0) -> Counter[str]:
    """The store requests once none has been sent for `still` seconds: a warm-up
    reads deletion files after the segments it loads."""
    deadline = time.monotonic() + timeout
    seen = search.store_requests()
    while time.monotonic() < deadline:
        time.sleep(still)
        now = search.store_requests()
        if now == seen:
            return now
        seen = now
    return seen


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_post_warmup_fills_the_cache_and_then_a_search_makes_no_store_request(
    kind: str,
    launch: Launcher,
    store_url: Callable[[str], str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    url = store_url(kind)
    emulators = emulator_env(s3=request.getfixturevalue("moto_server")) if kind == "s3" else {}
    vectors = semantic_collection(url, tmp_path)
    search = launch(
        "search",
        url,
        emulators,
        BRAINY_MODE="read-only",
        BRAINY_REFRESH_INTERVAL=NO_REFRESH,
        BRAINY_BACKGROUND_WARM="false",
    )

    reply = search.post("/warmup", {"collection": "docs"})

    assert reply.status == 200, str(reply)
    [report] = reply.json()["collections"]
    assert report["collection"] == "docs" and report["version"] > 0
    assert report["loaded"] == report["segments"] == _live(url)
    assert report["skipped"] == 0 and report["cache_full"] is False and report["bytes"] > 0
    before = search.store_requests()
    assert [_search(search, vectors[i]) for i in (0, 900, 1_950)] == ["0", "900", "1950"]
    assert search.store_requests() == before


def test_post_warmup_within_a_small_cache_reports_what_it_skipped(
    launch: Launcher, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'store'}"
    semantic_collection(url, tmp_path)
    search = launch("search", url, BRAINY_CACHE_SIZE="20KB", BRAINY_BACKGROUND_WARM="false")

    reply = search.post("/warmup", data=b"")

    assert reply.status == 200, str(reply)
    [report] = reply.json()["collections"]
    assert report["skipped"] > 0 and report["cache_full"] is True
    assert report["loaded"] + report["skipped"] == report["segments"]
    assert report["bytes"] <= 20_000


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"collection": 5}, 400, "collection"),
        ({"colection": "docs"}, 400, "colection"),
        ({"collection": "nope"}, 404, "collection"),
        (b"{not json", 400, "body"),
    ],
)
def test_a_bad_warmup_request_names_the_field(
    launch: Launcher, file_store_url: str, body: object, status: int, field: str
) -> None:
    search = launch("search", file_store_url)
    reply = (
        search.post("/warmup", data=body)
        if isinstance(body, bytes)
        else search.post("/warmup", body)
    )
    assert reply.status == status, str(reply)
    assert reply.error["field"] == field


def test_warmup_at_start_loads_the_collection_without_any_query(
    launch: Launcher, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'store'}"
    vectors = semantic_collection(url, tmp_path)
    live = _live(url)

    search = launch(
        "search", url, BRAINY_WARMUP="docs", BRAINY_REFRESH_INTERVAL=NO_REFRESH,
        BRAINY_BACKGROUND_WARM="false",
    )  # fmt: skip

    assert _wait_for_downloads(search, live) == live
    before = _quiet(search)
    assert _search(search, vectors[700]) == "700"
    assert search.store_requests() == before


def test_after_a_first_query_the_rest_of_the_collection_warms_in_the_background(
    launch: Launcher, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'store'}"
    vectors = semantic_collection(url, tmp_path)
    live = _live(url)
    search = launch("search", url, BRAINY_REFRESH_INTERVAL=NO_REFRESH)

    assert _search(search, vectors[0]) == "0"

    assert _wait_for_downloads(search, live) == live
    # Whichever partition a query probes now is cached already.
    before = _quiet(search)
    assert [_search(search, vectors[i]) for i in range(100, 1_800, 170)] == [
        str(i) for i in range(100, 1_800, 170)
    ]
    assert search.store_requests() == before
