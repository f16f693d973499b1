"""Garbage collection: old versions, unreferenced segments and applied batches go;
whatever a retained version, a reader or the sweeper needs stays."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from brainy.format.batch import Batch
from brainy.format.segment import SegmentRows, build_segment, load_segment, upload_segment
from brainy.maintenance.compaction import compact
from brainy.maintenance.gc import GCReport, collect_garbage
from brainy.maintenance.sweeper import sweep
from brainy.maintenance.verify import verify
from brainy.service.app import Brainy
from brainy.storage import NotFound, ObjectStore
from brainy.table.manifest import Manifest, VersionCache
from brainy.write.indexer import build_batch_segment, last_per_id
from brainy.write.quarantine import quarantine_key
from helpers import declare, live_state, make_app, model_of, random_vectors
from maintenance_helpers import ingest_batch, search_version

RETENTION = 1000.0
GRACE = 100.0


@dataclass
class Scene:
    """A collection after three indexed batches, a compaction, a delete-only batch,
    an orphan segment (an indexer that died before its commit), a batch whose
    event was lost, and a corrupt batch in quarantine."""

    app: Brainy
    url: str
    reader: Manifest  # the version a reader held before the compaction
    level0: list[str]  # segment keys only versions up to `reader` reference
    compacted: str
    orphan: str
    applied: list[str]
    pending: str
    quarantined: str
    model: dict  # the live set last-writer-wins says every batch written leaves
    done: float  # after the last write


def _gc(scene: Scene, after: float, **kw) -> GCReport:
    settings = replace(
        scene.app.settings, retention=RETENTION, gc_grace=GRACE, batch_retention=GRACE
    )
    return collect_garbage(scene.app.store, "docs", settings, now=scene.done + after, **kw)


def _scene(url: str, tmp_path: Path) -> Scene:
    # The emulators run on this machine: no clock skew to leave room for, so the
    # compaction's sweep horizon covers the batches just written.
    app = make_app(url, tmp_path, BRAINY_MAX_CLOCK_SKEW="0")
    declare(app)
    rng = np.random.default_rng(11)
    upserts = [["id-0", "id-1", "id-2"], ["id-1", "id-3"], ["id-2", "id-4"]]
    applied = [ingest_batch(app, rng, upserts=ids) for ids in upserts]
    for key in applied:
        app.index_key(key)
    reader = app.manifests("docs").latest()
    if not app.store.local_clock:
        time.sleep(1.1)  # S3 and GCS times are whole seconds: let one pass
    # The compaction's sweep records that every batch written so far is applied.
    assert compact(app.maintenance, "docs", force=True).status == "compacted"
    compacted = app.manifests("docs").latest().segments[0].key
    deletes = ingest_batch(app, rng, upserts=[], deletes=["id-1"])
    app.index_key(deletes)
    applied.append(deletes)

    orphan_rows = SegmentRows(["id-7"], np.array([1]), ["w"], [None], random_vectors(rng, 1, 8))
    built = build_segment(orphan_rows, metric="angular", n_trees=4, seed=0, workdir=tmp_path)
    orphan = upload_segment(app.store, "docs", built)
    pending = ingest_batch(app, rng, upserts=["id-3", "id-4"])
    bad = "docs/wal/2024/01/01/writer-x/broken.batch"
    app.store.put(bad, b"garbage")
    assert app.index_key(bad).status == "quarantined"
    return Scene(
        app=app,
        url=url,
        reader=reader,
        level0=[ref.key for ref in reader.segments],
        compacted=compacted,
        orphan=orphan,
        applied=applied,
        pending=pending,
        quarantined=quarantine_key(bad),
        model=model_of(app.store, [*applied, pending]),
        done=time.time(),
    )


def _keys(store: ObjectStore) -> dict[str, str]:
    return {info.key: info.etag for info in store.list("")}


@pytest.mark.parametrize("kind", ["memory", "file", "s3", "gcs"])
def test_gc_removes_only_what_no_retained_version_needs(
    kind: str, store_url: Callable[[str], str], tmp_path: Path
):
    scene = _scene(store_url(kind), tmp_path)
    store = scene.app.store
    schema = scene.app.require_schema("docs")
    query = np.ones(8, dtype=np.float32)
    reader_sees = search_version(store, scene.reader, schema, query)
    assert len(reader_sees) == 5

    # Inside the retention window every version is retained: only the orphan, past
    # its grace period, goes; the reader's old version still answers the same.
    inside = _gc(scene, after=RETENTION / 2)
    assert inside.retained == list(range(1, scene.reader.version + 3))
    assert (inside.versions, inside.segments, inside.batches) == ([], [scene.orphan], [])
    assert search_version(store, scene.reader, schema, query) == reader_sees
    for ref in scene.reader.segments:
        load_segment(store, ref.key, ref.id, tmp_path / "reader-cache")

    # Past the window only the newest version is retained.
    newest = scene.app.manifests("docs").latest()
    past = _gc(scene, after=RETENTION * 5)
    assert past.retained == [newest.version]
    assert past.versions == [f"docs/manifests/{v:020d}.json" for v in range(1, newest.version)]
    assert sorted(past.segments) == sorted(scene.level0)
    # The batches the compaction's sweep saw applied go; the delete-only batch came
    # after it, and its level-0 segment (its tombstone) still names it for repair.
    assert sorted(past.batches) == sorted(scene.applied[:3])

    left = _keys(store)
    for key in (
        scene.compacted,
        scene.pending,
        scene.applied[3],
        scene.quarantined,
        "_brainy/config.json",
    ):
        assert key in left, key
    assert "docs/manifests/_latest" in left
    assert f"docs/manifests/{newest.version:020d}.json" in left
    with pytest.raises(NotFound):
        scene.app.manifests("docs").load(scene.reader.version)

    # Nothing live was lost: the lost event's batch is swept in and the live set is
    # exactly what last-writer-wins says.
    assert sweep(scene.app.maintenance, "docs").indexed_keys == [scene.pending]
    assert verify(store, "docs").ok
    assert live_state(scene.url, "docs") == scene.model


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_dry_run_deletes_nothing_and_lists_what_a_real_run_deletes(
    kind: str, store_url: Callable[[str], str], tmp_path: Path
):
    scene = _scene(store_url(kind), tmp_path)
    before = _keys(scene.app.store)
    dry = _gc(scene, after=RETENTION * 5, dry_run=True)
    assert _keys(scene.app.store) == before
    assert dry.deleted

    real = _gc(scene, after=RETENTION * 5)
    assert real.deleted == dry.deleted
    assert not set(real.deleted) & set(_keys(scene.app.store))


def test_young_orphans_and_unapplied_batches_are_kept(tmp_path: Path):
    scene = _scene(f"memory://gc-young-{time.time_ns()}", tmp_path)
    young = _gc(scene, after=GRACE / 10)
    assert scene.orphan not in young.segments and young.segments == []

    # However old, a batch no retained version has applied is the sweeper's to index.
    ancient = _gc(scene, after=RETENTION * 1000)
    assert scene.pending not in ancient.batches
    assert scene.app.store.exists(scene.pending)


def test_a_batch_written_after_the_last_recorded_sweep_is_kept_however_old(tmp_path: Path):
    """Applied or not, a batch no sweep has seen applied is never deleted: a sweep
    must be able to find it (the delete-only batch here was applied by its event)."""
    scene = _scene(f"memory://gc-unswept-{time.time_ns()}", tmp_path)
    report = _gc(scene, after=RETENTION * 1000)
    assert scene.applied[3] not in report.batches and scene.pending not in report.batches
    assert scene.app.store.exists(scene.applied[3])


def test_a_stale_latest_hint_never_hides_the_retained_versions(tmp_path: Path):
    scene = _scene(f"memory://gc-hint-{time.time_ns()}", tmp_path)
    manifests = scene.app.manifests("docs")
    manifests.write_hint(1)
    report = _gc(scene, after=RETENTION * 5)
    assert report.versions and manifests.read_hint()[0] >= report.retained[0]

    # A hint left behind by a committer that stalled past the window: readers and
    # committers still find the newest version, and a commit lands after it.
    newest = manifests.latest()
    manifests.write_hint(1)
    assert manifests.latest().version == newest.version
    assert scene.app.index_key(scene.pending).version == newest.version + 1


def test_an_orphan_is_never_referenced_again_so_gc_may_delete_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An indexer died after uploading its segment; long after, the batch is
    redelivered while GC runs. GC's listing shows the orphan old and unreferenced;
    the redelivery builds a segment of its own (every build has a fresh key), so
    deleting the orphan cannot take anything a manifest references."""
    url = f"memory://gc-race-{time.time_ns()}"
    app = make_app(url, tmp_path)
    declare(app)
    rng = np.random.default_rng(12)
    key = ingest_batch(app, rng)
    batch = Batch.decode(app.store.get(key).data, key)
    rows, _ = build_batch_segment(batch, last_per_id(batch))
    schema = app.require_schema("docs")
    built = build_segment(
        rows, metric=schema.metric, n_trees=schema.n_trees, seed=schema.seed, workdir=tmp_path
    )
    orphan = upload_segment(app.store, "docs", built)

    real_list = app.store.list

    def list_then_redeliver(prefix: str = ""):
        listed = list(real_list(prefix))
        if prefix == "docs/segments/":
            assert app.index_key(key).status == "applied"
        yield from listed

    monkeypatch.setattr(app.store, "list", list_then_redeliver)
    settings = replace(app.settings, retention=RETENTION, gc_grace=GRACE)
    report = collect_garbage(app.store, "docs", settings, now=time.time() + RETENTION / 2)
    referenced = app.manifests("docs").latest().segments[0].key
    assert referenced != orphan
    assert orphan in report.segments and referenced not in report.segments
    assert not app.store.exists(orphan) and app.store.exists(referenced)
    assert verify(app.store, "docs").ok


def test_report_is_json(tmp_path: Path):
    scene = _scene(f"memory://gc-json-{time.time_ns()}", tmp_path)
    report = _gc(scene, after=RETENTION * 5, dry_run=True)
    assert json.loads(json.dumps(report.to_dict()))["dry_run"] is True


def test_a_warm_collector_reads_each_retained_version_once(tmp_path: Path):
    """Versions are immutable: the compactor's GC, run every pass over the whole
    retention window, fetches a version only the first time it sees it."""
    scene = _scene(f"memory://gc-cache-{time.time_ns()}", tmp_path)
    store = scene.app.store
    cache = VersionCache()
    settings = replace(scene.app.settings, retention=RETENTION, gc_grace=GRACE)
    first_gets = store.requests["get"]
    first = collect_garbage(store, "docs", settings, cache=cache, dry_run=True)
    assert store.requests["get"] - first_gets >= len(first.retained) > 1
    second_gets = store.requests["get"]
    second = collect_garbage(store, "docs", settings, cache=cache, dry_run=True)
    assert second.retained == first.retained
    assert store.requests["get"] == second_gets  # not one version fetched again
