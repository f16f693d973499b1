"""A fresh search instance answers from the sketches of the segments it has not
cached (issue 7 §3): the same hits as once the segments are cached, without
downloading one of them before answering, deletes honoured, and a sketch or row
that fails its check costs a download, never a wrong answer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from brainy.maintenance.compaction import compact
from brainy.read import search as search_module
from brainy.service.app import Brainy
from brainy.storage import Blob
from brainy.table.manifest import Manifest, Manifests
from faults import FaultyStore
from helpers import declare, make_app, recording_reader

ROWS, DIM, PARTITIONS = 6_000, 24, 12


@pytest.fixture(autouse=True)
def sketch_small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """These segments are tiny: read their sketches all the same."""
    monkeypatch.setattr(search_module, "SKETCH_MIN_BYTES", 0)


def _collection(url: str, tmp_path: Path, metric: str = "angular") -> np.ndarray:
    """A semantic collection of clustered rows, compacted, with a batch of level-0
    rows on top; returns some queries."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((PARTITIONS, DIM)).astype(np.float32) * 3
    vectors = centres[rng.integers(0, PARTITIONS, ROWS)] + rng.standard_normal((ROWS, DIM))
    writer = make_app(url, tmp_path)
    declare(writer, dimension=DIM, metric=metric, partitions=PARTITIONS, strategy="semantic")
    for at in range(0, ROWS, 2_000):
        records = [
            {"id": str(i), "vector": vectors[i].tolist(), "metadata": {"n": i}}
            for i in range(at, at + 2_000)
        ]
        writer.index_key(writer.ingest({"collection": "docs", "records": records}).batch)
    assert compact(writer.maintenance, "docs", force=True).status == "compacted"
    extra = [{"id": f"x{i}", "vector": (vectors[i] + 0.3).tolist()} for i in range(50)]
    writer.index_key(writer.ingest({"collection": "docs", "records": extra}).batch)
    writer.close()
    queries = centres[rng.integers(0, PARTITIONS, 8)] + rng.standard_normal((8, DIM))
    return queries.astype(np.float32)


def _newest(app: Brainy) -> Manifest:
    manifest = Manifests(app.store, "docs").latest()
    assert manifest is not None
    return manifest


def _search(app: Brainy, q: np.ndarray, **extra) -> list[tuple[str, float, object]]:
    payload = {"collection": "docs", "vector": q.tolist(), "k": 10, **extra}
    return [(h.id, h.score, h.metadata) for h in app.search(payload).hits]


