"""Segment headers (ids, timestamps, writers, tombstones) by segment id.

Segments are immutable, so an entry never goes stale; only a ranged GET of the
segment's head fills a miss. Writers (indexer, compaction, verify) use headers to
resolve last-writer-wins without downloading indexes.
"""

from __future__ import annotations

import threading

from brainy.format.segment import SegmentHeader, read_segment_header
from brainy.storage import ObjectStore
from brainy.table.manifest import SegmentRef


class HeaderCache:
    """Headers read once per segment.

    Args:
        store: the bucket.
        keep_metadata: keep the rows' metadata too. Last-writer-wins needs only
            ids, timestamps, writers and tombstones; an indexer keeps slim
            headers (`SegmentHeader.slim`: no metadata, writers as codes), so a
            header costs about what its ids do.
    """

    def __init__(self, store: ObjectStore, *, keep_metadata: bool = True) -> None:
        self.store = store
        self.keep_metadata = keep_metadata
        self._headers: dict[str, SegmentHeader] = {}
        self._lock = threading.Lock()

    def put(self, segment_id: str, header: SegmentHeader) -> None:
        if not self.keep_metadata:
            header = header.slim()
        with self._lock:
            self._headers[segment_id] = header

    def get(self, ref: SegmentRef) -> SegmentHeader:
        with self._lock:
            header = self._headers.get(ref.id)
        if header is None:
            header = read_segment_header(self.store, ref.key, metadata=self.keep_metadata)
            self.put(ref.id, header)
            with self._lock:
                header = self._headers[ref.id]
        return header

    def forget(self, segment_ids: set[str]) -> None:
        """Drop the headers of segments no manifest will list again (compacted away)."""
        with self._lock:
            for sid in segment_ids:
                self._headers.pop(sid, None)
