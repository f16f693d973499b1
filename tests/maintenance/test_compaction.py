"""Compaction: merges keep the live set exact, drop masked rows and old tombstones,
survive commits landing mid-merge, and stand down for a newer lease holder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainy.format.partitioning import hash_partition
from brainy.maintenance.compaction import compact, lease_resource, rebuild_compacted
from brainy.maintenance.leases import LeaseManager
from brainy.storage import open_store
from brainy.table.manifest import Manifests
from helpers import declare, live_state, make_app, model_of, random_vectors


def _ingest(app, rng, ids, *, deletes=(), meta=None):
    vectors = random_vectors(rng, len(ids), 8)
    payload = {
        "collection": "docs",
        "records": [
            {"id": rid, "vector": vectors[i].tolist(), "metadata": meta or {"id": rid}}
            for i, rid in enumerate(ids)
        ],
    }
    if deletes:
        payload["deletes"] = list(deletes)
    if not ids:
        payload.pop("records")
    key = app.ingest(payload).batch
    app.index_key(key)
    return key


def _setup(tmp_path: Path, name: str, **settings: str):
    url = f"memory://compact-{name}"
    env = {"BRAINY_COMPACT_MIN_SEGMENTS": "2", "BRAINY_TOMBSTONE_GRACE": "0", **settings}
    app = make_app(url, tmp_path, **env)
    declare(app, partitions=4, seed=7)
    return url, app


def test_compaction_merges_level0_into_partitions_and_keeps_the_live_set(tmp_path):
    url, app = _setup(tmp_path, "basic")
    rng = np.random.default_rng(1)
    keys = [_ingest(app, rng, [f"r{i}" for i in range(b * 10, b * 10 + 10)]) for b in range(5)]
    keys.append(_ingest(app, rng, ["r3", "r14"], deletes=["r5", "r27"]))
    before = live_state(url, "docs")
    assert before == model_of(open_store(url, read_only=True), keys)

    report = compact(app.maintenance, "docs")
    assert report.status == "compacted"
    assert report.masked_dropped == 4  # r3, r14 (old copies), r5, r27

    manifest = Manifests(open_store(url), "docs").latest()
    assert all(ref.level == 1 for ref in manifest.segments)
    assert {ref.partition for ref in manifest.segments} <= {0, 1, 2, 3}
    assert manifest.masked == 0
    assert manifest.stats()["tombstones"] == 0  # grace 0: every delete was swept and applied
    for ref in manifest.segments:
        header_ids = live_state_ids(url, ref)
        assert all(hash_partition(rid, 4, 7) == ref.partition for rid in header_ids)
    assert live_state(url, "docs") == before
    hits = app.search({"collection": "docs", "vector": list(before["r3"][0]), "k": 1}).hits
    assert hits[0].id == "r3"


def live_state_ids(url, ref):
    from brainy.format.segment import read_segment_header

    return read_segment_header(open_store(url, read_only=True), ref.key).ids


def test_commits_landing_during_the_merge_are_not_lost(tmp_path):
    """A delete and an upsert of rows being merged commit while the merge is built:
    the compaction rebases onto them, and nothing deleted comes back."""
    url, app = _setup(tmp_path, "rebase")
    rng = np.random.default_rng(2)
    keys = [_ingest(app, rng, [f"r{i}" for i in range(b * 10, b * 10 + 10)]) for b in range(3)]
    writer = make_app(url, tmp_path)

    def land_commits():
        keys.append(_ingest(writer, rng, [], deletes=["r1", "r12"]))
        keys.append(_ingest(writer, rng, ["r25"], meta={"v": "new"}))

    report = compact(app.maintenance, "docs", before_commit=land_commits)
    assert report.status == "compacted"
    state = live_state(url, "docs")
    assert "r1" not in state and "r12" not in state
    assert state["r25"][1] == {"v": "new"}
    assert state == model_of(open_store(url, read_only=True), keys)


def test_segment_count_stays_bounded_as_the_collection_grows(tmp_path):
    url, app = _setup(tmp_path, "bounded", BRAINY_MAX_SEGMENTS_PER_PARTITION="2")
    rng = np.random.default_rng(3)
    keys = []
    for b in range(30):
        keys.append(_ingest(app, rng, [f"r{b}-{i}" for i in range(6)]))
        compact(app.maintenance, "docs", sweep_first=False)
        manifest = Manifests(open_store(url), "docs").latest()
        level0 = sum(1 for s in manifest.segments if s.level == 0)
        assert level0 < 2  # compact_min_segments
        for p in range(4):
            assert sum(1 for s in manifest.segments if s.partition == p and s.level) <= 2
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)


def test_second_compactor_finds_the_lease_busy(tmp_path):
    url, app = _setup(tmp_path, "busy")
    rng = np.random.default_rng(4)
    for b in range(3):
        _ingest(app, rng, [f"r{b}-{i}" for i in range(5)])
    other = LeaseManager(open_store(url), "someone-else", ttl=600)
    held = other.acquire(lease_resource("docs"))
    assert held is not None
    assert compact(app.maintenance, "docs").status == "busy"
    other.release(held)
    assert compact(app.maintenance, "docs").status == "compacted"


def test_stale_lease_holder_commit_is_refused(tmp_path):
    """The first compactor stalls past its lease; a second takes over and commits;
    the first's commit is refused by the fencing token, and nothing is merged twice."""
    url, app = _setup(tmp_path, "fencing")
    rng = np.random.default_rng(5)
    keys = [_ingest(app, rng, [f"r{b}-{i}" for i in range(5)]) for b in range(3)]
    now = [1_000_000.0]
    stale = LeaseManager(open_store(url), "stale", ttl=10, clock=lambda: now[0], max_skew=1)
    fresh = LeaseManager(open_store(url), "fresh", ttl=10, clock=lambda: now[0], max_skew=1)
    second = make_app(url, tmp_path, BRAINY_COMPACT_MIN_SEGMENTS="2")
    outcome = {}

    def stall_then_lose():
        now[0] += 60  # the stale holder's lease expires while it works
        keys.append(_ingest(app, rng, ["late"]))
        _ingest(app, rng, ["late2"])
        outcome["second"] = compact(second.maintenance, "docs", leases=fresh, force=True)

    first = compact(
        app.maintenance, "docs", leases=stale, before_commit=stall_then_lose, force=True
    )
    assert outcome["second"].status == "compacted"
    assert outcome["second"].lease_token > first.lease_token
    assert first.status == "lost-lease"
    manifest = Manifests(open_store(url), "docs").latest()
    assert manifest.lease_token == outcome["second"].lease_token
    assert manifest.version == outcome["second"].version
    state = live_state(url, "docs")
    assert {"late", "late2"} <= set(state)
    assert len(state) == 17


