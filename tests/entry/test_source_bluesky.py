"""`brainy source bluesky` as a process against a local Jetstream: the live set
it leaves, replays, dropped connections, SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from brainy.storage import open_store
from brainy.write.sources import Cursor
from helpers import declare, live_state, make_app
from jetstream import (
    POSTS,
    FakeJetstream,
    account_event,
    delete_event,
    identity_event,
    post_event,
)

S = 1_000_000  # one second in microseconds
T0 = (int(time.time()) - 3600) * S
A, B = "did:plc:alice", "did:plc:bob"


def t(i: int) -> int:
    return T0 + i * S


def uri(did: str, rkey: str) -> str:
    return f"at://{did}/{POSTS}/{rkey}"


def scenario() -> list[tuple[int, object]]:
    """Jetstream frames (time_us, event): creates, an update, deletes, identity and
    account events, malformed frames, a post of another collection, a post
    without text and a duplicate delivery."""
    r3 = post_event(B, "r3", t(4), "a reply about the warm sun",
                    reply={"parent": {"uri": uri(A, "r1"), "cid": "c1"},
                           "root": {"uri": uri(A, "r1"), "cid": "c1"}})  # fmt: skip
    no_text = post_event(A, "r8", t(14), "x")
    del no_text["commit"]["record"]["text"]
    like = post_event(A, "l1", t(10), "")
    like["commit"]["collection"] = "app.bsky.feed.like"
    return [
        (t(1), post_event(A, "r1", t(1), "cats sleeping in the sun")),
        (t(2), post_event(A, "r2", t(2), "first draft about dogs")),
        (t(3), identity_event(A, t(3))),
        (t(4), r3),
        (t(5), "this is not json {"),
        (t(5), {"kind": "commit", "did": A}),  # no time_us
        (t(6), post_event(A, "r2", t(6), "dogs running on the beach", op="update")),
        (t(7), account_event(B, t(7))),
        (t(8), delete_event(A, "r1", t(8))),
        (t(9), post_event(B, "r4", t(9), "")),  # an image alone: nothing to embed
        (t(10), like),
        (t(11), post_event(B, "r5", t(11), "a short lived post")),
        (t(12), delete_event(B, "r5", t(12))),
        (t(13), post_event(B, "r6", t(13), "the last post about the moon")),
        (t(13), r3),  # delivered twice
        (t(14), no_text),
        (t(15), post_event(A, "r7", t(15), "final words about green tea")),
    ]


LIVE = {
    uri(A, "r2"): "dogs running on the beach",
    uri(B, "r3"): "a reply about the warm sun",
    uri(B, "r6"): "the last post about the moon",
    uri(A, "r7"): "final words about green tea",
}
LAST = t(15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Source:
    """One `brainy source bluesky` process."""

    def __init__(
        self,
        url: str,
        jetstream: str,
        tmp: Path,
        *args: str,
        collection: str = "posts",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log = tmp / f"source-{time.monotonic_ns()}.log"
        env = {**os.environ, "BRAINY_STORE": url, "PORT": str(self.port),
               "BRAINY_CACHE_DIR": str(tmp / "source-cache"),
               "BRAINY_REFRESH_INTERVAL": "0"}  # fmt: skip
        argv = [sys.executable, "-m", "brainy", "source", "bluesky",
                "--collection", collection, "--jetstream", jetstream,
                "--batch-size", "3", "--flush-interval", "0.2", *args]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except urllib.error.URLError:
            return 0, b""  # not serving yet

    def metric(self, name: str) -> float:
        status, body = self.get("/metrics")
        if status == 0:
            return float("nan")
        for line in body.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict]:
    url = f"file://{tmp_path}/bucket"
    app = make_app(url, tmp_path)
    declare(app, "posts", dimension=64)
    started: list = []
    yield {"url": url, "app": app, "tmp": tmp_path, "started": started}
    for thing in started:
        if isinstance(thing, Source):
            if thing.proc.poll() is None:
                thing.proc.kill()
                thing.proc.wait(10)
        else:
            thing.stop()
    app.close()


def start(env: dict, jetstream: FakeJetstream | None = None, *args: str, **kw) -> tuple:
    if jetstream is None:
        jetstream = FakeJetstream.of(scenario(), **kw).start()
        env["started"].append(jetstream)
    source = Source(env["url"], jetstream.url, env["tmp"], *args)
    env["started"].append(source)
    return source, jetstream


def cursor(env: dict) -> int | None:
    state = Cursor(open_store(env["url"]), "bluesky", "posts").read()
    return None if state is None else state.position


def wait_for(predicate, what: str, source: Source, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if source.proc.poll() is not None:
            raise AssertionError(f"the source exited ({source.proc.returncode}) waiting for "
                                 f"{what}:\n{source.output()}")  # fmt: skip
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{source.output()}"
        time.sleep(0.05)


def collection_live(env: dict) -> dict[str, str]:
    """id → text of every live post once every batch written is indexed."""
    app = env["app"]
    for info in app.store.list("posts/wal/"):
        app.index_key(info.key)
    live = live_state(env["url"], "posts")
    return {rid: meta for rid, (_, meta) in live.items()}


def assert_live_set(env: dict) -> dict[str, dict]:
    live = collection_live(env)
    assert sorted(live) == sorted(LIVE)
    for rid, text in LIVE.items():
        hits = env["app"].search({"collection": "posts", "text": text, "k": 1})
        assert hits.hits[0].id == rid, text
    return live


# ---------------------------------------------------------------------------


def test_jetstream_with_a_dropped_connection_ends_with_exactly_the_live_posts(env) -> None:
    source, jetstream = start(env, drop_after=7)
    wait_for(lambda: cursor(env) == LAST, "the last event's checkpoint", source)

    first, second = jetstream.connections[:2]
    assert first.cursor is None and first.wanted == [POSTS]
    assert "permessage-deflate" in first.extensions
    # Cut after t(6): resumed a few seconds before the last event read.
    assert second.cursor == t(6) - 5 * S

    status, body = source.get("/health")
    assert status == 200 and json.loads(body)["checks"]["source"]["cursor"] == LAST
    assert source.metric("brainy_source_reconnects_total") == 1
    # Re-sent after the reconnect: r1, r2, r3 creates and r2's update; r3 sent twice.
    assert source.metric("brainy_source_duplicates_dropped_total") == 5
    assert source.metric("brainy_source_malformed_total") == 5  # 2 frames twice, 1 no text
    assert source.metric('brainy_source_ignored_total{collection="posts",reason="identity",'
                         'source="bluesky"}') == 2  # fmt: skip
    assert source.metric("brainy_source_cursor_lag_seconds") > 0
    assert source.metric("brainy_records_ingested_total") >= len(LIVE)

    assert source.stop() == 0, source.output()
    live = assert_live_set(env)
    r3 = live[uri(B, "r3")]
    assert r3["did"] == B and r3["rkey"] == "r3" and r3["time_us"] == t(4)
    assert r3["reply_parent"] == uri(A, "r1") and r3["reply_root"] == uri(A, "r1")
    assert r3["langs"] == ["en"] and r3["createdAt"] and r3["cid"]


def test_sigterm_flushes_the_open_batch_checkpoints_and_exits_0(env) -> None:
    source, _ = start(env, None, "--batch-size", "1000", "--flush-interval", "3600")
    frames = len(scenario())
    wait_for(lambda: source.metric("brainy_source_events_total") == frames, "every frame", source)
    assert cursor(env) is None  # nothing flushed yet: the batch is open
    assert source.stop(signal.SIGTERM) == 0, source.output()
    assert cursor(env) == LAST
    assert_live_set(env)


def test_killed_at_several_points_and_restarted_it_loses_nothing(env) -> None:
    jetstream = FakeJetstream.of(scenario(), delay=0.05).start()
    env["started"].append(jetstream)
    kill_points = [
        ("the first frame sent", lambda: any(c.sent for c in jetstream.connections)),
        ("a first checkpoint", lambda: cursor(env) is not None),
        ("a checkpoint past the deletes", lambda: (cursor(env) or 0) >= t(12)),
    ]
    for what, when in kill_points:
        before = cursor(env)
        source, _ = start(env, jetstream)
        wait_for(lambda: len(jetstream.connections) > 0 and when(), what, source)  # noqa: B023
        source.stop(signal.SIGKILL)
        if before is not None:
            # A restart resumes a few seconds before its checkpoint.
            assert jetstream.connections[-1].cursor == before - 5 * S
    source, _ = start(env, jetstream)
    wait_for(lambda: cursor(env) == LAST, "the last event's checkpoint", source)
    assert source.stop() == 0, source.output()
    assert_live_set(env)


def test_an_unknown_collection_is_refused_before_anything_is_read(env) -> None:
    jetstream = FakeJetstream.of(scenario()).start()
    env["started"].append(jetstream)
    source = Source(env["url"], jetstream.url, env["tmp"], collection="nope")
    env["started"].append(source)
    source.proc.wait(60)
    assert source.proc.returncode == 2
    assert "error: collection: unknown collection 'nope'" in source.output()
    assert jetstream.connections == []


def test_a_batch_that_cannot_be_written_stops_it_with_status_1_before_the_cursor(env) -> None:
    # A file where the collection's wal/ folder should be: every batch put fails.
    blocker = env["tmp"] / "bucket" / "posts" / "wal"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    source, jetstream = start(env)
    assert source.proc.wait(60) == 1, source.output()
    assert "could not be made durable" in source.output()
    assert cursor(env) is None
    blocker.unlink()
    source, _ = start(env, jetstream)
    wait_for(lambda: cursor(env) == LAST, "the last event's checkpoint", source)
    assert source.stop() == 0, source.output()
    assert_live_set(env)


def test_a_port_in_use_is_refused_before_anything_is_read(env) -> None:
    jetstream = FakeJetstream.of(scenario()).start()
    env["started"].append(jetstream)
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        source = Source(env["url"], jetstream.url, env["tmp"], port=taken.getsockname()[1])
        env["started"].append(source)
        assert source.proc.wait(60) == 2
    assert "error: PORT: cannot listen on port" in source.output()
    assert jetstream.connections == []
