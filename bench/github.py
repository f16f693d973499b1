"""GitHub source benchmark (issue 10): what a repository costs `brainy source github`.

The fake GitHub API of the tests (`tests/write/fake_github.py`, a threaded HTTP
server on a free loopback port, pages of 100 as GitHub's) serves `--repos`
repositories with READMEs of about 4 KB; the crawler runs in-process through
the source runner (default batch size and flush interval) into a fresh
collection (the hash embedder, `--dimension`) on a local folder store. Its
clock is a fake one, so the token bucket and the rate limits cost no real time:
what is measured is the crawler's own work. Measured: GitHub requests per
repository (what the hourly budget pays), the repositories an hour one token's
5,000 requests cover at that cost, and repositories a second end to end
(requests, embedding, durable batches), which shows how far the crawler itself
is from being the bound.

Run: `python -m bench.github [--repos N] [--dimension D]`; figures go to
`bench/results/github.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from brainy.core.config import CollectionSchema
from brainy.entry.github import BATCH_SIZE, FLUSH_INTERVAL, read_github
from brainy.entry.sources import run_source
from brainy.service.app import Brainy

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
HOURLY_BUDGET = 5_000


def run(repos: int, dimension: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.write.fake_github import TOKEN, FakeClock, FakeGitHub, make_repos

    work = Path(tempfile.mkdtemp(prefix="brainy-bench-github-"))
    clock = FakeClock()
    fake = FakeGitHub(make_repos(repos), clock, page_size=100, limit=10**9).start()
    try:
        env = {"BRAINY_STORE": (work / "store").as_uri(), "BRAINY_CACHE_DIR": str(work / "c")}
        app = Brainy.from_env("cli", env)
        app.create_collection(CollectionSchema("repos", dimension=dimension))
        args = argparse.Namespace(
            collection="repos", batch_size=BATCH_SIZE, flush_interval=FLUSH_INTERVAL
        )
        started = time.perf_counter()
        status = run_source(
            app,
            "github",
            args,
            lambda ctx: read_github(ctx, fake.url, TOKEN, 10**9, clock=clock),
            env={"PORT": "0"},
        )
        seconds = time.perf_counter() - started
        batches = sum(1 for _ in app.store.list("repos/wal/"))
        app.close()
    finally:
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)
    requests = len(fake.log)
    per_repo = requests / repos
    return {
        "repositories": repos,
        "dimension": dimension,
        "embedder": "hash",
        "requests": requests,
        "requests_per_repository": round(per_repo, 3),
        "repositories_per_hour_per_token": int(HOURLY_BUDGET / per_repo),
        "token_bucket_repositories_per_s": round(10 / per_repo, 2),
        "seconds": round(seconds, 3),
        "repositories_per_s": round(repos / seconds, 1),
        "batches": batches,
        "exit_status": status,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=3_000)
    parser.add_argument("--dimension", type=int, default=256)
    args = parser.parse_args(argv)
    figures = run(args.repos, args.dimension)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "github.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
