"""Sources: long-lived readers of outside streams (Bluesky's firehose, GitHub)
that write through the ingest layer, durable batch first, checkpoint after."""

from brainy.write.sources.cursor import Cursor, CursorState, cursor_key
from brainy.write.sources.writer import (
    DELETE,
    UPSERT,
    SourceRecord,
    SourceStats,
    SourceWriter,
    WriterFailed,
)

__all__ = [
    "DELETE",
    "UPSERT",
    "Cursor",
    "CursorState",
    "SourceRecord",
    "SourceStats",
    "SourceWriter",
    "WriterFailed",
    "cursor_key",
]
