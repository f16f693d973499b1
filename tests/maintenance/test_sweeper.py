"""The sweeper: a batch whose event never arrived is indexed by the next sweep."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from brainy.maintenance.sweeper import sweep
from brainy.storage import ObjectInfo, Transient
from brainy.write.quarantine import quarantine_key
from helpers import declare, live_state, make_app, model_of
from maintenance_helpers import ingest_batch


@pytest.mark.parametrize("kind", ["memory", "file", "gcs"])
def test_sweep_indexes_batches_whose_events_were_lost_and_skips_applied_ones(
    kind: str, store_url: Callable[[str], str], tmp_path: Path
):
    url = store_url(kind)
    app = make_app(url, tmp_path)
    declare(app)
    rng = np.random.default_rng(3)
    keys = [ingest_batch(app, rng, deletes=["id-1"] if i % 3 == 2 else None) for i in range(6)]
    delivered = keys[::3]
    for key in delivered:
        assert app.index_key(key).status == "applied"

    before = time.time()
    report = sweep(app.maintenance, "docs")

    assert (report.seen, report.already_applied, report.indexed) == (6, 2, 4)
    assert sorted(report.indexed_keys) == sorted(set(keys) - set(delivered))
    assert (report.quarantined, report.missing, report.failed) == (0, 0, [])
    assert report.version == 6
    # On a remote store the horizon leaves room for the clock skew allowed.
    assert before <= report.started == report.horizon + report.margin <= time.time()
    assert live_state(url, "docs") == model_of(app.store, keys)

    again = sweep(app.maintenance, "docs")
    assert (again.seen, again.already_applied, again.indexed) == (6, 6, 0)
    assert again.version == 6  # nothing committed


def test_sweep_quarantines_corrupt_batches_and_leaves_young_ones_to_their_events(
    tmp_path: Path,
):
    url = f"memory://sweep-young-{time.time_ns()}"
    app = make_app(url, tmp_path)
    declare(app)
    good = ingest_batch(app, np.random.default_rng(4))
    bad = "docs/wal/2024/01/01/writer-x/broken.batch"
    app.store.put(bad, b"not a batch at all")

    written = {key: app.store.head(key).modified for key in (good, bad)}

    patient = sweep(app.maintenance, "docs", older_than=3600)
    assert (patient.seen, patient.deferred, patient.indexed) == (2, 2, 0)
    assert patient.horizon == patient.started - 3600
    # Deferred batches are not applied yet: the index lag counts the oldest of them.
    assert patient.oldest_unapplied == min(written.values())
    assert patient.lag == patient.started - min(written.values()) > 0

    report = sweep(app.maintenance, "docs")
    assert (report.seen, report.indexed, report.quarantined) == (2, 1, 1)
    assert report.indexed_keys == [good]
    assert app.store.exists(quarantine_key(bad)) and not app.store.exists(bad)
    assert report.to_dict()["horizon"] == report.started
    assert report.oldest_unapplied == min(written.values())

    caught_up = sweep(app.maintenance, "docs")
    assert (caught_up.oldest_unapplied, caught_up.lag) == (None, 0.0)


def test_a_batch_that_fails_to_index_voids_the_horizon_and_the_next_sweep_retries_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    url = f"memory://sweep-fail-{time.time_ns()}"
    app = make_app(url, tmp_path)
    declare(app)
    rng = np.random.default_rng(5)
    keys = [ingest_batch(app, rng) for _ in range(3)]
    ghost = "docs/wal/2024/01/01/writer-x/vanished.batch"
    real_list, real_index = app.store.list, app.indexer.index

    def list_with_ghost(prefix: str = ""):
        yield from real_list(prefix)
        yield ObjectInfo(ghost, 10, "etag", 0.0)  # listed, then deleted before the read

    def flaky_index(key: str):
        if key == keys[1]:
            raise Transient("503 Slow Down")
        return real_index(key)

    monkeypatch.setattr(app.store, "list", list_with_ghost)
    monkeypatch.setattr(app.indexer, "index", flaky_index)
    report = sweep(app.maintenance, "docs")
    assert (report.indexed, report.missing, report.failed) == (2, 1, [keys[1]])
    assert report.horizon is None
    # The oldest unapplied is the oldest batch listed (the ghost, gone, does not count).
    assert report.oldest_unapplied == app.store.head(keys[0]).modified

    monkeypatch.setattr(app.indexer, "index", real_index)
    retry = sweep(app.maintenance, "docs")
    assert retry.indexed_keys == [keys[1]] and retry.horizon == retry.started
    assert live_state(url, "docs") == model_of(app.store, keys)
