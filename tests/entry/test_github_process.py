"""`brainy source github` as a process: killed (SIGKILL) mid-crawl and started
again, with the GitHub API restarted under it, then stopped with SIGTERM. Every
live repository ends in the collection exactly once, no repository is in two
batches, the checkpoint is the newest repository, and each repository cost at
most one extra fetch for the crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.write.fake_github import TOKEN, FakeGitHub, make_repos

from brainy.format.batch import Batch
from brainy.write.sources import Cursor
from brainy.write.sources.ratelimit import SystemClock
from helpers import declare, live_state, make_app
from servers import free_port

pytestmark = pytest.mark.slow

COLLECTION = "repos"
BATCH = 5


def until(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    # A secondary limit with retry-after (1 s) and a 502 on the way.
    server = FakeGitHub(make_repos(40), SystemClock(), page_size=10,
                        secondary={15: 1.0}, failures={25: 502})  # fmt: skip
    with server:
        yield server


@pytest.fixture
def app(tmp_path: Path):
    app = make_app(f"file://{tmp_path}/bucket", tmp_path)
    declare(app, COLLECTION, dimension=32)
    yield app
    app.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def test_killed_restarted_and_stopped_it_writes_every_repository_once(app, fake, tmp_path):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BRAINY_", "AWS_"))},
        "BRAINY_STORE": app.store.url,
        "BRAINY_CACHE_DIR": str(tmp_path / "cache-source"),
        "GITHUB_TOKEN": TOKEN,
        "PORT": str(port),
    }
    argv = [sys.executable, "-m", "brainy", "source", "github", "--collection", COLLECTION,
            "--api", fake.url, "--batch-size", str(BATCH), "--flush-interval", "3600"]  # fmt: skip
    cursor = Cursor(app.store, "github", COLLECTION)
    log = open(tmp_path / "source.log", "wb")  # noqa: SIM115 - closed below
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    try:
        first = start()
        until(lambda: cursor.read() is not None, "a first durable batch")
        status, metrics = _get(port, "/metrics")
        assert status == 200 and b'brainy_github_requests_total{kind="sent"}' in metrics
        first.kill()  # SIGKILL: no flush, no checkpoint of what it was reading
        first.wait(10)
        killed_at = cursor.read().position

        fake.stop()  # the API goes away too; the restarted source finds it down
        second = start()
        until(lambda: _get(port, "/health")[0] == 200, "the restarted source to serve /health")
        status, body = _get(port, "/health")
        assert json.loads(body)["checks"]["source"]["cursor"] == killed_at
        time.sleep(1.0)
        fake.start()  # the same port and state

        head = f"/repositories?since={fake.repos[-1].id}"
        until(lambda: any(s.path == head and s.status == 200 for s in fake.log), "the head")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        log.close()
    output = (tmp_path / "source.log").read_text(errors="replace")
    assert "ConnectionError" in output  # the restarted source did find the API down

    assert cursor.read().position == fake.repos[-1].id, output[-3000:]
    keys = sorted(o.key for o in app.store.list(f"{COLLECTION}/wal/"))
    written = Counter(rid for k in keys for rid in Batch.decode(app.store.get(k).data, k).ids)
    assert set(written) == fake.expected_ids()
    assert [rid for rid, n in written.items() if n > 1] == []
    for key in keys:
        app.index_key(key)
    assert set(live_state(app.store.url, COLLECTION)) == fake.expected_ids()

    # The budget: each repository's details were fetched once, or twice when the
    # killed process had read it without its batch being checkpointed.
    details = Counter(
        s.path for s in fake.log if s.path.count("/") == 3 and s.status in (200, 404, 451)
    )
    again = [path for path, n in details.items() if n > 1]
    assert all(n <= 2 for n in details.values())
    assert all(int(path.rsplit("-", 1)[1]) > killed_at for path in again), (
        "a checkpointed repository was fetched again"
    )
    assert fake.violations == []