def _all_cached(app: Brainy, manifest: Manifest, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(app.searcher.cache.cached(r) for r in manifest.segments if r.live > 0):
        assert time.monotonic() < deadline, "the background warm-up never finished"
        time.sleep(0.02)


def _thread_log(store: FaultyStore) -> list[tuple[str, str, str]]:
    """(thread name, op, key) of every call `store` receives from now on."""
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def before(n: int, op: str, key: str) -> None:
        with lock:
            seen.append((threading.current_thread().name, op, key))

    store.before = before
    return seen


def _same(cold: list, warm: list) -> None:
    assert [h[0] for h in cold] == [h[0] for h in warm]
    assert [h[2] for h in cold] == [h[2] for h in warm]
    assert np.allclose([h[1] for h in cold], [h[1] for h in warm], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
def test_a_fresh_reader_answers_from_sketches_before_downloading(tmp_path: Path, metric: str):
    url = f"memory://cold-{metric}-{tmp_path.name}"
    queries = _collection(url, tmp_path, metric)
    reader, store = recording_reader(url, tmp_path)
    manifest = _newest(reader)
    sketched = {r.key for r in manifest.segments if r.sketch is not None}
    assert sketched and all(r.sketch for r in manifest.segments if r.level > 0)

    seen = _thread_log(store)
    cold = _search(reader, queries[0])
    answered = list(seen)
    # Nothing was downloaded to answer: the query's thread and the sketch readers
    # only sent GETs (a sketch, a few rows, the winners' headers a segment).
    query_side = [c for c in answered if not c[0].startswith("brainy-download")]
    assert {op for _, op, _ in query_side} == {"get"}
    segment_gets = [key for _, _, key in query_side if key in sketched]
    probed = len(set(segment_gets))
    assert probed < len([r for r in manifest.segments if r.level > 0])
    assert len(segment_gets) <= probed + 2 * 10 + 10

    _all_cached(reader, manifest)
    _same(cold, _search(reader, queries[0]))
    warm = make_app(url, tmp_path, "search", BRAINY_BACKGROUND_WARM="false")
    for q in queries[1:]:
        fresh, _ = recording_reader(url, tmp_path)
        _same(_search(fresh, q), _search(warm, q))
        fresh.close()
    warm.close()
    reader.close()


def test_deleted_rows_never_come_back_from_a_sketch(tmp_path: Path):
    url = f"memory://cold-deletes-{tmp_path.name}"
    queries = _collection(url, tmp_path)
    writer = make_app(url, tmp_path)
    gone = [h[0] for h in _search(writer, queries[0])[:5]]
    writer.index_key(writer.ingest({"collection": "docs", "deletes": gone}).batch)
    warm = _search(writer, queries[0])
    writer.close()
    reader, store = recording_reader(url, tmp_path)
    seen = _thread_log(store)
    cold = _search(reader, queries[0])
    assert not any(op == "download" for name, op, _ in seen if name == "MainThread")
    assert not set(gone) & {h[0] for h in cold}
    _same(cold, warm)
    reader.close()


def _corrupting(
    store: FaultyStore, bad: Callable[[str, tuple[int, int]], bool], at: int
) -> list[str]:
    """Flip a bit of byte `at` of the first ranged read that `bad` picks."""
    inner, hit = store.inner, []

    def get(key, if_none_match=None, byte_range=None):
        blob = type(inner)._get(inner, key, if_none_match, byte_range)
        if byte_range is None or hit or not bad(key, byte_range):
            return blob
        hit.append(key)
        data = bytearray(blob.data)
        data[at] ^= 0x40
        return Blob(bytes(data), blob.etag)

    inner._get = get  # type: ignore[method-assign]
    return hit


@pytest.mark.parametrize("what", ["sketch", "row"])
def test_a_read_that_fails_its_check_falls_back_to_the_segment(
    tmp_path: Path, what: str, caplog: pytest.LogCaptureFixture
):
    url = f"memory://cold-corrupt-{what}-{tmp_path.name}"
    queries = _collection(url, tmp_path)
    warm = make_app(url, tmp_path, "search", BRAINY_BACKGROUND_WARM="false")
    expected = _search(warm, queries[0])
    warm.close()
    reader, store = recording_reader(url, tmp_path)
    spans = {r.key: int(r.sketch.split(":")[0]) for r in _newest(reader).segments if r.sketch}

    def bad(key: str, byte_range: tuple[int, int]) -> bool:
        if key not in spans:
            return False
        is_sketch = byte_range[0] == spans[key]
        return is_sketch if what == "sketch" else not is_sketch and byte_range[0] > 0

    # A row read starts with a candidate's node: its first float's exponent (an
    # angular node holds 12 bytes before its vector); a sketch fails anywhere.
    hit = _corrupting(store, bad, 1000 if what == "sketch" else 12 + 3)
    with caplog.at_level(logging.WARNING, logger="brainy.read.search"):
        cold = _search(reader, queries[0])
    assert hit, "no read was corrupted"
    assert "searching whole segments instead of their sketches" in caplog.text
    _same(cold, expected)
    reader.close()


def test_exact_and_filtered_queries_read_whole_segments(tmp_path: Path):
    """A sketch is an estimate: recall 1.0 reads every row in full, and a filter
    needs the segments' metadata."""
    url = f"memory://cold-exact-{tmp_path.name}"
    queries = _collection(url, tmp_path)
    for extra in ({"recall_target": 1.0}, {"filter": {"n": 5}}):
        reader, store = recording_reader(url, tmp_path)
        seen = _thread_log(store)
        _search(reader, queries[0], **extra)
        ops = {op for name, op, key in seen if "/segments/" in key and name == "MainThread"}
        assert "download" in ops or any(
            op == "download" for name, op, _ in seen if name.startswith("brainy-download")
        )
        assert not any(name.startswith("brainy-sketch") for name, _, _ in seen)
        reader.close()


def test_s3_first_query_from_sketches_over_http(store_url: Callable[[str], str], tmp_path: Path):
    url = store_url("s3")
    queries = _collection(url, tmp_path)
    reader, store = recording_reader(url, tmp_path)
    seen = _thread_log(store)
    cold = _search(reader, queries[0])
    assert any(name.startswith("brainy-sketch") for name, _, _ in seen)
    warm = make_app(url, tmp_path, "search", BRAINY_BACKGROUND_WARM="false")
    _same(cold, _search(warm, queries[0]))
    warm.close()
    reader.close()


def test_segments_read_from_sketches_are_cached_behind_the_answer(tmp_path: Path):
    """Even in a cache too small for the collection: the next such query sends
    nothing to the store, as after a query that downloaded them first."""
    url = f"memory://cold-budget-{tmp_path.name}"
    queries = _collection(url, tmp_path)
    probe, _ = recording_reader(url, tmp_path)
    manifest = _newest(probe)
    probe.close()
    partitions = [r for r in manifest.segments if r.level > 0]
    budget = sum(sorted(r.bytes for r in partitions)[-6:])  # about half of them
    assert budget < sum(r.bytes for r in manifest.segments)
    reader, store = recording_reader(url, tmp_path, BRAINY_CACHE_SIZE=str(budget))
    seen = _thread_log(store)
    cold = _search(reader, queries[0])
    read = {key for name, _, key in seen if name.startswith("brainy-sketch")}
    wanted = [r for r in manifest.segments if r.key in read]
    assert wanted
    deadline = time.monotonic() + 30
    while not all(reader.searcher.cache.cached(r) for r in wanted):
        assert time.monotonic() < deadline, "the segments read from sketches never landed"
        time.sleep(0.02)
    time.sleep(0.2)  # let the background warm-up stop at the budget
    seen.clear()
    _same(_search(reader, queries[0]), cold)
    assert seen == []
    reader.close()


def test_a_batch_of_cold_queries_reads_each_sketch_once(tmp_path: Path):
    """Concurrent queries of a fresh instance (coalesced into one batch) share the
    reads: no sketch twice, and each query's hits are those it gets alone."""
    from brainy.core.config import CollectionSchema

    url = f"memory://cold-batch-{tmp_path.name}"
    queries = _collection(url, tmp_path)
    warm = make_app(url, tmp_path, "search", BRAINY_BACKGROUND_WARM="false")
    expected = [_search(warm, q) for q in queries]
    warm.close()
    reader, store = recording_reader(url, tmp_path)
    manifest = _newest(reader)
    schema = CollectionSchema.from_dict("docs", manifest.schema)
    spans = {r.key: (r.sketch or "").split(":")[0] for r in manifest.segments}
    seen: list[tuple[str, str, tuple[int, int] | None]] = []
    inner, lock = store.inner, threading.Lock()

    def get(key, if_none_match=None, byte_range=None):
        with lock:
            seen.append((threading.current_thread().name, key, byte_range))
        return type(inner)._get(inner, key, if_none_match, byte_range)

    inner._get = get  # type: ignore[method-assign]
    results = reader.searcher.search_batch(schema, queries, 10)
    for got, want in zip(results, expected, strict=True):
        _same([(h.id, h.score, h.metadata) for h in got.hits], want)
    sketches = [
        key
        for name, key, byte_range in seen
        if byte_range and name.startswith("brainy-sketch") and str(byte_range[0]) == spans[key]
    ]
    assert sketches and len(sketches) == len(set(sketches))
    reader.close()


def test_a_few_small_segments_are_downloaded_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Below `SKETCH_MIN_BYTES` a download costs about what the round trips of
    sketch, rows and headers do, and leaves the segments cached."""
    url = f"memory://cold-small-{tmp_path.name}"
    queries = _collection(url, tmp_path)
    reader, store = recording_reader(url, tmp_path)
    probed = sum(r.bytes for r in _newest(reader).segments)
    monkeypatch.setattr(search_module, "SKETCH_MIN_BYTES", probed + 1)
    seen = _thread_log(store)
    _search(reader, queries[0])
    assert not any(name.startswith("brainy-sketch") for name, _, _ in seen)
    assert any(op == "download" for _, op, _ in seen)
    reader.close()
