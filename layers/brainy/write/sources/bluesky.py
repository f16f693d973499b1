"""Bluesky's firehose through Jetstream: posts in, records out.

Jetstream (github.com/bluesky-social/jetstream) serves the AT Protocol firehose
as JSON over a websocket, one event a frame:

    {"did": "did:plc:…", "time_us": 1725911162329308, "kind": "commit",
     "commit": {"rev": "…", "operation": "create", "collection": "app.bsky.feed.post",
                "rkey": "3l3qo2vutsw2b", "cid": "bafyrei…",
                "record": {"$type": "app.bsky.feed.post", "text": "…",
                           "createdAt": "…", "langs": ["en"],
                           "reply": {"parent": {"uri": "…", "cid": "…"},
                                     "root": {"uri": "…", "cid": "…"}}}}}

`update` carries a record too, `delete` none; `identity` and `account` events
(kind) carry no post and are counted and ignored. `time_us` is Jetstream's clock
and its cursor: a subscription with `cursor=<time_us>` replays from there.

A post becomes the record `at://<did>/app.bsky.feed.post/<rkey>` with its text
embedded, stamped with the event's `time_us`, so a create replayed after its
delete was written loses to it. A create without text (an image alone) is
ignored; an update that leaves no text deletes the post from the collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from rbloom import Bloom

from brainy.storage.base import RetryPolicy
from brainy.write.sources.writer import DELETE, UPSERT, SourceRecord, SourceStats, SourceWriter

log = logging.getLogger(__name__)

DEFAULT_JETSTREAM = "wss://jetstream2.us-east.bsky.network/subscribe"
POSTS = "app.bsky.feed.post"
# Delivery is at-least-once: a (re)start resumes this far before its cursor, and
# the dedup filter and idempotent batches absorb the overlap.
REWIND_US = 5_000_000
DEDUP_CAPACITY = 1_000_000
DEDUP_ERROR_RATE = 1e-6  # a false positive drops a new post: keep it rare (3.6 MB a filter)
RECONNECT = RetryPolicy(attempts=1 << 30, base_delay=0.25, max_delay=30.0)
MAX_FRAME = 1 << 22


class Malformed(ValueError):
    """A frame that is not a Jetstream event (or a post event missing its parts)."""


@dataclass(frozen=True, slots=True)
class JetstreamEvent:
    """One event: a record to write, or the reason it is not written."""

    time_us: int
    record: SourceRecord | None = None
    seen_key: str | None = None  # (did, rkey, cid): what the dedup filter remembers
    ignored: str | None = None


def _field(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or value in ("", 0):
        raise Malformed(f"{where}{name}: expected a non-empty {kind.__name__}, got {value!r}")
    return value


def parse_event(frame: str | bytes) -> JetstreamEvent:
    """A Jetstream frame as an event.

    Raises:
        Malformed: not JSON, or missing what its kind requires.
    """
    try:
        raw = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as e:
        raise Malformed(f"not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise Malformed("expected a JSON object")
    time_us = _field(raw, "time_us", int, "")
    did = _field(raw, "did", str, "")
    kind = raw.get("kind")
    if kind != "commit":
        return JetstreamEvent(time_us, ignored=kind if kind in ("identity", "account") else "kind")
    commit = raw.get("commit")
    if not isinstance(commit, dict):
        raise Malformed("commit: expected an object")
    if commit.get("collection") != POSTS:
        return JetstreamEvent(time_us, ignored="collection")
    operation = commit.get("operation")
    rkey = _field(commit, "rkey", str, "commit.")
    if "/" in rkey:
        raise Malformed(f"commit.rkey: {rkey!r} contains '/'")
    uri = f"at://{did}/{POSTS}/{rkey}"
    if operation == "delete":
        return JetstreamEvent(time_us, SourceRecord(uri, DELETE, timestamp_us=time_us),
                              seen_key=f"{did}|{rkey}|-")  # fmt: skip
    if operation not in ("create", "update"):
        raise Malformed(f"commit.operation: expected create, update or delete, got {operation!r}")
    cid = _field(commit, "cid", str, "commit.")
    post = commit.get("record")
    if not isinstance(post, dict):
        raise Malformed("commit.record: expected an object")
    text = post.get("text")
    if not isinstance(text, str):
        raise Malformed(f"commit.record.text: expected a string, got {text!r}")
    seen = f"{did}|{rkey}|{cid}"
    if not text.strip():
        if operation == "create":
            return JetstreamEvent(time_us, seen_key=seen, ignored="no-text")
        # An update that leaves no text: the post has nothing left to find it by.
        return JetstreamEvent(time_us, SourceRecord(uri, DELETE, timestamp_us=time_us), seen)
    metadata: dict[str, Any] = {"did": did, "rkey": rkey, "cid": cid, "time_us": time_us}
    if isinstance(post.get("createdAt"), str):
        metadata["createdAt"] = post["createdAt"]
    langs = post.get("langs")
    if isinstance(langs, list) and all(isinstance(x, str) for x in langs):
        metadata["langs"] = langs
    reply = post.get("reply")
    if isinstance(reply, dict):
        for part in ("parent", "root"):
            ref = reply.get(part)
            if isinstance(ref, dict) and isinstance(ref.get("uri"), str):
                metadata[f"reply_{part}"] = ref["uri"]
    record = SourceRecord(uri, UPSERT, text=text, metadata=metadata, timestamp_us=time_us)
    return JetstreamEvent(time_us, record, seen)


class RecentlySeen:
    """Remembers the last `capacity` keys (at least; at most twice as many) in
    fixed memory: two Bloom filters, new keys going into the current one, which
    becomes the previous one when it holds `capacity` (the old previous is
    dropped). A key is "seen" when either filter holds it; a false positive
    (rate `error_rate`) makes a new key look seen."""

    def __init__(self, capacity: int = DEDUP_CAPACITY, error_rate: float = DEDUP_ERROR_RATE):
        self.capacity = capacity
        self.error_rate = error_rate
        self._current = Bloom(capacity, error_rate)
        self._previous: Bloom | None = None
        self._held = 0

    def seen(self, key: str) -> bool:
        """Whether `key` was seen recently; remembers it either way."""
        if key in self._current or (self._previous is not None and key in self._previous):
            return True
        self._current.add(key)
        self._held += 1
        if self._held >= self.capacity:
            self._previous, self._current = self._current, Bloom(self.capacity, self.error_rate)
            self._held = 0
        return False


def subscribe_url(base: str, cursor_us: int | None) -> str:
    """`base` with `wantedCollections=app.bsky.feed.post` and, when given, `cursor`."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("wantedCollections", "cursor")]
    query.append(("wantedCollections", POSTS))
    if cursor_us is not None:
        query.append(("cursor", str(cursor_us)))
    return urlunsplit(parts._replace(query=urlencode(query)))


