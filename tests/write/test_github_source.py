"""`brainy source github` in-process, through the source runner, into a real
collection on a local bucket, against the fake GitHub API in fake time: after
limits, failures, a crash between a durable batch and its checkpoint and a run
cut short by its time budget, every live repository is in the collection once,
no repository is in two batches, and the checkpoint is the last one made durable.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.write.fake_github import TOKEN, FakeClock, FakeGitHub, make_repos

from brainy.entry.cli import main
from brainy.entry.github import read_github
from brainy.entry.sources import run_source
from brainy.format.batch import Batch
from brainy.write.sources import Cursor
from faults import FaultyStore
from helpers import declare, live_state, make_app

COLLECTION = "repos"


@pytest.fixture
def app(tmp_path: Path):
    app = make_app(f"file://{tmp_path}/bucket", tmp_path)
    declare(app, COLLECTION, dimension=32)
    yield app
    app.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeGitHub]:
    server = FakeGitHub(
        make_repos(45),
        clock,
        page_size=10,
        limit=40,
        window=600.0,
        secondary={7: 30.0, 33: None},
        failures={12: 502, 50: 503},
    )
    with server:
        yield server


def run(app, fake: FakeGitHub, clock: FakeClock, max_seconds: float | None = 10_000.0) -> int:
    """One run of the source, as `brainy source github --max-seconds S` runs it
    (batches of 7, flushed by size or at the end, never by the interval)."""
    args = argparse.Namespace(collection=COLLECTION, batch_size=7, flush_interval=3600.0)

    def read(ctx):
        read_github(ctx, fake.url, TOKEN, max_seconds, clock=clock)

    return run_source(app, "github", args, read, env={"PORT": "0"})


def batches(store) -> list[Batch]:
    keys = sorted(o.key for o in store.list(f"{COLLECTION}/wal/"))
    return [Batch.decode(store.get(k).data, k) for k in keys]


def indexed(app) -> dict:
    for o in sorted(app.store.list(f"{COLLECTION}/wal/"), key=lambda o: o.key):
        app.index_key(o.key)
    return live_state(app.store.url, COLLECTION)


def assert_written_once(app, fake: FakeGitHub) -> None:
    written = Counter(rid for b in batches(app.store) for rid in b.ids)
    assert set(written) == fake.expected_ids(), "skipped or unexpected repositories"
    assert [rid for rid, n in written.items() if n > 1] == [], "written twice"
    live = indexed(app)
    assert set(live) == fake.expected_ids()
    repo = next(r for r in fake.repos if r.live and r.topics)
    _, metadata = live[f"gh:{repo.full_name}"]
    assert metadata == {
        "stars": repo.stars,
        "language": repo.language,
        "topics": repo.topics,
        "url": f"https://github.com/{repo.full_name}",
        "pushed_at": repo.pushed_at,
    }
    assert Cursor(app.store, "github", COLLECTION).read().position == fake.repos[-1].id


def test_a_crawl_writes_every_repository_once_and_checkpoints_the_last(app, fake, clock):
    assert run(app, fake, clock) == 0
    assert_written_once(app, fake)
    assert fake.violations == []
    # Size-bound batches of 7 (the gone repositories count towards none).
    assert [len(b.ids) for b in batches(app.store)].count(7) == len(fake.expected_ids()) // 7
    text = app.metrics.render().decode()
    assert 'brainy_github_requests_total{kind="budget"}' in text
    assert 'brainy_source_rate_limit_waits_total{collection="repos",source="github"}' in text


def test_a_crash_between_a_durable_batch_and_its_checkpoint_writes_it_once(app, fake, clock):
    def crash_at_checkpoint(n: int, op: str, key: str):
        return "crash-before" if op == "put" and key.startswith("_brainy/cursors/") else None

    real = app.store
    app.store = FaultyStore(real, rule=crash_at_checkpoint)
    assert run(app, fake, clock) == 1  # the first batch is durable, its checkpoint is not
    app.store = real
    assert Cursor(real, "github", COLLECTION).read() is None
    assert len(batches(real)) == 1

    # Restarted from no checkpoint, the crawl reads the same repositories again:
    # the same records make the same batch, found already written.
    assert run(app, fake, clock) == 0
    assert_written_once(app, fake)


def test_a_run_with_a_time_budget_stops_checkpoints_and_the_next_carries_on(app, fake, clock):
    # 40 requests every 10 minutes: the first run spends its budget of 5 minutes
    # waiting for the reset, then stops with what it read durable.
    assert run(app, fake, clock, max_seconds=300.0) == 0
    first = Cursor(app.store, "github", COLLECTION).read().position
    assert fake.repos[0].id < first < fake.repos[-1].id
    written = {rid for b in batches(app.store) for rid in b.ids}
    assert written == {f"gh:{r.full_name}" for r in fake.repos if r.live and r.id <= first}

    assert run(app, fake, clock) == 0
    assert_written_once(app, fake)
    assert fake.violations == []


def test_the_command_refuses_a_bad_api_url_and_an_unknown_collection(app, capsys):
    store = ["--store", app.store.url]
    with pytest.raises(SystemExit) as e:
        main(["source", "github", "--collection", COLLECTION, "--api", "ftp://x", *store], {})
    assert e.value.code == 2
    assert "--api: expected an http(s) URL" in capsys.readouterr().err
    assert main(["source", "github", "--collection", "nope", *store], {"PORT": "0"}) == 2
    assert "error: collection: unknown collection 'nope'" in capsys.readouterr().err


def test_a_refused_token_stops_the_command_naming_github_token(app, fake, capsys):
    argv = ["source", "github", "--collection", COLLECTION, "--api", fake.url,
            "--store", app.store.url]  # fmt: skip
    assert main(argv, {"GITHUB_TOKEN": "wrong", "PORT": "0"}) == 2
    assert "error: GITHUB_TOKEN: refused by" in capsys.readouterr().err
    assert Cursor(app.store, "github", COLLECTION).read() is None
