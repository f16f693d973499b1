"""The rows a merge writes: exactly the rows of its inputs live at the base, in
manifest order then row order, with the tombstones the floor keeps — whatever the
chunk size, and whether level-0 rows are split by partition first (several
outputs) or read straight from their segments (one output, as repair does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainy.format import segment as seg
from brainy.format.partitioning import hash_partition
from brainy.format.segment import load_segment, upload_segment
from brainy.maintenance.compaction import OutputPlan, Plan, _gather, _Inputs, plan_compaction
from brainy.storage import open_store
from brainy.table.deletions import Masks
from brainy.table.manifest import Manifests
from helpers import declare, make_app, random_vectors

PARTITIONS = 3


def _ingest(app, rng, ids, deletes=()):
    vectors = random_vectors(rng, len(ids), 8)
    payload = {"collection": "docs"}
    if ids:
        payload["records"] = [
            {"id": rid, "vector": vectors[i].tolist(), "metadata": {"id": rid, "i": i}}
            for i, rid in enumerate(ids)
        ]
    if deletes:
        payload["deletes"] = list(deletes)
    app.index_key(app.ingest(payload).batch)


@pytest.fixture
def collection(tmp_path):
    """Level-1 segments (one compaction), then level-0 batches that mask rows of
    them and of each other, delete ids (tombstones) and re-upsert some."""
    from brainy.maintenance.compaction import compact

    url = f"memory://merge-{id(tmp_path)}"
    app = make_app(url, tmp_path, BRAINY_COMPACT_MIN_SEGMENTS="2", BRAINY_TOMBSTONE_GRACE="1d")
    declare(app, partitions=PARTITIONS, seed=5)
    rng = np.random.default_rng(3)
    for b in range(4):
        _ingest(app, rng, [f"a{b}-{i}" for i in range(12)], deletes=[f"a{b - 1}-{b}"] if b else ())
    assert compact(app.maintenance, "docs", force=True).status == "compacted"
    for b in range(5):
        _ingest(
            app,
            rng,
            [f"b{b}-{i}" for i in range(15)] + [f"a{b}-{i}" for i in range(3, 6)],
            deletes=[f"a{b}-7", f"b{b - 1}-2"] if b else ["a0-8"],
        )
    return url, app


def _expected(store, plan: Plan, out: OutputPlan, tmp_path: Path):
    """The merge, row by row, straight from its definition."""
    masks = Masks(store)
    position = {ref.id: i for i, ref in enumerate(plan.base.segments)}
    feeds = sorted(
        {r.id: r for r in (*plan.level0, *out.inputs)}.values(), key=lambda r: position[r.id]
    )
    rows, vectors, dead = [], [], []
    for ref in feeds:
        loaded = load_segment(store, ref.key, ref.id, tmp_path / "expected")
        h = loaded.header
        masked = set(masks.rows(ref).tolist())

        def mine(rid, ref=ref):
            return ref.level > 0 or hash_partition(rid, PARTITIONS, 5) == out.partition

        for r, rid in enumerate(h.ids):
            if r not in masked and mine(rid):
                rows.append((rid, int(h.timestamps[r]), h.writers[r], h.metadata[r]))
                vectors.append(np.asarray(loaded.vectors[r]))
        t = h.tombstones
        for rid, ts, w in zip(t.ids, t.timestamps.tolist(), t.writers, strict=True):
            if ts >= plan.floor and mine(rid):
                dead.append((rid, ts, w))
    return rows, np.array(vectors).reshape(-1, 8), dead


def _written(store, built, tmp_path: Path):
    loaded = load_segment(store, upload_segment(store, "docs", built), built.id, tmp_path / "out")
    h = loaded.header
    rows = list(zip(h.ids, h.timestamps.tolist(), h.writers, h.metadata, strict=True))
    t = h.tombstones
    dead = list(zip(t.ids, t.timestamps.tolist(), t.writers, strict=True))
    return rows, np.asarray(loaded.vectors), dead


@pytest.mark.parametrize("chunk_bytes", [seg.CHUNK_BYTES, 200])
def test_a_merge_writes_exactly_the_live_rows_in_order(
    collection, tmp_path, monkeypatch, chunk_bytes
):
    url, app = collection
    monkeypatch.setattr(seg, "CHUNK_BYTES", chunk_bytes)
    store = open_store(url)
    schema = app.require_schema("docs")
    manifest = Manifests(store, "docs").latest()
    tombstone_ts = sorted(
        ts
        for ref in manifest.segments
        for ts in app.maintenance.headers.get(ref).tombstones.timestamps
    )
    floor = tombstone_ts[len(tombstone_ts) // 2]  # half the tombstones go
    plan = plan_compaction(manifest, schema, app.settings, force=True, floor=floor)
    assert len(plan.outputs) == PARTITIONS and any(out.inputs for out in plan.outputs)
    assert plan.level0 and any(ref.masked for ref in plan.inputs)

    # Several outputs: level-0 rows split by partition first.
    staged = _Inputs(store, schema, tmp_path / "staged")
    staged.stage(plan.level0, Masks(store), plan.floor)
    for out in plan.outputs:
        # One output at a time, every input read from its segment (repair's way).
        direct = _Inputs(store, schema, tmp_path / f"direct-{out.partition}")
        one = Plan(plan.base, plan.level0, (out,), plan.floor)
        results = [
            _gather(plan, out, staged, Masks(store), tmp_path / "build"),
            _gather(one, out, direct, Masks(store), tmp_path / "build"),
        ]
        direct.close()
        rows, vectors, dead = _expected(store, plan, out, tmp_path)
        assert rows and dead
        for result in results:
            got_rows, got_vectors, got_dead = _written(store, result.built, tmp_path)
            assert got_rows == rows
            assert (got_vectors == vectors).all()
            assert got_dead == dead
            assert result.tombstones_in >= len(dead)
            # Each input row maps to its row in the output, or -1.
            for sid, row_of in result.row_of.items():
                ref = next(r for r in plan.inputs if r.id == sid)
                taken = row_of[np.arange(ref.count)]
                kept = taken[taken >= 0]
                assert (np.diff(kept) > 0).all()
                for r in np.flatnonzero(taken >= 0).tolist():
                    header = app.maintenance.headers.get(ref)
                    assert got_rows[taken[r]][0] == header.ids[r]
        staged.done(out)
    staged.close()
