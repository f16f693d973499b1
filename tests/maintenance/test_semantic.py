"""Semantic partitioning in maintenance: the first compaction trains centroids and
routes every row to its nearest one; later compactions reuse them; the live set
stays last-writer-wins; repair, verify and GC know the centroids object."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainy.core.config import CollectionSchema, SchemaFrozen
from brainy.format.centroids import Centroids, read_centroids, write_centroids
from brainy.format.partitioning import auto_partitions, hash_partitions, nearest_centroids
from brainy.format.segment import load_segment, upload_segment
from brainy.maintenance.compaction import MIN_TRAINING_ROWS, compact, rebuild_compacted
from brainy.maintenance.gc import collect_garbage
from brainy.maintenance.verify import CORRUPT_CENTROIDS, MISSING_CENTROIDS, verify
from brainy.storage import open_store
from brainy.table.manifest import Manifests
from helpers import declare, live_state, make_app, model_of
from maintenance_helpers import collect_mid_build

DIM = 8
PARTITIONS = 6


def _clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = np.random.default_rng(99).standard_normal((PARTITIONS, DIM)) * 4
    return (centres[rng.integers(0, PARTITIONS, n)] + rng.standard_normal((n, DIM))).astype(
        np.float32
    )


def _ingest(app, rng, ids, *, deletes=()):
    vectors = _clustered(rng, len(ids))
    payload: dict = {"collection": "docs"}
    if ids:
        payload["records"] = [
            {"id": rid, "vector": vectors[i].tolist(), "metadata": {"id": rid}}
            for i, rid in enumerate(ids)
        ]
    if deletes:
        payload["deletes"] = list(deletes)
    key = app.ingest(payload).batch
    app.index_key(key)
    return key


def _setup(tmp_path: Path, name: str, metric: str = "angular"):
    url = f"memory://semantic-{name}"
    app = make_app(url, tmp_path, BRAINY_COMPACT_MIN_SEGMENTS="2", BRAINY_TOMBSTONE_GRACE="0")
    declare(app, dimension=DIM, metric=metric, partitions=PARTITIONS, strategy="semantic", seed=5)
    return url, app


def _batches(app, rng, count: int, size: int, prefix: str = "r") -> list[str]:
    return [
        _ingest(
            app,
            rng,
            [f"{prefix}{b}-{i}" for i in range(size)],
            deletes=[f"{prefix}{b - 1}-0"] if b else (),
        )
        for b in range(count)
    ]


def _compacted(tmp_path: Path, name: str, seed: int, metric: str = "angular"):
    """A semantic collection after four batches of 80 rows (each deleting a row of
    the one before) and its first compaction: (url, app, rng, batch keys)."""
    url, app = _setup(tmp_path, name, metric)
    rng = np.random.default_rng(seed)
    keys = _batches(app, rng, 4, 80)
    assert compact(app.maintenance, "docs").status == "compacted"
    return url, app, rng, keys


def _latest(url: str):
    return Manifests(open_store(url), "docs").latest()


def _assert_routed(
    store, manifest, metric: str, tmp_path: Path, partitions: int | None = PARTITIONS
) -> None:
    """Every segment is compacted, every row sits in the partition of its nearest
    centroid, and every tombstone in the partition of its id's hash."""
    centroids = read_centroids(store, manifest.centroids).matrix
    if partitions is not None:
        assert centroids.shape == (partitions, DIM)
    # Every row compacted (a delete committed after the merge's plan may wait).
    assert all(ref.level == 1 for ref in manifest.segments if ref.count)
    for ref in (ref for ref in manifest.segments if ref.level == 1):
        seg = load_segment(store, ref.key, ref.id, tmp_path / "check")
        if seg.count:
            routed = nearest_centroids(np.asarray(seg.vectors), centroids, metric)
            assert (routed == ref.partition).all()
        # Tombstones carry no vector: they go by the id's hash.
        dead = seg.header.tombstones.ids
        assert (hash_partitions(dead, len(centroids), 5) == ref.partition).all()


@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
def test_compaction_routes_every_row_to_its_nearest_centroid(tmp_path, metric):
    url, _, _, keys = _compacted(tmp_path, f"route-{metric}", 1, metric)
    store = open_store(url)
    manifest = _latest(url)
    assert manifest.centroids is not None
    _assert_routed(store, manifest, metric, tmp_path)
    assert len({ref.partition for ref in manifest.segments if ref.count}) > 1
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)


