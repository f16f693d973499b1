"""Bluesky source benchmark (issue 10): `brainy source bluesky` throughput.

A local Jetstream (`tests/jetstream.py`, a websocket server on a free loopback
port) replays `--posts` post-create events as fast as the process reads them;
`brainy source bluesky` runs as its own process with the default batch size and
flush interval into a fresh collection (the hash embedder, `--dimension`) on a
local folder store. Measured: seconds from the process's start until its cursor
holds the last event (every batch durable), posts/s over that time, the batches
written, and the process's peak resident memory (VmHWM), which the writer's
backpressure bounds.

Run: `python -m bench.bluesky [--posts N] [--dimension D]`; figures go to
`bench/results/bluesky.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from brainy.core.config import CollectionSchema
from brainy.service.app import Brainy
from brainy.storage import open_store
from brainy.write.sources import Cursor

RESULTS = Path(__file__).resolve().parent / "results"
TESTS = Path(__file__).resolve().parent.parent / "tests"
WORDS = ("cat", "dog", "sun", "moon", "tea", "coffee", "rain", "city", "river", "bird", "tree",
         "book", "song", "train", "road", "cloud", "light", "night", "music", "garden")  # fmt: skip


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run(posts: int, dimension: int) -> dict[str, Any]:
    sys.path.insert(0, str(TESTS))
    from jetstream import FakeJetstream, post_event

    rng = random.Random(7)
    t0 = (int(time.time()) - 3600) * 1_000_000
    events = [
        (t0 + i, post_event(f"did:plc:u{i % 997}", f"r{i}", t0 + i,
                            " ".join(rng.choices(WORDS, k=12))))
        for i in range(posts)
    ]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="brainy-bench-bluesky-"))
    jetstream = FakeJetstream.of(events).start()
    proc = None
    try:
        url = (work / "store").as_uri()
        env = {**os.environ, "BRAINY_STORE": url, "BRAINY_CACHE_DIR": str(work / "cache")}
        app = Brainy.from_env("cli", env)
        app.create_collection(CollectionSchema("posts", dimension=dimension))
        app.close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "brainy", "source", "bluesky", "--collection", "posts",
             "--jetstream", jetstream.url],
            env={**env, "PORT": str(port)}, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cursor = Cursor(open_store(url), "bluesky", "posts")
        last = events[-1][0]
        while (state := cursor.read()) is None or state.position < last:
            if proc.poll() is not None:
                raise RuntimeError(f"the source exited with {proc.returncode}")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        peak = _peak_rss_kb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
        batches = sum(1 for _ in open_store(url).list("posts/wal/"))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        jetstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "posts": posts,
        "dimension": dimension,
        "embedder": "hash",
        "seconds": round(seconds, 3),
        "posts_per_s": round(posts / seconds, 1),
        "batches": batches,
        "peak_rss_mb": round(peak / 1024, 1),
        "exit_status": status,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=50_000)
    parser.add_argument("--dimension", type=int, default=256)
    args = parser.parse_args(argv)
    figures = run(args.posts, args.dimension)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bluesky.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
