"""Writers racing to commit manifest versions: every commit lands, none is lost,
versions are contiguous — with threads and with separate processes, on the local
folder store and on S3 (a moto server over HTTP)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from brainy.storage import NotFound, open_store
from brainy.table.manifest import Manifests
from helpers import declare, index_keys_in_process, live_state, make_app

WRITERS = 4
BATCHES_EACH = 3


def _ingest_batches(url: str, tmp_path: Path) -> tuple[list[list[str]], dict[str, int]]:
    app = make_app(url, tmp_path, role="ingest")
    declare(app)
    rng = np.random.default_rng(11)
    per_writer: list[list[str]] = []
    expected: dict[str, int] = {}
    for w in range(WRITERS):
        keys = []
        for b in range(BATCHES_EACH):
            ids = [f"w{w}-b{b}-{i}" for i in range(5)]
            vectors = rng.standard_normal((5, 8)).astype(np.float32)
            records = [
                {"id": rid, "vector": vectors[i].tolist(), "metadata": {"w": w, "b": b}}
                for i, rid in enumerate(ids)
            ]
            keys.append(app.ingest({"collection": "docs", "records": records}).batch)
            expected.update(dict.fromkeys(ids, w))
        per_writer.append(keys)
    return per_writer, expected


def _assert_contiguous_history(url: str, all_keys: list[str]) -> None:
    store = open_store(url, read_only=True)
    manifests = Manifests(store, "docs")
    n = len(all_keys)
    previous: set[str] = set()
    for version in range(1, n + 1):
        manifest = manifests.load(version)
        sources = [ref.source for ref in manifest.segments]
        applied = set(sources)
        # Each version adds exactly one batch to its parent: nothing lost, nothing twice.
        assert previous < applied and len(applied - previous) == 1, f"version {version}"
        assert len(sources) == len(applied)
        previous = applied
    with pytest.raises(NotFound):
        manifests.load(n + 1)
    assert previous == set(all_keys)


@pytest.mark.parametrize("kind", ["file", "s3", "gcs"])
def test_threads_racing_to_commit_all_land(kind: str, store_url: Callable[[str], str], tmp_path):
    url = store_url(kind)
    per_writer, expected = _ingest_batches(url, tmp_path)
    indexers = [make_app(url, tmp_path, role="indexer") for _ in range(WRITERS)]
    barrier = threading.Barrier(WRITERS)

    def run(w: int) -> list[str]:
        barrier.wait()
        return [indexers[w].index_key(key).status for key in per_writer[w]]

    with ThreadPoolExecutor(WRITERS) as pool:
        statuses = list(pool.map(run, range(WRITERS)))
    assert all(s == "applied" for group in statuses for s in group)
    all_keys = [k for group in per_writer for k in group]
    _assert_contiguous_history(url, all_keys)
    state = live_state(url, "docs")
    assert {rid: meta["w"] for rid, (_, meta) in state.items()} == expected


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "s3"])
def test_processes_racing_to_commit_all_land(kind: str, store_url: Callable[[str], str], tmp_path):
    url = store_url(kind)
    per_writer, expected = _ingest_batches(url, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Event()
    with ctx.Pool(WRITERS) as pool:
        pending = [
            pool.apply_async(
                index_keys_in_process, (url, str(tmp_path / f"proc-{w}"), per_writer[w], start)
            )
            for w in range(WRITERS)
        ]
        start.set()
        versions = [p.get(timeout=120) for p in pending]
    all_versions = sorted(v for group in versions for v in group)
    assert all_versions == list(range(1, len(all_versions) + 1))
    all_keys = [k for group in per_writer for k in group]
    _assert_contiguous_history(url, all_keys)
    state = live_state(url, "docs")
    assert {rid: meta["w"] for rid, (_, meta) in state.items()} == expected