def test_a_corrupt_compacted_segment_is_rebuilt_row_for_row_by_repair(tmp_path):
    from brainy.maintenance.repair import repair
    from brainy.maintenance.verify import verify

    url, app = _setup(tmp_path, "rebuild")
    rng = np.random.default_rng(6)
    keys = [
        _ingest(app, rng, [f"r{b}-{i}" for i in range(8)], deletes=[f"r{b - 1}-0"] if b else ())
        for b in range(3)
    ]
    compact(app.maintenance, "docs")
    keys.append(_ingest(app, rng, [], deletes=["r2-3"]))  # a mask on a compacted segment
    expected = live_state(url, "docs")
    store = open_store(url)
    victim = next(
        ref
        for ref in Manifests(store, "docs").latest().segments
        if "r2-3" in live_state_ids(url, ref)
    )
    data = bytearray(store.get(victim.key).data)
    data[-5] ^= 0xFF
    store.put(victim.key, bytes(data))

    report = verify(store, "docs")
    assert not report.ok
    fixed = repair(app.maintenance, "docs", report)
    assert fixed.ok, fixed.unrepaired
    assert victim.id in fixed.swapped
    assert verify(store, "docs").ok
    assert live_state(url, "docs") == expected == model_of(open_store(url, read_only=True), keys)
    rebuilt = rebuild_compacted(store, app.require_schema("docs"), victim, tmp_path / "rb")
    assert rebuilt.count == victim.count


@pytest.mark.parametrize("kind", ["file", "s3", "gcs"])
def test_compaction_on_real_backends(kind, store_url, tmp_path):
    url = store_url(kind)
    app = make_app(url, tmp_path, BRAINY_COMPACT_MIN_SEGMENTS="2", BRAINY_TOMBSTONE_GRACE="0")
    declare(app, partitions=2)
    rng = np.random.default_rng(8)
    keys = [_ingest(app, rng, [f"r{b}-{i}" for i in range(5)]) for b in range(3)]
    keys.append(_ingest(app, rng, [], deletes=["r0-0"]))
    assert compact(app.maintenance, "docs").status == "compacted"
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)


def test_two_compactors_never_both_commit_a_merge_of_the_same_segments(tmp_path):
    """Even with the leases out of the picture (each compactor's lock lives in a store
    of its own), the second merge of the same segments is refused by the commit."""
    url, app = _setup(tmp_path, "double")
    rng = np.random.default_rng(10)
    keys = [_ingest(app, rng, [f"r{b}-{i}" for i in range(5)]) for b in range(3)]
    other = make_app(url, tmp_path, BRAINY_COMPACT_MIN_SEGMENTS="2")
    # One instant on both clocks: equal fencing tokens, so only the commit can tell.
    lonely = [
        LeaseManager(open_store(f"memory://locks-{i}-{id(tmp_path)}"), f"c{i}", clock=lambda: 1e6)
        for i in (1, 2)
    ]
    outcome = {}

    def the_other_merges_first():
        outcome["other"] = compact(other.maintenance, "docs", leases=lonely[1], sweep_first=False)

    mine = compact(
        app.maintenance,
        "docs",
        leases=lonely[0],
        sweep_first=False,
        before_commit=the_other_merges_first,
    )
    assert outcome["other"].status == "compacted"
    assert mine.status == "conflict"
    manifest = Manifests(open_store(url), "docs").latest()
    assert manifest.version == outcome["other"].version
    assert live_state(url, "docs") == model_of(open_store(url, read_only=True), keys)