def test_centroids_stay_and_the_live_set_stays_last_writer_wins(tmp_path):
    url, app, rng, keys = _compacted(tmp_path, "lww", 2)
    first = _latest(url).centroids
    # Re-upserts, deletes of compacted rows, new ids; then a second compaction
    # merges them into the partitions by the same centroids.
    keys.append(_ingest(app, rng, ["r1-3", "r2-4", "new-1"], deletes=["r3-7", "r0-9"]))
    keys.append(_ingest(app, rng, [f"n-{i}" for i in range(40)], deletes=["new-1"]))
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)
    assert compact(app.maintenance, "docs", force=True).status == "compacted"
    manifest = _latest(url)
    assert manifest.centroids == first
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)
    assert verify(open_store(url), "docs").ok
    _assert_routed(open_store(url), manifest, "angular", tmp_path)


def test_the_first_compaction_waits_for_enough_rows_to_train_on(tmp_path):
    url, app = _setup(tmp_path, "wait")
    rng = np.random.default_rng(3)
    few = MIN_TRAINING_ROWS * PARTITIONS // 4
    keys = _batches(app, rng, 3, few // 3)
    report = compact(app.maintenance, "docs", force=True)
    assert report.inputs == 0  # at most the sweep's horizon was recorded
    manifest = _latest(url)
    assert manifest.centroids is None and all(ref.level == 0 for ref in manifest.segments)
    keys += _batches(app, rng, 4, MIN_TRAINING_ROWS * PARTITIONS // 4, prefix="m")
    assert compact(app.maintenance, "docs").status == "compacted"
    assert _latest(url).centroids is not None
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)


def test_repair_rebuilds_a_compacted_semantic_segment_row_for_row(tmp_path):
    from brainy.maintenance.repair import repair

    url, app, _, keys = _compacted(tmp_path, "rebuild", 4)
    store = open_store(url)
    # The first compaction's base version names no centroids: the rebuild must
    # route by the ones its lineage names.
    assert Manifests(store, "docs").load(_latest(url).segments[0].base_version).centroids is None
    schema = app.require_schema("docs")
    for ref in _latest(url).segments:
        original = load_segment(store, ref.key, ref.id, tmp_path / "orig")
        rebuilt = rebuild_compacted(store, schema, ref, tmp_path / "rb")
        copy = load_segment(
            store, upload_segment(store, "docs", rebuilt, "check"), rebuilt.id, tmp_path / "rb"
        )
        assert copy.header.ids == original.header.ids
        assert copy.header.tombstones.ids == original.header.tombstones.ids
        assert np.array_equal(np.asarray(copy.vectors), np.asarray(original.vectors))

    victim = max(_latest(url).segments, key=lambda r: r.count)
    expected = live_state(url, "docs")
    before = load_segment(store, victim.key, victim.id, tmp_path / "before")
    data = bytearray(store.get(victim.key).data)
    data[-5] ^= 0xFF
    store.put(victim.key, bytes(data))
    fixed = repair(app.maintenance, "docs", verify(store, "docs"))
    assert fixed.ok, fixed.unrepaired
    new = next(r for r in _latest(url).segments if r.id == fixed.swapped[victim.id])
    after = load_segment(store, new.key, new.id, tmp_path / "after")
    assert after.header.ids == before.header.ids
    assert np.array_equal(np.asarray(after.vectors), np.asarray(before.vectors))
    assert verify(store, "docs").ok
    assert live_state(url, "docs") == expected == model_of(open_store(url, read_only=True), keys)


def test_gc_keeps_the_centroids_and_collects_an_orphan(tmp_path):
    url, app, _, _ = _compacted(tmp_path, "gc", 5)
    store = open_store(url)
    key = _latest(url).centroids
    orphan = write_centroids(store, "docs", Centroids(np.ones((PARTITIONS, DIM), np.float32)))
    settings = replace(app.settings, retention=0.0, gc_grace=0.0, batch_retention=0.0)
    report = collect_garbage(store, "docs", settings, now=_latest(url).created + 10**6)
    assert orphan in report.side and key not in report.deleted
    assert store.exists(key) and not store.exists(orphan)
    assert verify(store, "docs").ok


def test_verify_reports_corrupt_and_missing_centroids(tmp_path):
    url, _, _, _ = _compacted(tmp_path, "verify", 6)
    store = open_store(url)
    key = _latest(url).centroids
    data = bytearray(store.get(key).data)
    data[-1] ^= 0x01
    store.put(key, bytes(data))
    report = verify(store, "docs")
    assert [(p.kind, p.key) for p in report.problems] == [(CORRUPT_CENTROIDS, key)]
    store.delete(key)
    report = verify(store, "docs")
    assert [(p.kind, p.key) for p in report.problems] == [(MISSING_CENTROIDS, key)]


def test_the_strategy_of_a_collection_with_data_cannot_change(tmp_path):
    import json

    url, app = _setup(tmp_path, "frozen")
    _ingest(app, np.random.default_rng(7), ["a", "b"])
    store = open_store(url)
    store.put("_brainy/config.json", json.dumps({"collections": {}}).encode())
    with pytest.raises(
        SchemaFrozen, match=r"docs\.strategy: cannot change from 'semantic' to 'hash'"
    ):
        app.create_collection(
            CollectionSchema("docs", dimension=DIM, partitions=PARTITIONS, seed=5)
        )
    # nprobe is a search tunable, not part of the frozen schema.
    app.create_collection(
        CollectionSchema(
            "docs", dimension=DIM, partitions=PARTITIONS, seed=5, strategy="semantic", nprobe=2
        )
    )


def test_a_first_compaction_that_outlasts_the_gc_grace_rewrites_its_centroids(tmp_path):
    import json
    import time

    grace = 0.5
    url = f"memory://semantic-slow-{time.time_ns()}"
    app = make_app(url, tmp_path, BRAINY_GC_GRACE=str(grace), BRAINY_TOMBSTONE_GRACE="0")
    declare(app, dimension=DIM, partitions=PARTITIONS, strategy="semantic", seed=5)
    keys = _batches(app, np.random.default_rng(8), 4, 80)
    deleted: list[str] = []
    gc_while_building = collect_mid_build(app, grace, deleted)
    report = compact(app.maintenance, "docs", force=True, before_commit=gc_while_building)
    assert report.status == "compacted"
    manifest = _latest(url)
    assert any("/meta/centroids/" in key for key in deleted)
    assert manifest.centroids not in deleted and app.store.exists(manifest.centroids)
    for ref in manifest.segments:
        assert json.loads(app.store.get(ref.lineage).data)["centroids"] == manifest.centroids
    assert verify(app.store, "docs").ok
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)


