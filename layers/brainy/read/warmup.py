"""Filling the segment cache ahead of queries: what a warm-up reports, and the
single background thread that warms the rest of a collection after a query that
probed only part of it."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmReport:
    """One collection's warm-up.

    Attributes:
        version: the manifest version warmed (0: the collection holds nothing yet).
        segments: its live segments.
        loaded: segments loaded into the cache now.
        bytes: their size in the cache.
        cached: segments that were cached already.
        skipped: segments left out because the cache budget was full.
        seconds: how long it took.
    """

    collection: str
    version: int
    segments: int
    loaded: int
    bytes: int
    cached: int
    skipped: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "segments": self.segments,
            "loaded": self.loaded,
            "bytes": self.bytes,
            "cached": self.cached,
            "skipped": self.skipped,
            "cache_full": self.skipped > 0,
            "seconds": round(self.seconds, 6),
        }


class BackgroundWarmer:
    """Warms one collection at a time on one daemon thread, at most once per
    manifest version: low priority by construction, so queries never wait on it.

    Args:
        warm: warms the collection it is given (errors are logged, not raised:
            the next query's own downloads will meet them).
    """

    def __init__(self, warm: Callable[[str], object]) -> None:
        self._warm = warm
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._queued: set[str] = set()
        # The version each collection was last warmed at: a budget too small for
        # the whole collection must not make every query start another warm-up.
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def request(self, collection: str, version: int) -> None:
        """Warm `collection` soon, unless it is queued or was warmed at `version`."""
        with self._lock:
            if self._closed or collection in self._queued:
                return
            if self._versions.get(collection) == version:
                return
            self._versions[collection] = version
            self._queued.add(collection)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="brainy-background-warm", daemon=True
                )
                self._thread.start()
        self._queue.put(collection)

    def _run(self) -> None:
        while True:
            name = self._queue.get()
            if name is None:
                return
            with self._lock:
                self._queued.discard(name)
            try:
                self._warm(name)
            except Exception:
                if self._closed:  # closed under it: its downloads were refused
                    return
                log.warning("background warm-up of %s failed", name, exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._queue.put(None)
