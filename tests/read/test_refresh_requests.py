"""A reader's object-store requests: none while warm, and after a commit only what
changed (the hint, the new version, the new segment and the one new deletion file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainy.core.config import load_settings
from brainy.service.app import Brainy
from brainy.storage import open_store
from faults import FaultyStore
from helpers import declare, make_app


def _reader(url: str, tmp_path: Path, refresh: str) -> tuple[Brainy, FaultyStore]:
    inner = open_store(url, read_only=True)
    env = {
        "BRAINY_STORE": url,
        "BRAINY_ROLE": "search",
        "BRAINY_MODE": "read-only",
        "BRAINY_CACHE_DIR": str(tmp_path / "reader"),
        "BRAINY_REFRESH_INTERVAL": refresh,
    }
    settings, _ = load_settings(env, role="search", store=inner)
    store = FaultyStore(inner, read_only=True)
    return Brainy(settings, store), store


def _upsert(app: Brainy, ids: list[str], rng: np.random.Generator) -> None:
    records = [{"id": i, "vector": rng.standard_normal(8).tolist()} for i in ids]
    key = app.ingest({"collection": "docs", "records": records}).batch
    assert app.index_key(key).status == "applied"


def test_warm_search_makes_no_request_and_a_refresh_fetches_only_what_changed(
    tmp_path: Path,
):
    url = f"file://{tmp_path / 'bucket'}"
    writer = make_app(url, tmp_path)
    declare(writer)
    rng = np.random.default_rng(3)
    for b in range(3):
        _upsert(writer, [f"b{b}-{i}" for i in range(20)], rng)
    reader, store = _reader(url, tmp_path, refresh="3600")
    query = {"collection": "docs", "vector": rng.standard_normal(8).tolist(), "k": 5}
    reader.search(query)
    before = store.count
    for _ in range(5):
        reader.search(query)
    assert store.count == before, "a warm search made requests"

    # One commit: a new segment, and a row of the first segment masked (its id is
    # upserted again), so one new deletion file.
    _upsert(writer, ["b0-3", "new"], rng)
    reader.searcher.view("docs").current(force=True)
    mark = store.count
    reader.search(query)
    fetched = [(c.op, c.key) for c in store.calls[before:]]
    newest = writer.manifests("docs").latest()
    changed = [ref for ref in newest.segments if ref.deletes]
    assert len(changed) == 1
    assert ("get", changed[0].deletes) in fetched
    assert ("download", newest.segments[-1].key) in fetched
    segment_reads = [k for op, k in fetched if op == "download"]
    assert segment_reads == [newest.segments[-1].key], "an unchanged segment was fetched again"
    assert store.count - mark <= 2  # the new segment and the deletion file
