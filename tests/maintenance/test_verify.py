"""Verify finds what is wrong with a collection's newest manifest; repair fixes what
the bucket still allows, so verify is clean again and no record is lost."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainy.core.config import CollectionSchema
from brainy.format.batch import Batch
from brainy.format.segment import BuiltSegment, build_segment
from brainy.maintenance.repair import repair
from brainy.maintenance.verify import (
    BAD_MASK,
    CORRUPT_BATCH,
    CORRUPT_SEGMENT,
    DUPLICATE_LIVE,
    LIVE_AFTER_DELETE,
    MISSING_SEGMENT,
    STATS_MISMATCH,
    verify,
)
from brainy.service.app import Brainy
from brainy.storage import ObjectStore
from brainy.table.manifest import Manifest, SegmentRef
from brainy.write.indexer import build_batch_segment, last_per_id
from brainy.write.quarantine import quarantine_key
from helpers import declare, live_state, make_app, model_of
from maintenance_helpers import ingest_batch


def _collection(url: str, tmp_path: Path) -> tuple[Brainy, list[str]]:
    """Five indexed batches over overlapping ids, with upserts and deletes."""
    app = make_app(url, tmp_path)
    declare(app)
    rng = np.random.default_rng(21)
    keys = [
        ingest_batch(app, rng, upserts=["a", "b", "c"]),
        ingest_batch(app, rng, upserts=["b", "d"]),
        ingest_batch(app, rng, upserts=["e"], deletes=["c"]),
        ingest_batch(app, rng, upserts=["a", "f", "g"]),
        ingest_batch(app, rng, upserts=["h"]),
    ]
    for key in keys:
        assert app.index_key(key).status == "applied"
    return app, keys


def _commit(app: Brainy, change: Callable[[Manifest], Manifest]) -> Manifest:
    """Commit a hand-made (bad) change, as a buggy writer would."""
    manifest, _ = app.manifests("docs").commit(
        change, schema=app.require_schema("docs").frozen(), committed_by="test-vandal"
    )
    return manifest


def _kinds(report) -> dict[str, str]:
    return {p.key: p.kind for p in report.problems}


@pytest.mark.parametrize("kind", ["memory", "file", "s3", "gcs"])
def test_verify_is_clean_on_a_healthy_collection(
    kind: str, store_url: Callable[[str], str], tmp_path: Path
):
    app, _ = _collection(store_url(kind), tmp_path)
    deep = verify(app.store, "docs")
    assert deep.ok, deep.problems
    assert (deep.version, deep.segments_checked, deep.batches_checked) == (5, 5, 5)
    shallow = verify(app.store, "docs", deep=False)
    assert shallow.ok and shallow.batches_checked == 0
    assert json.loads(json.dumps(deep.to_dict()))["ok"] is True
    assert verify(app.store, "nothing-here").ok


@pytest.mark.parametrize("kind", ["memory", "file", "s3", "gcs"])
def test_a_flipped_byte_and_a_deleted_segment_are_found_and_rebuilt(
    kind: str, store_url: Callable[[str], str], tmp_path: Path
):
    url = store_url(kind)
    app, keys = _collection(url, tmp_path)
    expected = model_of(app.store, keys)
    segments = app.manifests("docs").latest().segments
    flipped, deleted = segments[0].key, segments[3].key
    data = bytearray(app.store.get(flipped).data)
    data[-8] ^= 0x01  # in the index, past the header: only a deep check reads it
    app.store.put(flipped, bytes(data))
    app.store.delete(deleted)

    report = verify(app.store, "docs")
    assert _kinds(report) == {flipped: CORRUPT_SEGMENT, deleted: MISSING_SEGMENT}
    assert _kinds(verify(app.store, "docs", deep=False)) == {deleted: MISSING_SEGMENT}
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False

    fixed = repair(app.maintenance, "docs", report)
    assert fixed.ok, fixed.unrepaired
    # Every build has a fresh id: the rebuilt segments are swapped in by one commit.
    assert sorted(fixed.swapped) == sorted([segments[0].id, segments[3].id])
    assert fixed.version == 6
    assert verify(app.store, "docs").ok
    assert live_state(url, "docs") == expected


def test_an_id_live_twice_or_behind_its_tombstone_is_found_and_resolved(tmp_path: Path):
    url = f"memory://verify-twice-{time.time_ns()}"
    app, keys = _collection(url, tmp_path)
    expected = model_of(app.store, keys)
    # A buggy commit forgets every mask: "a" and "b" are live twice, and "c" is live
    # although its delete is newer.
    _commit(
        app,
        lambda m: replace(
            m, segments=tuple(replace(ref, deletes=None, masked=0) for ref in m.segments)
        ),
    )
    report = verify(app.store, "docs")
    found = {(p.kind, p.key) for p in report.problems}
    assert found == {(DUPLICATE_LIVE, "a"), (DUPLICATE_LIVE, "b"), (LIVE_AFTER_DELETE, "c")}

    fixed = repair(app.maintenance, "docs", report)
    assert fixed.ok and sorted(fixed.resolved) == ["a", "b", "c"]
    assert fixed.version == 7
    assert verify(app.store, "docs").ok
    assert live_state(url, "docs") == expected


def test_a_corrupt_applied_batch_is_quarantined(tmp_path: Path):
    url = f"memory://verify-batch-{time.time_ns()}"
    app, keys = _collection(url, tmp_path)
    data = bytearray(app.store.get(keys[1]).data)
    data[-1] ^= 0xFF
    app.store.put(keys[1], bytes(data))

    report = verify(app.store, "docs")
    assert _kinds(report) == {keys[1]: CORRUPT_BATCH}
    fixed = repair(app.maintenance, "docs", report)
    assert fixed.quarantined == [keys[1]]
    assert app.store.exists(quarantine_key(keys[1])) and not app.store.exists(keys[1])
    assert verify(app.store, "docs").ok


def test_a_segment_whose_batch_is_gone_is_reported_not_rebuildable(tmp_path: Path):
    url = f"memory://verify-gone-{time.time_ns()}"
    app, _ = _collection(url, tmp_path)
    ref = app.manifests("docs").latest().segments[1]
    app.store.delete(ref.source)
    app.store.delete(ref.key)

    fixed = repair(app.maintenance, "docs", verify(app.store, "docs"))
    assert not fixed.ok
    [left] = fixed.unrepaired
    assert (left["kind"], left["key"]) == (MISSING_SEGMENT, ref.key)
    assert "is gone" in left["reason"]
    assert _kinds(verify(app.store, "docs")) == {ref.key: MISSING_SEGMENT}


def test_a_compacted_segment_is_rebuilt_by_the_compactor_and_swapped_in(tmp_path: Path):
    url = f"memory://verify-compacted-{time.time_ns()}"
    app, keys = _collection(url, tmp_path)
    many = [f"x{i}" for i in range(80)]  # enough rows for the tree count to matter
    keys.append(ingest_batch(app, np.random.default_rng(22), upserts=many))
    app.index_key(keys[-1])
    expected = model_of(app.store, keys)
    # Stands for a segment the compactor wrote (level 1); its object then goes.
    manifest = _commit(
        app,
        lambda m: replace(m, segments=(*m.segments[:-1], replace(m.segments[-1], level=1))),
    )
    ref = manifest.segments[-1]
    app.store.delete(ref.key)
    report = verify(app.store, "docs")

    def cannot(store: ObjectStore, schema: CollectionSchema, ref: SegmentRef, workdir: Path):
        raise NotImplementedError("inputs are gone")

    refused = repair(app.maintenance, "docs", report, rebuild_compacted=cannot)
    assert [u["reason"] for u in refused.unrepaired] == ["compacted segment: inputs are gone"]

    def rebuild(
        store: ObjectStore, schema: CollectionSchema, ref: SegmentRef, workdir: Path
    ) -> BuiltSegment:
        # The same rows in the same order, indexed with fewer trees: another digest.
        batch = Batch.decode(store.get(ref.source).data)
        rows, _ = build_batch_segment(batch, last_per_id(batch))
        return build_segment(rows, metric="angular", n_trees=3, seed=0, workdir=workdir)

    fixed = repair(app.maintenance, "docs", report, rebuild_compacted=rebuild)
    assert fixed.ok and list(fixed.swapped) == [ref.id]
    swapped = app.manifests("docs").latest().segments[-1]
    assert swapped.id == fixed.swapped[ref.id] != ref.id
    assert (swapped.level, swapped.source, swapped.count) == (1, ref.source, ref.count)
    assert verify(app.store, "docs").ok
    assert live_state(url, "docs") == expected


def test_problems_only_an_operator_can_fix_are_reported_as_such(tmp_path: Path):
    url = f"memory://verify-operator-{time.time_ns()}"
    app, _ = _collection(url, tmp_path)
    manifest = _commit(
        app,
        # A deletion file that was never written.
        lambda m: replace(
            m,
            segments=(
                replace(m.segments[0], deletes="docs/deletes/nowhere.del", masked=1),
                *m.segments[1:],
            ),
        ),
    )
    manifests = app.manifests("docs")
    tampered = json.loads(app.store.get(manifests.key(manifest.version)).data)
    tampered["version"] += 1
    tampered["stats"]["live"] += 5
    app.store.put(manifests.key(manifest.version + 1), json.dumps(tampered).encode())

    report = verify(app.store, "docs")
    assert sorted(p.kind for p in report.problems) == [BAD_MASK, STATS_MISMATCH]
    fixed = repair(app.maintenance, "docs", report)
    assert sorted(u["kind"] for u in fixed.unrepaired) == [BAD_MASK, STATS_MISMATCH]


def test_a_sketch_the_ref_misplaces_is_found_and_rebuilt(tmp_path: Path):
    """A cold query reads a segment's sketch where its ref says: a deep verify
    reads it there too, and repair writes the segment (and its ref) anew."""
    url = f"memory://verify-sketch-{time.time_ns()}"
    app, keys = _collection(url, tmp_path)
    expected = model_of(app.store, keys)
    first = app.manifests("docs").latest().segments[0]
    assert first.sketch is not None
    offset, length, checksum = first.sketch.split(":")
    _commit(
        app,
        lambda m: replace(
            m,
            segments=(
                replace(m.segments[0], sketch=f"{int(offset) + 64}:{length}:{checksum}"),
                *m.segments[1:],
            ),
        ),
    )
    report = verify(app.store, "docs")
    assert _kinds(report) == {first.key: CORRUPT_SEGMENT}
    assert "sketch" in report.problems[0].detail
    assert verify(app.store, "docs", deep=False).ok
    fixed = repair(app.maintenance, "docs", report)
    assert fixed.ok, fixed.unrepaired
    assert verify(app.store, "docs").ok
    assert live_state(url, "docs") == expected
