"""Search: equality filters return k results whenever k matching records exist, on
the exact and the approximate path alike, best first, never a masked row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import declare, make_app


def _collection(tmp_path: Path, exact_threshold: int):
    app = make_app(f"file://{tmp_path / 'store'}", tmp_path)
    declare(app, dimension=16, exact_threshold=exact_threshold, n_trees=8)
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    colours = ["red"] * 2000 + ["blue"] * 990 + ["rare"] * 10
    records = [
        {"id": f"r{i}", "vector": vectors[i].tolist(), "metadata": {"colour": colours[i], "i": i}}
        for i in range(3000)
    ]
    app.index_key(app.ingest({"collection": "docs", "records": records}).batch)
    deleted = [f"r{i}" for i in range(2990, 2995)]  # half the rare ones
    app.index_key(app.ingest({"collection": "docs", "deletes": deleted}).batch)
    return app, vectors, colours, set(deleted)


@pytest.mark.parametrize("exact_threshold", [0, 100_000], ids=["approximate", "exact"])
@pytest.mark.parametrize(("colour", "k"), [("red", 10), ("blue", 25), ("rare", 10)])
def test_filters_return_k_matching_results_best_first(tmp_path, exact_threshold, colour, k):
    app, vectors, colours, deleted = _collection(tmp_path, exact_threshold)
    query = vectors[7] + 0.1
    hits = app.search(
        {"collection": "docs", "vector": query.tolist(), "k": k, "filter": {"colour": colour}}
    ).hits
    matching = [i for i, c in enumerate(colours) if c == colour and f"r{i}" not in deleted]
    assert len(hits) == min(k, len(matching))
    assert all(h.metadata["colour"] == colour for h in hits)
    assert not {h.id for h in hits} & deleted
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = sorted(matching, key=lambda i: -float(unit[i] @ query))[: len(hits)]
    found = {int(h.id[1:]) for h in hits}
    # The approximate path may trade a little recall, never the filter or the count.
    assert len(found & set(exact)) >= 0.8 * len(exact)


def test_a_filter_matching_nothing_and_an_empty_collection_answer_no_results(tmp_path):
    app, vectors, _, _ = _collection(tmp_path, 0)
    query = {"collection": "docs", "vector": vectors[0].tolist(), "filter": {"colour": "mauve"}}
    assert app.search(query).hits == []
    declare(app, name="empty", dimension=16)
    result = app.search({"collection": "empty", "vector": vectors[0].tolist()})
    assert (result.hits, result.version) == ([], 0)


def test_segment_cache_evicts_least_recently_used_within_its_budget(tmp_path):
    """Two collections, a cache that holds one of them: searching the other evicts
    the least recently used segments; searching back loads them again (read in
    place from the folder store: an `open` each), and every answer stays right."""
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((2, 4, 50, 16)).astype(np.float32)
    writer = make_app(f"file://{tmp_path / 'store'}", tmp_path)
    for c, name in enumerate(("left", "right")):
        declare(writer, name=name, dimension=16)
        for b in range(4):
            records = [
                {"id": f"{name}-{b}-{i}", "vector": vectors[c, b, i].tolist()} for i in range(50)
            ]
            writer.index_key(writer.ingest({"collection": name, "records": records}).batch)
    one_collection = sum(
        ref.bytes for ref in writer.manifests("left").latest().segments
    )  # an upper bound of its cached files
    app = make_app(f"file://{tmp_path / 'store'}", tmp_path, BRAINY_CACHE_SIZE=str(one_collection))
    cache = app.searcher.cache

    def ask(c: int, name: str) -> None:
        hits = app.search({"collection": name, "vector": vectors[c, 2, 7].tolist(), "k": 1}).hits
        assert hits[0].id == f"{name}-2-7"

    ask(0, "left")
    left = set(cache._entries)
    assert len(left) == 4 and app.store.requests["open"] == 4
    ask(1, "right")
    cached = set(cache._entries)
    assert len(cached) == 4 and not cached & left  # left's segments were evicted
    ask(0, "left")
    assert app.store.requests["open"] == 12  # loaded again, once each
    assert not app.store.requests["download"]
