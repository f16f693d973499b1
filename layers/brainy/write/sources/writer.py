"""The batching writer every source writes through.

A source reader calls `SourceWriter.add(record, position)` for each record it
reads (and `skip(position)` for what it reads but does not write), in the
source's order. Records gather in the open batch; when it holds `batch_size`
records, or `flush_interval` seconds after its first one (whichever comes
first), it is sealed and a flusher thread makes it ONE durable batch through
the ingest layer, and only then advances the source's `Cursor` to the batch's
last position. At most one batch is being flushed while the next fills: when
both are full, `add` blocks until the flush is done (backpressure; memory is
bounded by two batches, whatever the source's pace).

Records are validated exactly as `POST /ingest` validates them, and text goes
through the collection's embedder. A record the ingest layer refuses is dropped
and counted (`malformed`), the rest of its batch is written. Each record keeps
the source's own clock as its timestamp, so last-writer-wins orders a source's
records by when the source saw them, not by when they were (re-)read. The
batch's idempotency key is derived from the source, collection, positions and
the records' ids, operations and timestamps: a flush retried after a lost
answer, or the same records re-read after a crash, map to the same batch.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import xxhash

from brainy.core.config import CollectionSchema
from brainy.core.errors import ClockSkewed, IdempotencyConflict, InvalidInput
from brainy.storage import StorageError
from brainy.storage.base import RetryPolicy
from brainy.write.ingest import IngestOutcome, embed_text
from brainy.write.sources.cursor import Cursor, CursorState

log = logging.getLogger(__name__)

UPSERT = "upsert"
DELETE = "delete"
DEFAULT_FLUSH_RETRY = RetryPolicy(attempts=6, base_delay=0.5, max_delay=30.0)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record a source read: an upsert (with `text` or `vector`) or a delete.

    `timestamp_us` is the source's own clock (a firehose event's `time_us`, a
    crawl's `pushed_at`); None stamps the record with the time it is written.
    """

    id: str
    op: Literal["upsert", "delete"]
    text: str | None = None
    vector: Sequence[float] | None = None
    metadata: dict[str, Any] | None = None
    timestamp_us: int | None = None


class Ingest(Protocol):
    """What the writer writes through (`Brainy.ingest`)."""

    def __call__(
        self,
        payload: Mapping[str, Any],
        idempotency_key: str | None = None,
        timestamps: Sequence[int] | None = None,
    ) -> IngestOutcome: ...


class SourceStats:
    """Counters of one source process (thread-safe); `/metrics` shows them.

    events: everything read (records, skipped events, malformed frames).
    records_written: records made durable. duplicates: dropped as already seen.
    malformed: frames or records that could not be understood or were refused.
    ignored: events read and deliberately not written, by reason.
    reconnects, rate_limit_waits: the reader's.
    """

    COUNTERS = ("events", "records_written", "duplicates", "malformed", "reconnects",
                "rate_limit_waits", "batches")  # fmt: skip

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._ignored: dict[str, int] = {}
        self.cursor: CursorState | None = None

    def count(self, name: str, n: int = 1) -> None:
        if name not in self._counts:
            raise KeyError(f"unknown source counter {name!r}")
        with self._lock:
            self._counts[name] += n

    def ignore(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._ignored[reason] = self._ignored.get(reason, 0) + n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "ignored": dict(self._ignored)}

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]


class WriterFailed(RuntimeError):
    """A batch could not be made durable: the writer stopped, the cursor did not
    move past it (restart the source to carry on from the cursor)."""


@dataclass
class _Batch:
    records: dict[str, SourceRecord] = field(default_factory=dict)  # newest per id
    count: int = 0  # records added (a record replaced by a newer one counts too)
    first: int | None = None
    last: int | None = None
    timestamp_us: int | None = None  # the newest source timestamp in the batch
    opened: float | None = None  # monotonic time of its first record or skip

    def note(self, position: int, now: float) -> None:
        if self.first is None:
            self.first = position
            self.opened = now
        self.last = position if self.last is None else max(self.last, position)

    def add(self, record: SourceRecord, position: int, now: float) -> None:
        self.note(position, now)
        self.count += 1
        held = self.records.get(record.id)
        # A batch holds one copy of an id: the newest by the source's clock.
        if held is None or _order(record) >= _order(held):
            self.records[record.id] = record
        if record.timestamp_us is not None:
            self.timestamp_us = max(self.timestamp_us or 0, record.timestamp_us)

    @property
    def empty(self) -> bool:
        return self.first is None


def _order(record: SourceRecord) -> int:
    return record.timestamp_us if record.timestamp_us is not None else 1 << 62


