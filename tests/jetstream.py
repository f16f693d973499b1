"""A local Jetstream for tests: a websocket server on a free loopback port that
replays Jetstream-format frames, honours `cursor=` (replays from that `time_us`),
records what each connection asked for, and can drop the first connection
mid-stream."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

POSTS = "app.bsky.feed.post"


@dataclass
class Connection:
    cursor: int | None
    wanted: list[str]
    extensions: str
    sent: int = 0


def post_event(did: str, rkey: str, time_us: int, text: str, op: str = "create",
               cid: str | None = None, **record: Any) -> dict:  # fmt: skip
    return {
        "did": did, "time_us": time_us, "kind": "commit",
        "commit": {
            "rev": f"rev{time_us}", "operation": op, "collection": POSTS, "rkey": rkey,
            "cid": cid or f"bafy{rkey}{time_us}",
            "record": {"$type": POSTS, "text": text, "createdAt": "2026-11-27T20:00:00Z",
                       "langs": ["en"], **record},
        },
    }  # fmt: skip


def delete_event(did: str, rkey: str, time_us: int) -> dict:
    return {"did": did, "time_us": time_us, "kind": "commit",
            "commit": {"rev": f"rev{time_us}", "operation": "delete", "collection": POSTS,
                       "rkey": rkey}}  # fmt: skip


def identity_event(did: str, time_us: int) -> dict:
    return {"did": did, "time_us": time_us, "kind": "identity",
            "identity": {"did": did, "handle": "someone.bsky.social", "seq": 1,
                         "time": "2026-11-27T20:00:00Z"}}  # fmt: skip


def account_event(did: str, time_us: int) -> dict:
    return {"did": did, "time_us": time_us, "kind": "account",
            "account": {"active": True, "did": did, "seq": 2,
                        "time": "2026-11-27T20:00:00Z"}}  # fmt: skip


@dataclass
class FakeJetstream:
    """Serves `frames` ((time_us, frame) in order; a malformed frame gets the
    time_us of its place) to every connection, from its cursor on, then idles.

    Args:
        drop_after: the first connection is cut (no close frame) after this many.
        delay: seconds between frames.
    """

    frames: list[tuple[int, str]]
    drop_after: int | None = None
    delay: float = 0.0
    connections: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-jetstream")
        self.port = 0

    @classmethod
    def of(cls, events: list[tuple[int, Any]], **kw: Any) -> FakeJetstream:
        frames = [(t, e if isinstance(e, str) else json.dumps(e)) for t, e in events]
        return cls(frames, **kw)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/subscribe"

    def start(self) -> FakeJetstream:
        self._thread.start()
        assert self._ready.wait(10), "the fake Jetstream did not start"
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        conn = Connection(cursor, query.get("wantedCollections", []),
                          ws.request.headers.get("Sec-WebSocket-Extensions", ""))  # fmt: skip
        self.connections.append(conn)
        first = len(self.connections) == 1
        for time_us, frame in self.frames:
            if cursor is not None and time_us < cursor:
                continue
            if first and self.drop_after is not None and conn.sent == self.drop_after:
                ws.transport.abort()  # dropped mid-stream
                return
            await ws.send(frame)
            conn.sent += 1
            if self.delay:
                await asyncio.sleep(self.delay)
        await ws.wait_closed()
