"""Fixtures for the storage tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from brainy.storage import RetryPolicy


@dataclass(frozen=True)
class RecordingPolicy(RetryPolicy):
    """A retry policy that notes which backoff steps were asked for, and never sleeps."""

    asked: list[int] = field(default_factory=list)

    def delay(self, attempt: int) -> float:
        self.asked.append(attempt)
        return 0.0


@pytest.fixture
def recording_retry() -> Callable[[int], RecordingPolicy]:
    """Factory: `recording_retry(attempts)` gives a policy whose `asked` lists the backoff steps."""
    return lambda attempts: RecordingPolicy(attempts=attempts)
