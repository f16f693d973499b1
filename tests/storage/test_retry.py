"""Retries: transient failures are retried with capped, jittered backoff; lost races are not."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from brainy.storage import NotFound, PreconditionFailed, RetryPolicy, Transient
from brainy.storage.memory import MemoryStore

Policy = Callable[[int], RetryPolicy]


class FlakyStore(MemoryStore):
    """A memory store whose puts and gets first raise the scripted errors, in order."""

    def __init__(self, failures: list[Exception], policy: RetryPolicy) -> None:
        super().__init__(retry=policy)
        self.failures = failures
        self.attempts = 0

    def _fail_first(self) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)

    def _put(self, key, data, if_absent, if_match) -> str:
        self._fail_first()
        return super()._put(key, data, if_absent, if_match)

    def _get(self, key, if_none_match, byte_range):
        self._fail_first()
        return super()._get(key, if_none_match, byte_range)


def test_transient_failures_are_retried_with_growing_backoff(recording_retry: Policy) -> None:
    policy = recording_retry(6)
    store = FlakyStore([Transient("503 SlowDown"), Transient("connection reset")], policy)

    etag = store.put("wal/b.batch", b"data", if_absent=True)

    assert store.get("wal/b.batch").etag == etag
    assert store.attempts == 4  # three puts, one get
    assert policy.asked == [0, 1]
    assert store.requests["put"] == 3


def test_precondition_failed_is_never_retried(recording_retry: Policy) -> None:
    policy = recording_retry(6)
    store = FlakyStore([PreconditionFailed("412")], policy)

    with pytest.raises(PreconditionFailed):
        store.put("manifests/2.json", b"m", if_absent=True)
    assert store.attempts == 1
    assert policy.asked == []
    assert store.requests["put"] == 1


def test_not_found_is_never_retried(recording_retry: Policy) -> None:
    policy = recording_retry(6)
    store = FlakyStore([], policy)

    with pytest.raises(NotFound):
        store.get("manifests/9.json")
    assert (store.attempts, policy.asked) == (1, [])


def test_retries_give_up_after_the_policy_attempts(recording_retry: Policy) -> None:
    policy = recording_retry(4)
    store = FlakyStore([Transient("503")] * 10, policy)

    with pytest.raises(Transient):
        store.put("k", b"v")
    assert store.attempts == 4
    assert policy.asked == [0, 1, 2]
    assert not store.exists("k")


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)

    for attempt in range(8):
        cap = min(1.0, 0.1 * 2**attempt)
        waits = [policy.delay(attempt) for _ in range(200)]
        assert all(0.0 <= w <= cap for w in waits)
        assert max(waits) > cap / 2  # full jitter spreads over the whole window
        assert len(set(waits)) > 1
