"""Concurrent searches share work: once as many searches of one collection (same
`k` and recall target, no filter) run as there are cores, the queries that
arrive wait, then run together as one `Searcher.search_batch` — one matrix
product per segment scanned exactly instead of one per query, each segment and
mask looked up once for the lot — and each gets the answer `Searcher.search`
would give it.

A search that finds a core's worth of room runs at once, alone, through
`Searcher.search`: an instance below saturation pays nothing. Beyond it, the
batch forming behind the running ones is what the load would have queued on the
cores anyway. The first waiter of a batch leads it (runs it on its own thread,
as it would have run its own query), so no thread is added.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainy.core.results import SearchResult

Key = tuple[Any, ...]
# Queries in one batch at most: bounds the matrices a batch holds (queries x rows).
MAX_BATCH = 64


@dataclass(eq=False)
class _Waiter:
    query: np.ndarray
    ready: threading.Event = field(default_factory=threading.Event)
    batch: list[_Waiter] | None = None  # handed to the waiter that leads it
    result: SearchResult | None = None
    error: BaseException | None = None

    def answer(self) -> SearchResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Coalescer:
    """Groups concurrent searches by `key` (see the module doc).

    Args:
        alone: answers one query (`Searcher.search` with the key's arguments).
        together: answers a matrix of queries, a result a row, as `alone` would
            each (`Searcher.search_batch`).
    """

    def __init__(self, max_batch: int = MAX_BATCH, running: int | None = None) -> None:
        self.max_batch = max_batch
        self.running = running or len(os.sched_getaffinity(0))
        self._lock = threading.Lock()
        self._queues: dict[Key, list[_Waiter]] = {}
        self._runs: dict[Key, int] = {}  # searches or batches of a key running now
        self.batches = 0  # searches answered together, in batches of two or more
        self.batched = 0  # queries answered in those batches

    def search(
        self,
        key: Key,
        query: np.ndarray,
        alone: Callable[[np.ndarray], SearchResult],
        together: Callable[[np.ndarray], list[SearchResult]],
    ) -> SearchResult:
        me = _Waiter(query)
        with self._lock:
            if self._runs.get(key, 0) < self.running:
                self._runs[key] = self._runs.get(key, 0) + 1
                batch: list[_Waiter] | None = [me]
            else:
                self._queues.setdefault(key, []).append(me)
                batch = None
        if batch is None:
            me.ready.wait()
            if me.batch is None:
                return me.answer()
            batch = me.batch
        self._run(key, batch, alone, together)
        return me.answer()

    def _run(
        self,
        key: Key,
        batch: list[_Waiter],
        alone: Callable[[np.ndarray], SearchResult],
        together: Callable[[np.ndarray], list[SearchResult]],
    ) -> None:
        try:
            if len(batch) == 1:
                batch[0].result = alone(batch[0].query)
            else:
                results = together(np.stack([w.query for w in batch]))
                for waiter, result in zip(batch, results, strict=True):
                    waiter.result = result
                self.batches += 1
                self.batched += len(batch)
        except BaseException as e:
            for waiter in batch:
                waiter.error = e
        finally:
            with self._lock:
                queue = self._queues.get(key)
                if queue:  # the run passes to the next batch
                    following = queue[: self.max_batch]
                    del queue[: self.max_batch]
                    following[0].batch = following
                    if not queue:
                        del self._queues[key]
                else:
                    following = []
                    self._runs[key] -= 1
                    if not self._runs[key]:
                        del self._runs[key]
            for waiter in batch[1:]:
                waiter.ready.set()
            if following:
                following[0].ready.set()
