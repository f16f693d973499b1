"""Chaos: four indexer processes and a compactor process on one collection, with
events duplicated, reordered and some never delivered. Afterwards one sweep picks
up the lost ones and a final compaction runs. The live set is exactly what
last-writer-wins says; the manifest history is versions 1..N with none skipped,
none overwritten (every commit a process was told landed is in it, as that
process made it) and nothing dropped from `applied`; `verify` is clean.

The proof is made on the local folder store; the moto server is a second witness
(it checks a precondition and then writes without a lock, so a race there can
pass where real S3 would not, or fail where real S3 would not).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brainy.format.batch import WAL, collection_of_batch
from brainy.maintenance.compaction import compact
from brainy.maintenance.sweeper import sweep
from brainy.maintenance.verify import verify
from brainy.service.app import Brainy
from brainy.storage import NotFound, open_store
from brainy.table.manifest import Manifest, Manifests
from brainy.write.events import ObjectCreated
from helpers import declare, level0_sources, live_state, make_app, model_of, superseded

COLLECTION = "docs"
DIM = 8
INDEXERS = 4
WRITERS = 3
BATCHES = 36
IDS = [f"id-{i}" for i in range(30)]
DROP = 0.1
PACE = 0.02  # seconds between two events reaching one indexer


def _env(url: str, role: str, cache_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "BRAINY_STORE": url,
        "BRAINY_ROLE": role,
        "BRAINY_CACHE_DIR": cache_dir,
        "BRAINY_REFRESH_INTERVAL": "0",
    }


def index_events(
    url: str, cache_dir: str, keys: list[str], start: Any
) -> list[tuple[str, str, int]]:
    """Child-process body: deliver `keys` to an indexer of its own, as events name
    them (bucket and full object name); returns (key, status, version) per event."""
    app = Brainy.from_env("indexer", _env(url, "indexer", cache_dir))
    store = app.store
    head = f"{store.prefix.rstrip('/')}/" if store.prefix else ""
    start.wait()
    out = []
    for key in keys:
        [result] = app.index_objects([ObjectCreated(store.bucket or "", head + key)])
        out.append((key, result.status, result.version or 0))
        # Paced like a trickle of events, so the compactor's merges land among them.
        time.sleep(PACE)
    return out


def compact_while(url: str, cache_dir: str, start: Any, done: Any) -> dict[str, Any]:
    """Child-process body: force compactions until the indexers are done (at least
    two, at most six); returns its writer id and (status, version) per run."""
    app = Brainy.from_env("compactor", _env(url, "compactor", cache_dir))
    start.wait()
    runs = []
    for i in range(6):
        if i >= 2 and done.is_set():
            break
        # No sweep here: the dropped events must still be pending for the final sweep.
        report = compact(app.maintenance, COLLECTION, force=True, sweep_first=False)
        runs.append((report.status, report.version or 0))
        done.wait(0.2)
    return {"writer": app.writer_id, "runs": runs}


def _write_batches(url: str, tmp_path: Path) -> list[str]:
    """Several writers' upserts and deletes over a small id space (so ids collide
    across writers and batches); some requests carry an Idempotency-Key."""
    writers = [make_app(url, tmp_path, role="ingest") for _ in range(WRITERS)]
    declare(writers[0], dimension=DIM, partitions=3, seed=9)
    rng = np.random.default_rng(21)
    keys = []
    for b in range(BATCHES):
        chosen = rng.choice(IDS, size=int(rng.integers(2, 7)), replace=False).tolist()
        deletes = [rid for rid in chosen if rng.random() < 0.25]
        upserts = [rid for rid in chosen if rid not in deletes]
        vectors = rng.standard_normal((len(upserts), DIM)).astype(np.float32)
        payload: dict[str, Any] = {"collection": COLLECTION, "deletes": deletes}
        if upserts:
            payload["records"] = [
                {"id": rid, "vector": vectors[j].tolist(), "metadata": {"b": b}}
                for j, rid in enumerate(upserts)
            ]
        idem = f"req-{b}" if b % 3 == 0 else None
        keys.append(writers[b % WRITERS].ingest(payload, idem).batch)
    return keys


def _deliveries(keys: list[str], seed: int) -> tuple[list[list[str]], set[str]]:
    """Each indexer's shuffled event list: ~10% of batches reach no one, the rest
    reach one or two indexers, a few twice over."""
    rng = random.Random(seed)
    dropped = set(rng.sample(keys, max(1, round(DROP * len(keys)))))
    lists: list[list[str]] = [[] for _ in range(INDEXERS)]
    for key in keys:
        if key in dropped:
            continue
        for target in rng.sample(range(INDEXERS), rng.choice((1, 1, 2))):
            lists[target].append(key)
            if rng.random() < 0.2:
                lists[target].append(key)
    for events in lists:
        rng.shuffle(events)
    return lists, dropped


def _history(url: str) -> list[Manifest]:
    """Every version from 1 to the newest; fails on a gap or a missing newest."""
    manifests = Manifests(open_store(url, read_only=True), COLLECTION)
    newest = manifests.latest()
    assert newest is not None
    stored = manifests.versions()
    assert stored == list(range(1, newest.version + 1)), f"versions skipped: {stored}"
    with pytest.raises(NotFound):
        manifests.load(newest.version + 1)
    return [manifests.load(v) for v in stored]


def run_chaos(url: str, tmp_path: Path) -> None:
    keys = _write_batches(url, tmp_path)
    lists, dropped = _deliveries(keys, seed=5)
    assert all(lists) and len(dropped) >= 3

    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    start, done = manager.Event(), manager.Event()
    with ctx.Pool(INDEXERS + 1) as pool:
        compactor = pool.apply_async(compact_while, (url, str(tmp_path / "compactor"), start, done))
        pending = [
            pool.apply_async(index_events, (url, str(tmp_path / f"indexer-{i}"), events, start))
            for i, events in enumerate(lists)
        ]
        start.set()
        delivered = [p.get(timeout=240) for p in pending]
        done.set()
        compacting = compactor.get(timeout=240)
    manager.shutdown()

    # Every event ended applied by someone or found already applied; nothing missing.
    statuses = Counter(status for results in delivered for _, status, _ in results)
    assert set(statuses) <= {"applied", "already-applied"}, statuses
    applied_by: dict[str, set[int]] = {}
    for results in delivered:
        for key, status, version in results:
            if status == "applied":
                applied_by.setdefault(key, set()).add(version)
    source = open_store(url, read_only=True)
    # A batch a newer one beat in every record commits nothing when it comes late.
    beaten = superseded(source, keys)
    assert set(keys) - dropped - beaten <= set(applied_by) <= set(keys) - dropped
    merges = [version for status, version in compacting["runs"] if status == "compacted"]
    index_versions = [v for versions in applied_by.values() for v in versions]
    assert any(min(index_versions) < v < max(index_versions) for v in merges), (
        f"no compaction landed during the indexing: {compacting['runs']}"
    )

    app = make_app(url, tmp_path, role="compactor")
    swept = sweep(app.maintenance, COLLECTION)
    assert set(swept.indexed_keys) <= dropped and dropped - set(swept.indexed_keys) <= beaten
    final = compact(app.maintenance, COLLECTION, force=True)
    assert final.status == "compacted", final

    history = _history(url)
    seen: set[str] = set()
    for parent, child in itertools.pairwise([None, *history]):
        before = level0_sources(parent) if parent else set()
        added = level0_sources(child) - before
        where = f"version {child.version} by {child.committed_by}"
        if added:
            # An index commit adds one batch, and exactly one indexer was told
            # "applied", with this version (a duplicate delivery that lost the race
            # says "already-applied").
            [key] = added
            assert key not in seen
            seen.add(key)
            told = applied_by.get(key, {child.version})
            assert told == {child.version}, where
        else:
            # A compaction: only the compactors commit without adding a batch.
            assert child.committed_by in (compacting["writer"], app.writer_id), where
    assert seen == set(applied_by) | set(swept.indexed_keys)
    for version in merges:
        assert history[version - 1].committed_by == compacting["writer"]

    latest = history[-1]
    assert all(ref.level == 1 for ref in latest.segments) and latest.masked == 0
    assert live_state(url, COLLECTION) == model_of(open_store(url, read_only=True), keys)
    report = verify(open_store(url, read_only=True), COLLECTION)
    assert report.ok, report.problems
    wal = [i.key for i in open_store(url).list(f"{COLLECTION}/{WAL}/")]
    assert sorted(k for k in wal if collection_of_batch(k)) == sorted(keys)


def test_four_indexers_and_a_compactor_on_the_local_folder_store(
    store_url: Callable[[str], str], tmp_path: Path
):
    run_chaos(store_url("file"), tmp_path)


@pytest.mark.slow
def test_four_indexers_and_a_compactor_on_the_moto_server(
    store_url: Callable[[str], str], tmp_path: Path
):
    run_chaos(store_url("s3"), tmp_path)
