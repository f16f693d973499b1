"""The deletion files of a store's segments, read once and cached.

Deletion files are immutable, so a cached one never goes stale: a reader fetches
a segment's file once, when a manifest first points at it, and a warm search
makes no request for it. Writers go through the same object, so the masks they
write are cached without reading them back.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import replace

import numpy as np

from brainy.format.deletes import decode_mask, deletion_key, encode_mask
from brainy.storage import ObjectStore, PreconditionFailed
from brainy.table.manifest import SegmentRef

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)


class Masks:
    """Masked rows by deletion file key, least recently used evicted past
    `max_bytes` of decoded arrays."""

    def __init__(self, store: ObjectStore, max_bytes: int = 256 << 20) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._blocked: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def rows(self, ref: SegmentRef) -> np.ndarray:
        """The masked rows of `ref`, sorted (read-only)."""
        if ref.deletes is None:
            return _EMPTY
        with self._lock:
            rows = self._rows.get(ref.deletes)
            if rows is not None:
                self._rows.move_to_end(ref.deletes)
                return rows
        rows, count = decode_mask(self.store.get(ref.deletes).data, ref.deletes)
        if count != ref.count or rows.size != ref.masked:
            raise ValueError(
                f"{ref.deletes}: masks {rows.size} of {count} rows, "
                f"the ref says {ref.masked} of {ref.count}"
            )
        self._remember(ref.deletes, rows)
        return rows

    def known(self, ref: SegmentRef) -> bool:
        """Whether `blocked(ref)` answers without a request to the store."""
        return ref.deletes is None or ref.deletes in self._blocked

    def blocked(self, ref: SegmentRef) -> np.ndarray | None:
        """A boolean array over `ref`'s rows, True where masked; None if none is."""
        if ref.deletes is None:
            return None
        with self._lock:
            cached = self._blocked.get(ref.deletes)
            if cached is not None:
                self._blocked.move_to_end(ref.deletes)
                return cached
        blocked = np.zeros(ref.count, dtype=bool)
        blocked[self.rows(ref)] = True
        blocked.setflags(write=False)
        with self._lock:
            self._blocked[ref.deletes] = blocked
            self._bytes += blocked.nbytes
            self._evict()
        return blocked

    def mask(self, collection: str, ref: SegmentRef, rows: np.ndarray) -> SegmentRef:
        """`ref` with `rows` masked too: writes one new deletion file holding every
        masked row (nothing is written when all of them already are)."""
        current = self.rows(ref)
        merged = np.union1d(current, np.asarray(rows, dtype=np.int64))
        if merged.size == current.size:
            return ref
        key = deletion_key(collection, ref.id)
        # The key is fresh: finding it taken can only mean this put's own retry,
        # after a response that was lost.
        with contextlib.suppress(PreconditionFailed):
            self.store.put(key, encode_mask(merged, ref.count), if_absent=True)
        merged.setflags(write=False)
        self._remember(key, merged)
        return replace(ref, deletes=key, masked=int(merged.size))

    def _remember(self, key: str, rows: np.ndarray) -> None:
        rows.setflags(write=False)
        with self._lock:
            if key not in self._rows:
                self._rows[key] = rows
                self._bytes += rows.nbytes
                self._evict()

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and (self._rows or self._blocked):
            table = self._blocked if self._blocked else self._rows
            _, arr = table.popitem(last=False)
            self._bytes -= arr.nbytes
