"""Online recall: a sampled fraction of real queries is searched again exactly,
in the background, and recall@k of what was answered is averaged over the last
samples (exported as `brainy_search_recall`, DESIGN §7 and §10).

The exact re-run reads the same manifest version the answer came from, so a
commit between the two never counts as a miss. Sampling never slows a query: a
sampled query is handed to one daemon thread through a bounded queue, and
dropped when the queue is full. Nor do the re-runs take the queries' cores: an
exact pass over a large collection costs tens of queries, so after a re-run of t
seconds the monitor samples nothing for t x (1 / budget - 1), which bounds it to
`budget` of one core (measured on 1M rows, 2 cores, 2 client threads: 1 % of
queries re-run without a bound cost about a tenth of the throughput).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecallSample:
    """One answered query, with what is needed to answer it again exactly.

    Attributes:
        rerun: the exact answer's ids, best first (called on the monitor's thread).
        answered: the ids the query answered.
    """

    rerun: Callable[[], list[str]]
    answered: tuple[str, ...]


class RecallMonitor:
    """Measures recall@k of sampled queries against an exact re-run.

    Args:
        fraction: the fraction of queries sampled (0 disables the monitor).
        window: recall is the average of this many latest samples.
        queue_size: sampled queries waiting for their re-run; more are dropped.
        on_sample: called with each measured recall (a metrics counter).
        seed: seeds the sampling, for tests.
        budget: the share of one core the re-runs may take (1: no rest).
    """

    def __init__(
        self,
        fraction: float,
        window: int = 100,
        queue_size: int = 32,
        on_sample: Callable[[float], Any] | None = None,
        seed: int | None = None,
        budget: float = 1.0,
    ) -> None:
        self.fraction = fraction
        self.budget = budget
        # No query is sampled before this (time.monotonic()): the monitor rests.
        self._resume = 0.0
        self.dropped = 0
        self._recent: deque[float] = deque(maxlen=window)
        self._queue: queue.Queue[RecallSample] = queue.Queue(queue_size)
        self._on_sample = on_sample
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def wanted(self) -> bool:
        """Whether this query is sampled (cheap: called on every query)."""
        return (
            self.fraction > 0
            and self._random.random() < self.fraction
            and time.monotonic() >= self._resume
        )

    def submit(self, sample: RecallSample) -> bool:
        """Queue a sampled query for its exact re-run; False if it was dropped."""
        if self._closed.is_set():
            return False
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self.dropped += 1
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="brainy-recall", daemon=True)
                self._thread.start()
        return True

    @property
    def recall(self) -> float:
        """Average recall@k of the latest samples (NaN before the first)."""
        recent = list(self._recent)
        return sum(recent) / len(recent) if recent else float("nan")

    def join(self) -> None:
        """Wait until every queued sample is measured (for tests and shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                sample = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            began = time.monotonic()
            try:
                self._measure(sample)
            except Exception:
                # A re-run that fails (an evicted segment that can no longer be
                # fetched) loses one sample; the query was answered already.
                log.exception("recall sample failed")
            finally:
                took = time.monotonic() - began
                self._resume = time.monotonic() + took * (1.0 / self.budget - 1.0)
                self._queue.task_done()

    def _measure(self, sample: RecallSample) -> None:
        exact = sample.rerun()
        if not exact:
            return
        recall = len(set(exact) & set(sample.answered)) / len(exact)
        self._recent.append(recall)
        if self._on_sample is not None:
            self._on_sample(recall)