def test_an_auto_collection_that_outgrew_its_centroids_is_retrained(tmp_path):
    """`partitions: "auto"` is sized at the first compaction; once the collection
    has grown to call for twice as many partitions, the next compaction trains new
    centroids and routes every row afresh: the live set stays last-writer-wins
    (including a delete committed while the retrain was building), every row sits
    in the partition of its nearest new centroid, verify and repair agree."""
    url = "memory://semantic-retrain"
    app = make_app(url, tmp_path, BRAINY_COMPACT_MIN_SEGMENTS="2", BRAINY_TOMBSTONE_GRACE="0")
    declare(app, dimension=DIM, partitions="auto", strategy="semantic", seed=5)
    rng = np.random.default_rng(8)
    keys = _batches(app, rng, 4, 1100)
    assert compact(app.maintenance, "docs", force=True).status == "compacted"
    store = open_store(url)
    first = _latest(url)
    assert len(read_centroids(store, first.centroids)) == auto_partitions(first.live) == 2
    # Grow to about three times the rows: auto now asks for 6 partitions.
    keys += _batches(app, rng, 8, 1000, prefix="g")
    assert auto_partitions(_latest(url).live) >= 2 * 2

    def late_delete() -> None:
        keys.append(_ingest(app, rng, [], deletes=["r2-5", "g3-7"]))

    report = compact(app.maintenance, "docs", before_commit=late_delete)
    assert report.status == "compacted"
    manifest = _latest(url)
    assert manifest.centroids != first.centroids
    centroids = read_centroids(store, manifest.centroids)
    assert len(centroids) == auto_partitions(manifest.live)
    _assert_routed(store, manifest, "angular", tmp_path, None)
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)
    assert "r2-5" not in live_state(url, "docs")
    assert verify(store, "docs").ok
    schema = app.require_schema("docs")
    victim = max(manifest.segments, key=lambda r: r.count)
    rebuilt = rebuild_compacted(store, schema, victim, tmp_path / "rb")
    assert rebuilt.count == victim.count
    # Settled: the next compaction keeps the new centroids.
    keys.append(_ingest(app, rng, ["late-1"]))
    assert compact(app.maintenance, "docs", force=True).status == "compacted"
    assert _latest(url).centroids == manifest.centroids
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)
