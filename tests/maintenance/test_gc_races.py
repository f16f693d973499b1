"""Garbage collection racing work that has uploaded but not yet committed: a build
that outlasts the grace period uploads again rather than reference what GC may
have deleted as an orphan."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from brainy.maintenance.compaction import compact
from brainy.maintenance.verify import verify
from brainy.storage import open_store
from helpers import declare, live_state, make_app, model_of
from maintenance_helpers import collect_mid_build, ingest_batch

GRACE = 0.5


def test_a_compaction_that_outlasts_the_gc_grace_never_commits_a_deleted_segment(
    tmp_path: Path,
):
    url = f"memory://gc-slow-build-{time.time_ns()}"
    app = make_app(url, tmp_path, BRAINY_GC_GRACE=str(GRACE))
    declare(app, partitions=2)
    rng = np.random.default_rng(5)
    keys = [ingest_batch(app, rng) for _ in range(4)]
    keys.append(ingest_batch(app, rng, upserts=["id-1"], deletes=["id-2"]))
    for key in keys:
        app.index_key(key)
    deleted: list[str] = []
    gc_while_building = collect_mid_build(app, GRACE, deleted)
    report = compact(app.maintenance, "docs", force=True, before_commit=gc_while_building)
    assert report.status == "compacted"
    assert deleted, "the collector deleted none of the uploaded outputs"
    newest = app.manifests("docs").latest()
    assert not {ref.key for ref in newest.segments} & set(deleted)
    assert verify(app.store, "docs").ok
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)
