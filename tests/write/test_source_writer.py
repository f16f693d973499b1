"""The source runner's store-facing parts: the cursor (compare-and-swap, never
backwards) and the batching writer (durable batch first, then the cursor)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from brainy.storage.base import RetryPolicy
from brainy.write.sources import Cursor, SourceRecord, SourceStats, SourceWriter, WriterFailed
from faults import FaultyStore
from helpers import declare, live_state, make_app

NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0)


def wal_keys(store, collection: str) -> list[str]:
    return sorted(o.key for o in store.list(f"{collection}/wal/"))


def index_all(app, collection: str) -> dict:
    for key in wal_keys(app.store, collection):
        app.index_key(key)
    return live_state(app.store.url, collection)


def until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def app(tmp_path: Path):
    app = make_app(f"file://{tmp_path}/bucket", tmp_path)
    declare(app, "posts", dimension=16)
    yield app
    app.close()


def writer_for(app, store=None, **kw) -> SourceWriter:
    kw.setdefault("retry", NO_WAIT)
    kw.setdefault("flush_interval", 60.0)
    cursor = Cursor(store or app.store, "test", "posts")
    return SourceWriter(app.ingest, app.require_schema("posts"), cursor, SourceStats(), **kw)


def post(i: int, ts: int | None = None, text: str | None = None) -> SourceRecord:
    stamp = ts if ts is not None else 1000 + i
    text = text or f"post number {i} about cats"
    return SourceRecord(f"p{i}", "upsert", text=text, metadata={"n": i}, timestamp_us=stamp)


# ------------------------------------------------------------------- cursor


def test_cursor_is_stored_per_source_and_collection_and_never_moves_back(app) -> None:
    cursor = Cursor(app.store, "bluesky", "posts")
    assert cursor.read() is None
    cursor.advance(100, timestamp_us=100)
    assert app.store.exists("_brainy/cursors/bluesky-posts.json")
    # Another process (its own Cursor) got further: an older position changes nothing.
    Cursor(app.store, "bluesky", "posts").advance(300)
    assert cursor.advance(200).position == 300
    assert cursor.read().position == 300
    assert Cursor(app.store, "github", "posts").read() is None


def test_cursor_advance_rereads_a_concurrent_change_instead_of_overwriting_it(app) -> None:
    cursor = Cursor(app.store, "bluesky", "posts")
    cursor.advance(10)
    other = Cursor(app.store, "bluesky", "posts")
    raced = []

    def interleave(n: int, op: str, key: str) -> None:
        # Just before our conditional put lands, another writer moves the cursor on.
        if op == "put" and key == cursor.key and not raced:
            raced.append(n)
            other.advance(50)

    cursor.store = FaultyStore(app.store, before=interleave)
    assert cursor.advance(40).position == 50
    assert raced and other.read().position == 50


# ------------------------------------------------------------------- writer


def test_batches_flush_by_size_and_on_close_then_checkpoint(app) -> None:
    writer = writer_for(app, batch_size=10)
    for i in range(25):
        writer.add(post(i), position=1000 + i)
    until(lambda: writer.durable is not None and writer.durable.position == 1019, "two batches")
    assert len(wal_keys(app.store, "posts")) == 2
    assert writer.close().position == 1024
    assert len(wal_keys(app.store, "posts")) == 3
    assert writer.stats["records_written"] == 25
    live = index_all(app, "posts")
    assert sorted(live) == sorted(f"p{i}" for i in range(25))
    assert live["p7"][1] == {"n": 7}


def test_an_idle_open_batch_is_flushed_after_the_interval(app) -> None:
    writer = writer_for(app, batch_size=1000, flush_interval=0.05)
    writer.add(post(1), position=5)
    until(lambda: writer.durable is not None, "the interval flush")
    assert writer.durable.position == 5
    assert len(wal_keys(app.store, "posts")) == 1
    writer.close()


def test_skipped_events_move_the_cursor_without_a_batch(app) -> None:
    writer = writer_for(app)
    writer.skip(77)
    assert writer.close().position == 77
    assert wal_keys(app.store, "posts") == []


def test_the_source_clock_orders_records_so_a_replayed_create_cannot_resurrect(app) -> None:
    writer = writer_for(app, batch_size=2)
    writer.add(post(1, ts=100), position=100)
    writer.add(SourceRecord("p1", "delete", timestamp_us=200), position=200)  # same batch
    writer.add(post(2, ts=150), position=150)
    writer.add(SourceRecord("p2", "delete", timestamp_us=250), position=250)
    writer.close()
    # Restarted from an older cursor: the creates come again, in later batches.
    writer = writer_for(app, batch_size=10)
    writer.add(post(1, ts=100), position=100)
    writer.add(post(2, ts=150), position=150)
    writer.add(post(3, ts=300), position=300)
    writer.close()
    assert sorted(index_all(app, "posts")) == ["p3"]


def test_malformed_records_are_dropped_and_counted_the_rest_written(app) -> None:
    writer = writer_for(app, batch_size=100)
    writer.add(post(1), 1)
    writer.add(SourceRecord("p2", "upsert", text="   "), 2)  # nothing to embed
    writer.add(SourceRecord("p3", "upsert", vector=[1.0, 2.0]), 3)  # wrong dimension
    writer.add(SourceRecord("bad\x00id", "upsert", text="hello there"), 4)
    writer.add(SourceRecord("p5", "upsert", text="fine", metadata={"x": "y" * 100_000}), 5)
    writer.add(SourceRecord("", "delete"), 6)
    writer.add(post(7), 7)
    assert writer.close().position == 7
    assert writer.stats["malformed"] == 5
    assert sorted(index_all(app, "posts")) == ["p1", "p7"]


def test_a_batch_that_is_not_durable_never_moves_the_cursor(app) -> None:
    def fail_batches(n: int, op: str, key: str):
        return "crash-before" if op == "put" and "/wal/" in key else None

    healthy = writer_for(app, batch_size=2)
    healthy.add(post(1), 1)
    healthy.add(post(2), 2)
    until(lambda: healthy.durable is not None, "the first batch")
    healthy.close()

    broken = FaultyStore(app.store, rule=fail_batches)
    app.store, store = broken, app.store
    writer = writer_for(app, store=store, batch_size=2)
    writer.add(post(3), 3)
    writer.add(post(4), 4)  # sealed: its flush fails
    with pytest.raises(WriterFailed):
        until(lambda: writer.failed is not None, "the failure")
        writer.add(post(5), 5)
    with pytest.raises(WriterFailed):
        writer.close()
    assert Cursor(store, "test", "posts").read().position == 2
    app.store = store

    # Restarted from its cursor, the source reads 3, 4, 5 again: nothing is lost.
    writer = writer_for(app, batch_size=10)
    for i in (3, 4, 5):
        writer.add(post(i), i)
    assert writer.close().position == 5
    assert sorted(index_all(app, "posts")) == ["p1", "p2", "p3", "p4", "p5"]


def test_a_flush_retried_after_a_lost_answer_writes_one_batch(app) -> None:
    lost = []

    def lose_first_batch_answer(n: int, op: str, key: str):
        if op == "put" and "/wal/" in key and not lost:
            lost.append(key)
            return "lost-response"
        return None

    store = FaultyStore(app.store, rule=lose_first_batch_answer)
    store.retry = RetryPolicy(attempts=1)  # the store gives up: the writer retries
    real, app.store = app.store, store
    writer = writer_for(app, store=real)
    writer.add(post(1), 1)
    writer.add(post(2), 2)
    assert writer.close().position == 2
    app.store = real
    assert lost and wal_keys(real, "posts") == lost
    assert writer.stats["records_written"] == 2


def test_a_busy_writer_makes_the_reader_wait(app) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow_ingest(payload, idempotency_key=None, timestamps=None):
        entered.set()
        release.wait(10)
        return app.ingest(payload, idempotency_key, timestamps)

    cursor = Cursor(app.store, "test", "posts")
    writer = SourceWriter(slow_ingest, app.require_schema("posts"), cursor, batch_size=2,
                          flush_interval=60.0, retry=NO_WAIT)  # fmt: skip
    assert writer.try_add(post(1), 1) and writer.try_add(post(2), 2)  # sealed, flushing
    entered.wait(10)
    assert writer.try_add(post(3), 3) and writer.try_add(post(4), 4)  # the next one fills
    assert not writer.try_add(post(5), 5)  # both full: the reader must wait
    blocked = threading.Thread(target=writer.add, args=(post(5), 5))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()
    release.set()
    blocked.join(10)
    assert not blocked.is_alive()
    assert writer.close().position == 5
    assert sorted(index_all(app, "posts")) == [f"p{i}" for i in range(1, 6)]


# --------------------------------------------------------- a crash at any point

EVENTS = [
    (1, post(1, ts=1)),
    (2, post(2, ts=2)),
    (3, SourceRecord("p1", "delete", timestamp_us=3)),
    (4, post(4, ts=4)),
    (5, post(5, ts=5)),
    (6, SourceRecord("p4", "delete", timestamp_us=6)),
    (7, post(7, ts=7)),
]


def run_source(app, store, resume_from: int | None, rewind: int = 2) -> None:
    """What a source process does: read from a little before the cursor, close."""
    writer = writer_for(app, store=store, batch_size=2)
    for position, record in EVENTS:
        if resume_from is None or position >= resume_from - rewind:
            writer.add(record, position)
    writer.close()


def clean_run_calls(tmp_path: Path) -> int:
    app = make_app(f"file://{tmp_path}/clean", tmp_path)
    declare(app, "posts", dimension=16)
    store = app.store = FaultyStore(app.store)
    run_source(app, store, None)
    app.close()
    return store.count


@pytest.mark.parametrize("fault", ["crash-before", "crash-after"])
def test_a_crash_at_any_store_call_then_a_restart_loses_nothing(tmp_path: Path, fault) -> None:
    calls = clean_run_calls(tmp_path)
    assert calls >= 10
    for n in range(1, calls + 1):
        app = make_app(f"file://{tmp_path}/{fault}-{n}", tmp_path)
        declare(app, "posts", dimension=16)
        real = app.store
        faulty = FaultyStore(real, {n: fault})
        app.store = faulty
        with pytest.raises(Exception):  # noqa: B017 - the process dies, whatever it was doing
            run_source(app, faulty, None)
        assert faulty.fired(), f"call {n} was never made"
        app.store = real
        cursor = Cursor(real, "test", "posts").read()
        # Nothing past the cursor without its batch: a restart from it loses nothing.
        run_source(app, real, None if cursor is None else cursor.position)
        assert sorted(index_all(app, "posts")) == ["p2", "p5", "p7"], (fault, n)
        app.close()
