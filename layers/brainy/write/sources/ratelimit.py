"""Pacing for a source that calls a rate-limited API: a clock that can be replaced
in tests (every wait goes through it), a token bucket, and capped exponential
backoff with jitter.

The clock is the seam: a crawler given a fake clock (the tests') never sleeps for
real, and a fake server that reads the same clock records when, in the
crawler's time, each request arrived, so a test can check the pacing without
looking at wall time.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time (for server-given instants such as a rate-limit reset), a
    monotonic time (for intervals) and a sleep that advances both."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class Interrupted(Exception):
    """A wait was cut short: the process is stopping, or the wait would outlast
    the run's time budget."""


class StoppableClock(SystemClock):
    """The real clock, whose waits end early (raising `Interrupted`) when `stop`
    is set or when they would run past `deadline` (monotonic seconds): a
    signalled process does not sit out an hour's rate-limit reset, and a
    scheduled run does not wait beyond its budget for one."""

    def __init__(self, stop: threading.Event, deadline: float | None = None) -> None:
        self.stop = stop
        self.deadline = deadline

    def sleep(self, seconds: float) -> None:
        if self.deadline is not None and self.monotonic() + seconds > self.deadline:
            raise Interrupted(f"a {seconds:.0f}s wait would outlast the time budget")
        if self.stop.wait(max(0.0, seconds)):
            raise Interrupted("stopping")


class TokenBucket:
    """At most `burst` requests at once and `rate` per second on average.

    Args:
        rate: tokens added per second.
        burst: the bucket's capacity (it starts full).
        clock: whose sleep waits for a token.
    """

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket: rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self) -> float:
        """Take one token, waiting for it if the bucket is empty; returns the
        seconds waited."""
        with self._lock:
            self._refill()
            wait = 0.0
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                self.clock.sleep(wait)
                self._refill()
            self._tokens -= 1
            return wait


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential from
    `base`, capped at `cap`, with "equal jitter" (at least half of it), so
    retries spread out but never come back at once."""
    delay = min(cap, base * 2**attempt)
    return delay / 2 + random.uniform(0, delay / 2)
