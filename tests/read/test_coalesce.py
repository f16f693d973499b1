"""Concurrent searches share work (brainy.read.coalesce): queries that arrive while
a search of the same collection runs are answered together after it, each with
the answer it would have had alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from brainy.core.results import Hit, SearchResult
from brainy.read.coalesce import Coalescer
from helpers import make_app, semantic_collection


def _until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _answer(q: np.ndarray) -> SearchResult:
    return SearchResult([Hit(str(int(q[0])), 1.0, None)], 7)


class Recorder:
    """`alone` blocks its first call until released; every call is recorded."""

    def __init__(self, fail: set[int] = frozenset()) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def alone(self, q: np.ndarray) -> SearchResult:
        self.calls.append(("alone", [int(q[0])]))
        self.started.set()
        self.release.wait(10)
        return _answer(q)

    def together(self, m: np.ndarray) -> list[SearchResult]:
        ids = [int(x) for x in m[:, 0]]
        self.calls.append(("together", ids))
        if self.fail & set(ids):
            raise RuntimeError("segment unreadable")
        return [_answer(q) for q in m]


def _queued(c: Coalescer, key: tuple, n: int) -> bool:
    with c._lock:
        return len(c._queues.get(key, [])) == n


def test_queries_arriving_during_a_search_are_answered_together_after_it():
    c, rec, key = Coalescer(running=1), Recorder(), ("docs", 10, 0.95)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(c.search, key, np.array([0.0]), rec.alone, rec.together)
        assert rec.started.wait(10)
        rest = {i: pool.submit(c.search, key, np.array([float(i)]), rec.alone, rec.together)
                for i in range(1, 6)}  # fmt: skip
        _until(lambda: _queued(c, key, 5), "five queries waiting")
        rec.release.set()
        assert [h.id for h in first.result(10).hits] == ["0"]
        for i, future in rest.items():
            assert [h.id for h in future.result(10).hits] == [str(i)]
    assert rec.calls[0] == ("alone", [0])
    assert [(kind, sorted(ids)) for kind, ids in rec.calls[1:]] == [("together", [1, 2, 3, 4, 5])]
    assert (c.batches, c.batched) == (1, 5)
    assert not c._queues and not c._runs  # the next query runs alone again


def test_other_keys_never_wait_and_a_batch_is_bounded():
    c, rec = Coalescer(max_batch=2, running=1), Recorder()
    key, other = ("docs", 10, 0.95), ("docs", 5, 0.95)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(c.search, key, np.array([0.0]), rec.alone, rec.together)
        assert rec.started.wait(10)
        # Another k is another search: it runs at once, beside the blocked one.
        assert c.search(other, np.array([9.0]), _answer, rec.together).hits[0].id == "9"
        rest = [pool.submit(c.search, key, np.array([float(i)]), rec.alone, rec.together)
                for i in range(1, 6)]  # fmt: skip
        _until(lambda: _queued(c, key, 5), "five queries waiting")
        rec.release.set()
        first.result(10)
        assert sorted(int(f.result(10).hits[0].id) for f in rest) == [1, 2, 3, 4, 5]
    batches = [ids for kind, ids in rec.calls if kind == "together"]
    assert [len(ids) for ids in batches] == [2, 2]  # then one alone
    assert [kind for kind, _ in rec.calls] == ["alone", "together", "together", "alone"]


def test_a_failed_batch_fails_its_own_queries_only():
    c, rec, key = Coalescer(max_batch=2, running=1), Recorder(fail={2}), ("docs", 10, 0.95)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(c.search, key, np.array([0.0]), rec.alone, rec.together)
        assert rec.started.wait(10)
        futures = {}
        for i in (1, 2, 3, 4):  # queued in this order: batches [1, 2] and [3, 4]
            futures[i] = pool.submit(c.search, key, np.array([float(i)]), rec.alone, rec.together)
            _until(lambda n=i: _queued(c, key, n), f"{i} waiting")
        rec.release.set()
        first.result(10)
        for i in (1, 2):
            with pytest.raises(RuntimeError, match="segment unreadable"):
                futures[i].result(10)
        assert [int(futures[i].result(10).hits[0].id) for i in (3, 4)] == [3, 4]
    assert not c._queues and not c._runs


def test_concurrent_searches_through_the_app_get_the_answers_they_get_alone(tmp_path: Path):
    """Through `Brainy.search` on a compacted semantic collection with a level-0
    segment and deletes: 8 threads of queries, the first held until the others
    queue, so they are answered in batches; every answer equals the query's own."""
    url = f"file://{tmp_path / 'store'}"
    vectors = semantic_collection(url, tmp_path)
    reader = make_app(url, tmp_path, role="search")
    rng = np.random.default_rng(3)
    queries = (vectors[rng.integers(0, len(vectors), 40)] + 0.1).astype(np.float32)

    def ask(q: np.ndarray) -> list[str]:
        payload = {"collection": "docs", "vector": q.tolist(), "k": 10}
        return [hit.id for hit in reader.search(payload).hits]

    alone = [ask(q) for q in queries]
    searcher = reader.searcher
    plain = searcher.search
    held, release = threading.Event(), threading.Event()

    def held_first(*args, **kw):
        if not held.is_set():
            held.set()
            release.wait(10)
        return plain(*args, **kw)

    searcher.search = held_first  # type: ignore[method-assign]
    searcher.coalescer.running = 1  # one core's worth: the rest queue behind it
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(ask, queries[0])
        assert held.wait(10)
        rest = [pool.submit(ask, q) for q in queries[1:]]
        _until(lambda: searcher.coalescer._queues, "a query waiting")
        key = next(iter(searcher.coalescer._queues))
        _until(lambda: _queued(searcher.coalescer, key, 7), "the other threads waiting")
        release.set()
        together = [first.result(30)] + [f.result(30) for f in rest]
    assert together == alone
    assert searcher.coalescer.batches >= 1 and searcher.coalescer.batched >= 7
    reader.close()


def test_as_many_searches_as_cores_run_at_once_before_any_waits():
    c, key = Coalescer(running=2), ("docs", 10, 0.95)
    first, second = Recorder(), Recorder()
    with ThreadPoolExecutor(8) as pool:
        a = pool.submit(c.search, key, np.array([1.0]), first.alone, first.together)
        b = pool.submit(c.search, key, np.array([2.0]), second.alone, second.together)
        assert first.started.wait(10) and second.started.wait(10)  # both running alone
        third = pool.submit(c.search, key, np.array([3.0]), first.alone, first.together)
        _until(lambda: _queued(c, key, 1), "the third waiting")
        first.release.set()
        second.release.set()
        assert [f.result(10).hits[0].id for f in (a, b, third)] == ["1", "2", "3"]
    assert not c._queues and not c._runs