class JetstreamReader:
    """Reads Jetstream into a `SourceWriter` until told to stop, reconnecting with
    exponential backoff and jitter, resuming `rewind_us` before the last event it
    read (or, at start, before the checkpoint `start_us`).

    Memory is bounded: websockets buffers a few frames at most, and when the
    writer is busy the reader waits for it (no frame is read meanwhile)."""

    def __init__(
        self,
        url: str,
        writer: SourceWriter,
        stats: SourceStats,
        start_us: int | None,
        *,
        rewind_us: int = REWIND_US,
        dedup: RecentlySeen | None = None,
        reconnect: RetryPolicy = RECONNECT,
    ) -> None:
        self.url = url
        self.writer = writer
        self.stats = stats
        self.rewind_us = rewind_us
        self.dedup = dedup or RecentlySeen()
        self.reconnect = reconnect
        self.last_us = start_us

    def resume_url(self) -> str:
        cursor = None if self.last_us is None else max(0, self.last_us - self.rewind_us)
        return subscribe_url(self.url, cursor)

    def read(
        self, stopping: threading.Event, on_stop: Callable[[Callable[[], None]], None]
    ) -> None:
        """Run until `stopping` is set (`on_stop` registers the wake-up call)."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()

            def wake() -> None:
                # A second signal may come while the runner flushes, the loop gone.
                if not loop.is_closed():
                    loop.call_soon_threadsafe(stop.set)

            on_stop(wake)
            if stopping.is_set():
                stop.set()
            await self.run(stop)

        asyncio.run(main())

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            url = self.resume_url()
            received = 0
            try:
                async with websockets.connect(url, compression="deflate", max_size=MAX_FRAME,
                                              open_timeout=10) as ws:  # fmt: skip
                    log.info("bluesky: connected to %s", url)
                    received = await self._consume(ws, stop)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as e:
                log.warning("bluesky: connection to %s lost: %s", url, e)
            if stop.is_set():
                return
            failures = 0 if received else failures + 1
            self.stats.count("reconnects")
            delay = self.reconnect.delay(failures)
            log.info("bluesky: reconnecting in %.2fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _consume(self, ws: Any, stop: asyncio.Event) -> int:
        """Frames of one connection until it closes or `stop` is set; returns how
        many were received."""

        async def close_on_stop() -> None:
            await stop.wait()
            await ws.close()

        closer = asyncio.create_task(close_on_stop())
        received = 0
        try:
            async for frame in ws:
                received += 1
                await self._handle(frame)
        finally:
            closer.cancel()
        return received

    async def _handle(self, frame: str | bytes) -> None:
        self.stats.count("events")
        try:
            event = parse_event(frame)
        except Malformed as e:
            self.stats.count("malformed")
            log.debug("bluesky: malformed frame skipped: %s", e)
            return
        position = event.time_us
        self.last_us = position if self.last_us is None else max(self.last_us, position)
        if event.seen_key is not None and self.dedup.seen(event.seen_key):
            self.stats.count("duplicates")
            self.writer.skip(position)
            return
        if event.record is None:
            self.stats.ignore(event.ignored or "other")
            self.writer.skip(position)
            return
        if not self.writer.try_add(event.record, position):
            # The writer is busy: wait for it off the event loop (pings go on).
            await asyncio.to_thread(self.writer.add, event.record, position)
