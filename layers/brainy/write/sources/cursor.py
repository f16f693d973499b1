"""A source's checkpoint in the bucket: `_brainy/cursors/<source>-<collection>.json`.

The cursor records how far a source has been made durable (a firehose's `time_us`,
a crawl's `since`). It is advanced by compare-and-swap only (`storage.cas`): a
concurrent change is re-read, never overwritten, and a cursor never moves backwards
(advancing to a position at or behind the stored one leaves it as it is).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from brainy.storage import ObjectStore
from brainy.storage.cas import Current, compare_and_swap, read_current

CURSORS_PREFIX = "_brainy/cursors/"


class CorruptCursor(ValueError):
    """The stored cursor cannot be read (not JSON, or no integer position)."""


@dataclass(frozen=True)
class CursorState:
    """A checkpoint: `position` (the source's own, an integer that only grows),
    the source's clock at that position in microseconds when it has one (for the
    lag metric), when it was written, and any small state the source keeps
    with it (an ETag, say)."""

    position: int
    timestamp_us: int | None = None
    updated_at: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)

    def to_json(self, source: str, collection: str) -> bytes:
        return json.dumps(
            {
                "source": source,
                "collection": collection,
                "position": self.position,
                "timestamp_us": self.timestamp_us,
                "updated_at": self.updated_at,
                "state": self.state,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> CursorState:
        try:
            raw = json.loads(data)
            position = raw["position"]
            if isinstance(position, bool) or not isinstance(position, int):
                raise TypeError(f"position {position!r} is not an integer")
            return cls(
                position=position,
                timestamp_us=raw.get("timestamp_us"),
                updated_at=float(raw.get("updated_at") or 0.0),
                state=dict(raw.get("state") or {}),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptCursor(f"{key}: cannot read the cursor ({e})") from None


def cursor_key(source: str, collection: str) -> str:
    return f"{CURSORS_PREFIX}{source}-{collection}.json"


class Cursor:
    """The checkpoint of one source writing into one collection."""

    def __init__(self, store: ObjectStore, source: str, collection: str) -> None:
        self.store = store
        self.source = source
        self.collection = collection
        self.key = cursor_key(source, collection)

    def read(self) -> CursorState | None:
        """The stored checkpoint, or None when the source has never checkpointed."""
        return self._state(read_current(self.store, self.key))

    def _state(self, current: Current) -> CursorState | None:
        return None if current.data is None else CursorState.from_json(current.data, self.key)

    def advance(
        self,
        position: int,
        timestamp_us: int | None = None,
        state: dict[str, Any] | None = None,
    ) -> CursorState:
        """Move the checkpoint forward to `position` (compare-and-swap).

        A stored position at or beyond `position` (another process got further)
        is kept: the cursor never moves backwards.

        Returns:
            The checkpoint now stored.
        """
        wanted = CursorState(position, timestamp_us, time.time(), dict(state or {}))

        def change(current: Current) -> bytes | None:
            stored = self._state(current)
            if stored is not None and stored.position >= position:
                return None
            return wanted.to_json(self.source, self.collection)

        return self._state(compare_and_swap(self.store, self.key, change)) or wanted
