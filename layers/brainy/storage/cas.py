"""One compare-and-swap loop for every object Brainy updates in place (the shared
configuration, lock leases): read, compute, write conditionally, and on a lost
race read again and recompute — with capped, jittered backoff between attempts.

The manifest is not updated in place (each version is a new object written
if absent) but loses races the same way; it backs off with `contention_delay`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from brainy.storage.base import NotFound, ObjectStore, PreconditionFailed, StorageError


class Contention(StorageError):
    """A compare-and-swap lost its race every time it was tried."""


@dataclass(frozen=True)
class Current:
    """An object as read: its bytes and ETag (both None when it does not exist)."""

    data: bytes | None
    etag: str | None


def contention_delay(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th lost race (full jitter, capped at 0.2 s)."""
    return random.uniform(0, min(0.2, 0.005 * 2 ** min(attempt, 6)))


def read_current(store: ObjectStore, key: str) -> Current:
    try:
        blob = store.get(key)
    except NotFound:
        return Current(None, None)
    return Current(blob.data, blob.etag)


def compare_and_swap(
    store: ObjectStore,
    key: str,
    change: Callable[[Current], bytes | None],
    *,
    attempts: int = 10,
    current: Current | None = None,
) -> Current:
    """Replace the object at `key` with `change(current)`, retrying lost races.

    Args:
        change: given the object as it stands, the bytes to write, or None to
            leave it as it is (the loop then returns the object unchanged). It may
            raise to give up; it is called again after every lost race.
        attempts: lost races tolerated before `Contention`.
        current: the object as the caller just read it (saves one read).

    Returns:
        The object now stored (what this call wrote, or what `change` accepted).

    Raises:
        Contention: every attempt lost its race.
    """
    for attempt in range(attempts):
        if current is None:
            current = read_current(store, key)
        data = change(current)
        if data is None:
            return current
        try:
            if current.etag is None:
                etag = store.put(key, data, if_absent=True)
            else:
                etag = store.put(key, data, if_match=current.etag)
            return Current(data, etag)
        except PreconditionFailed:
            current = read_current(store, key)
            if current.data == data:
                # A put retried after a transient failure landed the first time
                # and lost to itself the second: it is ours.
                return current
            time.sleep(contention_delay(attempt))
    raise Contention(f"{key}: lost the compare-and-swap race {attempts} times")