_RECORD_FIELD = re.compile(r"^(records|deletes)\[(\d+)\]")


class SourceWriter:
    """Batches a source's records into durable batches, then checkpoints.

    Args:
        ingest: makes one batch durable (`Brainy.ingest`).
        schema: the collection written to (its embedder embeds the texts).
        cursor: the source's checkpoint, advanced after each durable batch.
        stats: counters to update.
        batch_size: records per batch at most.
        flush_interval: seconds after a batch's first record that it is flushed.
        retry: backoff between attempts of a flush that failed on storage (or a
            skewed clock); when every attempt fails the writer stops (`WriterFailed`).
        on_failure: called (on the flusher thread) when the writer stops on a
            failure, to stop the reader too.
    """

    def __init__(
        self,
        ingest: Ingest,
        schema: CollectionSchema,
        cursor: Cursor,
        stats: SourceStats | None = None,
        *,
        batch_size: int = 10_000,
        flush_interval: float = 5.0,
        retry: RetryPolicy = DEFAULT_FLUSH_RETRY,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval: expected a positive number, got {flush_interval}")
        self.ingest = ingest
        self.schema = schema
        self.collection = schema.name
        self.on_failure = on_failure
        self.cursor = cursor
        self.stats = stats or SourceStats()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry = retry
        self._cond = threading.Condition()
        self._open = _Batch()
        self._sealed: _Batch | None = None
        self._closing = False
        self._error: BaseException | None = None
        self.stats.cursor = cursor.read()
        self._thread = threading.Thread(
            target=self._run, name=f"brainy-source-writer-{cursor.source}", daemon=True
        )
        self._thread.start()

    @property
    def durable(self) -> CursorState | None:
        """The checkpoint as this writer last stored or read it."""
        return self.stats.cursor

    @property
    def failed(self) -> BaseException | None:
        return self._error

    # ------------------------------------------------------------------ reader side

    def add(self, record: SourceRecord, position: int) -> None:
        """Add a record read at `position`; blocks while the open batch is full
        and the previous one is still being flushed.

        Raises:
            WriterFailed: a flush failed for good (nothing more is written).
        """
        with self._cond:
            while not self._make_room():
                self._cond.wait()
            self._append(record, position)

    def try_add(self, record: SourceRecord, position: int) -> bool:
        """`add` without waiting: False (nothing added) when `add` would block,
        so an event loop can wait for room on another thread instead."""
        with self._cond:
            if not self._make_room():
                return False
            self._append(record, position)
            return True

    def skip(self, position: int) -> None:
        """Note an event read at `position` and not written (ignored, duplicate,
        malformed), so the checkpoint can move past it with the next batch."""
        with self._cond:
            self._raise_if_failed()
            opens = self._open.empty
            self._open.note(position, time.monotonic())
            if opens:
                self._cond.notify_all()  # the flusher times the batch from now

    def close(self, timeout: float | None = None) -> CursorState | None:
        """Flush the open batch, wait for it to be durable and checkpointed, stop.

        Raises:
            WriterFailed: the last flush failed (the cursor stays before it).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            self._raise_if_failed()
        return self.durable

    def _make_room(self) -> bool:
        """Whether the open batch has room for a record (sealing a full one when
        the flusher is free); raises when the writer failed or is closed."""
        self._raise_if_failed()
        if self._closing:
            raise WriterFailed("the writer is closed")
        if self._open.count < self.batch_size:
            return True
        if self._sealed is None:
            self._seal()
            return True
        return False

    def _append(self, record: SourceRecord, position: int) -> None:
        self._open.add(record, position, time.monotonic())
        if self._open.count >= self.batch_size and self._sealed is None:
            self._seal()
        elif self._open.count == 1:
            self._cond.notify_all()  # the flusher times the batch from its first record

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterFailed(f"a batch could not be made durable: {self._error}") from (
                self._error
            )

    def _seal(self) -> None:
        self._sealed, self._open = self._open, _Batch()
        self._cond.notify_all()

    # ----------------------------------------------------------------- flusher side

    def _next_batch(self) -> _Batch | None:
        """The next batch to flush (sealing the open one when its time is up);
        None when closing and nothing is left."""
        with self._cond:
            while self._sealed is None:
                if not self._open.empty:
                    waited = time.monotonic() - (self._open.opened or 0.0)
                    if self._closing or waited >= self.flush_interval:
                        self._seal()
                        break
                    self._cond.wait(self.flush_interval - waited)
                elif self._closing:
                    return None
                else:
                    self._cond.wait()
            return self._sealed

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._flush(batch)
            except BaseException as e:  # handed to the reader, which stops
                log.exception("source %s: flush failed; the cursor stays at %s",
                              self.cursor.source, self.durable)  # fmt: skip
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                if self.on_failure is not None:
                    self.on_failure(e)
                return
            with self._cond:
                self._sealed = None
                self._cond.notify_all()

    def _flush(self, batch: _Batch) -> None:
        records = self._embedded(sorted(batch.records.values(), key=_order))
        while records:
            payload, timestamps, order = self._request(records)
            upserts = len(payload["records"])
            key = self._idempotency_key(batch, payload, timestamps)
            try:
                outcome = self._attempt(self.ingest, payload, key, timestamps)
            except IdempotencyConflict:
                # The key covers these ids, operations and timestamps: the batch
                # there holds the same records (an embedder need not give the same
                # floats twice), written before a crash or a lost answer.
                log.info("source %s: batch %s was already written", self.cursor.source, key)
                break
            except InvalidInput as e:
                bad = _record_at(e.field, order, upserts)
                if bad is None:
                    raise
                log.warning("source %s: record %r dropped: %s", self.cursor.source,
                            records[bad].id, e)  # fmt: skip
                self.stats.count("malformed")
                del records[bad]
                continue
            if outcome.created:
                self.stats.count("batches")
            self.stats.count("records_written", outcome.accepted + outcome.deleted)
            break
        assert batch.last is not None
        position, ts = batch.last, batch.timestamp_us
        self.stats.cursor = self._attempt(self.cursor.advance, position, ts)

    def _embedded(self, records: list[SourceRecord]) -> list[SourceRecord]:
        """`records` with each text replaced by its vector (the collection's
        embedder, checked as ingest checks a text); a text it refuses (empty, too
        long, nothing to embed) drops its record, counted as malformed. Embedding
        here, one record at a time, keeps a refused text from failing the batch."""
        kept = []
        for r in records:
            if r.op != DELETE and r.vector is None and r.text is not None:
                try:
                    vector = embed_text(self.schema, r.text, f"{r.id}.text")
                except InvalidInput as e:
                    log.warning("source %s: record dropped: %s", self.cursor.source, e)
                    self.stats.count("malformed")
                    continue
                r = replace(r, vector=vector.tolist(), text=None)
            kept.append(r)
        return kept

    def _attempt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, retried with backoff on storage failures and a skewed clock."""
        for attempt in range(self.retry.attempts):
            try:
                return fn(*args)
            except (StorageError, ClockSkewed) as e:
                if attempt == self.retry.attempts - 1:
                    raise
                delay = self.retry.delay(attempt)
                log.warning("source %s: %s; retrying in %.1fs", self.cursor.source, e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _request(self, records: list[SourceRecord]) -> tuple[dict[str, Any], list[int], list[int]]:
        """The ingest payload for `records`, the timestamps in the payload's record
        order (upserts, then deletes), and which record each payload entry is."""
        now = time.time_ns() // 1000
        ups = [i for i, r in enumerate(records) if r.op != DELETE]
        dels = [i for i, r in enumerate(records) if r.op == DELETE]
        entries = []
        for i in ups:
            r = records[i]
            entry: dict[str, Any] = {"id": r.id}
            if r.vector is not None:
                entry["vector"] = list(r.vector)
            if r.text is not None:
                entry["text"] = r.text
            if r.metadata is not None:
                entry["metadata"] = r.metadata
            entries.append(entry)
        payload = {
            "collection": self.collection,
            "records": entries,
            "deletes": [records[i].id for i in dels],
        }
        order = ups + dels
        stamps = [records[i].timestamp_us for i in order]
        return payload, [now if t is None else t for t in stamps], order

    def _idempotency_key(
        self, batch: _Batch, payload: Mapping[str, Any], timestamps: list[int]
    ) -> str:
        digest = xxhash.xxh3_128()
        for entry in payload["records"]:
            digest.update(f"u\x00{entry['id']}\x00".encode())
        for rid in payload["deletes"]:
            digest.update(f"d\x00{rid}\x00".encode())
        digest.update(repr(timestamps).encode())
        return (f"source:{self.cursor.source}:{self.collection}:{batch.first}-{batch.last}:"
                f"{digest.hexdigest()}")  # fmt: skip


def _record_at(field_name: str, order: list[int], upserts: int) -> int | None:
    """The record (an index into the flushed list) that an ingest error names:
    `records[i]...` is the i-th upsert, `deletes[j]` the j-th delete."""
    match = _RECORD_FIELD.match(field_name)
    if match is None:
        return None
    index = int(match.group(2))
    return order[index if match.group(1) == "records" else upserts + index]
