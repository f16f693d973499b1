"""Filling the cache ahead of queries: `Brainy.warmup` (what `POST /warmup` calls),
warm-up at start, and the background warm-up after a query that probed only part
of a semantic collection. Store requests are counted through a recording store;
time is never asserted (bench/coldstart.py measures it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from brainy.core.config import ConfigError, load_settings
from brainy.core.errors import InvalidInput, UnknownCollection
from brainy.service.app import Brainy
from brainy.storage import open_store
from brainy.table.manifest import Manifest, Manifests
from helpers import declare, make_app, recording_reader, semantic_collection


def _semantic(tmp_path: Path) -> tuple[str, np.ndarray]:
    url = f"file://{tmp_path / 'store'}"
    return url, semantic_collection(url, tmp_path)


def _newest(url: str) -> Manifest:
    manifest = Manifests(open_store(url, read_only=True), "docs").latest()
    assert manifest is not None
    return manifest


def _live(manifest: Manifest) -> set[str]:
    return {ref.id for ref in manifest.segments if ref.live > 0}


def _cached(app: Brainy, manifest: Manifest) -> set[str]:
    return {ref.id for ref in manifest.segments if ref.live > 0 and app.searcher.cache.cached(ref)}


def test_warmup_loads_every_live_segment_then_a_search_makes_no_store_request(tmp_path: Path):
    url, vectors = _semantic(tmp_path)
    manifest = _newest(url)
    assert manifest.centroids is not None and any(ref.deletes for ref in manifest.segments)
    reader, store = recording_reader(url, tmp_path, BRAINY_BACKGROUND_WARM="false")

    [report] = reader.warmup({"collection": "docs"})

    assert report.collection == "docs" and report.version == manifest.version
    assert report.segments == report.loaded == len(_live(manifest)) and report.skipped == 0
    assert report.bytes > 0 and report.to_dict()["cache_full"] is False
    assert _cached(reader, manifest) == _live(manifest)
    store.calls.clear()
    for i in (0, 700, 1_950):
        hits = reader.search({"collection": "docs", "vector": vectors[i].tolist(), "k": 1}).hits
        assert hits[0].id == str(i)
    assert store.calls == []
    # Warmed again, nothing is loaded twice.
    again = reader.warmup({"collection": "docs"})[0]
    assert (again.loaded, again.cached) == (0, report.segments)


def test_an_empty_body_warms_every_declared_collection(tmp_path: Path):
    url, _ = _semantic(tmp_path)
    writer = make_app(url, tmp_path)
    declare(writer, name="empty", dimension=4)
    reader, _ = recording_reader(url, tmp_path)

    reports = {r.collection: r for r in reader.warmup({})}

    assert set(reports) == {"docs", "empty"}
    assert reports["docs"].loaded == len(_live(_newest(url)))
    assert (reports["empty"].version, reports["empty"].segments) == (0, 0)


def test_warmup_within_a_small_budget_stops_when_full_and_says_so(tmp_path: Path):
    url, _ = _semantic(tmp_path)
    manifest = _newest(url)
    sizes = sorted(ref.bytes for ref in manifest.segments if ref.live > 0)
    budget = sizes[-1] + sizes[-2]  # room for two segments, not for all of them
    reader, _ = recording_reader(url, tmp_path, BRAINY_CACHE_SIZE=str(budget))

    [report] = reader.warmup({"collection": "docs"})

    assert report.skipped > 0 and report.to_dict()["cache_full"] is True
    assert report.loaded + report.skipped == report.segments == len(sizes)
    assert report.loaded > 0 and report.bytes <= budget
    assert len(_cached(reader, manifest)) == report.loaded


@pytest.mark.parametrize(
    ("payload", "field", "error"),
    [
        ({"collection": "docs", "k": 3}, "k", InvalidInput),
        ({"collection": 7}, "collection", InvalidInput),
        ({"collection": ""}, "collection", InvalidInput),
        ({"collection": "nope"}, "collection", UnknownCollection),
        (["docs"], "body", InvalidInput),
    ],
)
def test_a_bad_warmup_request_names_the_field(tmp_path: Path, payload, field, error):
    url = f"file://{tmp_path / 'store'}"
    declare(make_app(url, tmp_path), dimension=4)
    reader, _ = recording_reader(url, tmp_path)
    with pytest.raises(error) as raised:
        reader.warmup(payload)
    assert raised.value.field == field


def _wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_warmup_at_start_loads_the_configured_collections_without_a_query(tmp_path: Path):
    url, _ = _semantic(tmp_path)
    manifest = _newest(url)
    reader, _ = recording_reader(url, tmp_path, BRAINY_WARMUP="docs")

    thread = reader.start_warmup()

    assert thread is not None
    thread.join(30)
    assert _cached(reader, manifest) == _live(manifest)


def test_nothing_is_warmed_at_start_by_default(tmp_path: Path):
    url, _ = _semantic(tmp_path)
    reader, store = recording_reader(url, tmp_path)
    assert reader.start_warmup() is None and store.calls == []


def test_a_first_query_is_answered_from_its_probes_then_the_rest_warms_in_background(
    tmp_path: Path,
):
    url, vectors = _semantic(tmp_path)
    manifest = _newest(url)
    reader, store = recording_reader(url, tmp_path)

    hits = reader.search({"collection": "docs", "vector": vectors[0].tolist(), "k": 1}).hits

    assert hits[0].id == "0"
    assert _wait_until(lambda: _cached(reader, manifest) == _live(manifest))
    # Each segment was downloaded once: the warm-up skipped what the query had fetched.
    downloads = [c.key for c in store.calls if c.op == "download"]
    assert len(downloads) == len(set(downloads)) == len(_live(manifest))


def test_background_warming_can_be_switched_off(tmp_path: Path):
    url, vectors = _semantic(tmp_path)
    manifest = _newest(url)
    reader, _ = recording_reader(url, tmp_path, BRAINY_BACKGROUND_WARM="false")

    reader.search({"collection": "docs", "vector": vectors[0].tolist(), "k": 1})

    # No thread was started that could fill the rest in later.
    assert reader.searcher._background is None
    assert len(_cached(reader, manifest)) < len(_live(manifest))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("docs", ("docs",)), (" a, b ,a", ("a", "b")), ("*", ("*",)), ("", ())],
)
def test_the_warmup_setting_is_a_comma_separated_list_in_the_environment(value, expected):
    env = {"BRAINY_STORE": "memory://warmup-setting", "BRAINY_WARMUP": value}
    assert load_settings(env, role="search")[0].warmup == expected


def test_bad_warm_up_settings_are_refused_naming_the_variable():
    with pytest.raises(ConfigError, match="BRAINY_WARMUP"):
        load_settings({"BRAINY_STORE": "memory://w1", "BRAINY_WARMUP": "a/b"}, role="search")
    with pytest.raises(ConfigError, match="BRAINY_BACKGROUND_WARM"):
        load_settings(
            {"BRAINY_STORE": "memory://w2", "BRAINY_BACKGROUND_WARM": "maybe"}, role="search"
        )
