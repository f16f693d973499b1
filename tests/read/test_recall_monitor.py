"""The online recall monitor never holds a query up: a sampled query waits in a
bounded queue for its exact re-run, and is dropped when the queue is full."""

from __future__ import annotations

import math
import threading
import time

from brainy.read.recall import RecallMonitor, RecallSample


def test_a_full_queue_drops_samples_instead_of_waiting():
    release = threading.Event()

    def slow() -> list[str]:
        release.wait(10)
        return ["a", "b"]

    monitor = RecallMonitor(1.0, queue_size=1)
    accepted = [monitor.submit(RecallSample(slow, ("a", "x"))) for _ in range(5)]
    release.set()
    monitor.join()

    # One re-run in progress at most, one waiting: the rest were dropped.
    assert accepted.count(True) <= 2 and monitor.dropped == accepted.count(False) >= 3
    assert monitor.recall == 0.5
    monitor.close()


def test_recall_averages_the_latest_samples_and_nothing_is_sampled_at_zero():
    measured: list[float] = []
    monitor = RecallMonitor(1.0, window=2, on_sample=measured.append)
    for exact, answered in ((["a"], ("b",)), (["a", "b"], ("a", "c")), (["a"], ("a",))):
        monitor.submit(RecallSample(lambda exact=exact: exact, answered))
        monitor.join()

    assert measured == [0.0, 0.5, 1.0]
    assert monitor.recall == 0.75
    assert math.isnan(RecallMonitor(0.0).recall)
    assert not any(RecallMonitor(0.0).wanted() for _ in range(100))
    monitor.close()


def test_the_monitor_rests_after_a_rerun_so_reruns_take_at_most_their_budget():
    """A re-run of t seconds at a budget of a quarter of a core: no query is sampled
    for the next 3t, then sampling resumes."""
    monitor = RecallMonitor(1.0, budget=0.25)

    def slow() -> list[str]:
        time.sleep(0.1)
        return ["a"]

    assert monitor.wanted()
    monitor.submit(RecallSample(slow, ("a",)))
    monitor.join()
    rested = time.monotonic()
    assert not any(monitor.wanted() for _ in range(100))
    while not monitor.wanted():
        assert time.monotonic() - rested < 10, "sampling never resumed"
        time.sleep(0.01)
    assert time.monotonic() - rested >= 0.2  # 3 x 0.1 s, less the time join took
    assert monitor.recall == 1.0
    monitor.close()
