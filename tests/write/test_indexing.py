"""Batches → segments → manifest: last-writer-wins whatever the order and the
number of deliveries, and a corrupt batch quarantined once."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from brainy.core.config import SchemaFrozen
from brainy.format.batch import WriterClock
from brainy.storage import open_store
from brainy.table.manifest import Manifests
from helpers import declare, live_state, make_app, model_of, random_vectors


def _write_random_batches(apps, rng: np.random.Generator, n_batches: int, ids: list[str]):
    """Random upserts and deletes from several writers; returns the batch keys."""
    keys = []
    for b in range(n_batches):
        app = apps[b % len(apps)]
        chosen = rng.choice(ids, size=int(rng.integers(1, 8)), replace=False).tolist()
        deletes = [i for i in chosen if rng.random() < 0.3]
        upserts = [i for i in chosen if i not in deletes]
        vectors = random_vectors(rng, len(upserts), 8)
        records = [
            {"id": rid, "vector": vectors[j].tolist(), "metadata": {"batch": b}}
            for j, rid in enumerate(upserts)
        ]
        payload = {"collection": "docs", "records": records, "deletes": deletes}
        if not records:
            payload.pop("records")
        keys.append(app.ingest(payload).batch)
    return keys


def test_out_of_order_and_duplicated_delivery_converges_to_last_writer_wins(tmp_path: Path):
    """Three writers, overlapping ids, upserts and deletes; the batches indexed in
    several random orders with duplicates: every order ends in the LWW state."""
    rng = np.random.default_rng(7)
    source = f"memory://lww-src-{rng.integers(1 << 30)}"
    writers = [make_app(source, tmp_path, role="ingest") for _ in range(3)]
    declare(writers[0])
    ids = [f"id-{i}" for i in range(12)]
    keys = _write_random_batches(writers, rng, 24, ids)
    expected = model_of(open_store(source, read_only=True), keys)
    src_store = open_store(source)

    for trial in range(4):
        url = f"memory://lww-{trial}-{rng.integers(1 << 30)}"
        dst = open_store(url)
        for info in src_store.list(""):
            dst.put(info.key, src_store.get(info.key).data)
        indexer = make_app(url, tmp_path, role="indexer")
        order = keys[:]
        random.Random(trial).shuffle(order)
        for key in order:
            # A batch whose every record something newer already beat commits nothing.
            assert indexer.index_key(key).status in ("applied", "already-applied")
        version = Manifests(dst, "docs").latest().version
        assert 0 < version <= len(keys)
        for key in random.Random(100 + trial).sample(keys, 6):  # redeliveries
            assert indexer.index_key(key).status == "already-applied"
        assert live_state(url, "docs") == expected, f"order {trial} diverged"
        assert Manifests(dst, "docs").latest().version == version  # nothing committed


def test_delete_then_late_older_upsert_stays_deleted(tmp_path: Path):
    url = "memory://late-upsert"
    app = make_app(url, tmp_path)
    declare(app)
    v = [1.0] * 8
    old = app.ingest({"collection": "docs", "records": [{"id": "a", "vector": v}]}).batch
    delete = app.ingest({"collection": "docs", "deletes": ["a"]}).batch
    app.index_key(delete)  # the delete arrives first
    app.index_key(old)  # the older upsert arrives late
    assert "a" not in live_state(url, "docs")
    hits = app.search({"collection": "docs", "vector": v, "k": 5}).hits
    assert [h.id for h in hits] == []


def test_one_writers_successive_writes_apply_in_its_order(tmp_path: Path):
    """Writes made one after another by one client, within the same millisecond,
    indexed newest first: the newest still wins."""
    url = "memory://same-ms"
    app = make_app(url, tmp_path)
    declare(app)
    keys = [
        app.ingest(
            {
                "collection": "docs",
                "records": [{"id": "x", "vector": [float(i + 1)] * 8, "metadata": {"n": i}}],
            }
        ).batch
        for i in range(5)
    ]
    for key in reversed(keys):
        app.index_key(key)
    state = live_state(url, "docs")
    assert state["x"][1] == {"n": 4}


def test_writer_clock_is_strictly_increasing_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    clock = WriterClock()
    with ThreadPoolExecutor(8) as pool:
        chunks = list(pool.map(lambda _: clock.take(50), range(64)))
    stamps = np.concatenate(chunks)
    assert len(np.unique(stamps)) == len(stamps)
    assert all(np.all(np.diff(c) == 1) for c in chunks)


def test_last_record_for_an_id_inside_one_batch_wins(tmp_path: Path):
    url = "memory://in-batch"
    app = make_app(url, tmp_path)
    declare(app)
    key = app.ingest(
        {
            "collection": "docs",
            "records": [
                {"id": "d", "vector": [1.0] * 8, "metadata": {"v": 1}},
                {"id": "d", "vector": [2.0] * 8, "metadata": {"v": 2}},
            ],
        }
    ).batch
    app.index_key(key)
    state = live_state(url, "docs")
    assert state == {"d": ((2.0,) * 8, {"v": 2})}


def test_corrupt_batch_is_quarantined_once_and_acknowledged(tmp_path: Path):
    url = "memory://corrupt"
    app = make_app(url, tmp_path)
    declare(app)
    key = app.ingest({"collection": "docs", "records": [{"id": "a", "vector": [1.0] * 8}]}).batch
    store = open_store(url)
    data = bytearray(store.get(key).data)
    data[-1] ^= 0xFF
    store.put(key, bytes(data))
    result = app.index_key(key)
    assert result.status == "quarantined"
    assert "checksum" in result.detail
    assert not store.exists(key)
    assert store.exists(key.replace("docs/wal/", "docs/quarantine/wal/", 1))
    assert app.index_key(key).status == "missing"  # a redelivery is acknowledged
    assert Manifests(store, "docs").latest() is None


def test_events_outside_wal_and_unknown_collections_are_ignored(tmp_path: Path):
    app = make_app("memory://ignored", tmp_path)
    declare(app)
    assert app.index_key("docs/segments/x/segment.bin").status == "ignored"
    assert app.index_key("other/wal/2026/01/01/w/b.batch").status == "ignored"
    assert app.index_key("docs/wal/2026/01/01/w/gone.batch").status == "missing"


def test_frozen_schema_change_is_refused_once_data_exists(tmp_path: Path):
    url = "memory://frozen"
    app = make_app(url, tmp_path)
    declare(app)
    app.index_key(
        app.ingest({"collection": "docs", "records": [{"id": "a", "vector": [1.0] * 8}]}).batch
    )
    store = open_store(url)
    import json

    config = json.loads(store.get("_brainy/config.json").data)
    config["collections"]["docs"]["dimension"] = 16
    store.put("_brainy/config.json", json.dumps(config).encode())
    changed = make_app(url, tmp_path)
    with pytest.raises(SchemaFrozen, match=r"collections\.docs\.dimension: cannot change"):
        changed.search({"collection": "docs", "vector": [1.0] * 16, "k": 1})


def test_many_small_batches_each_searchable(tmp_path: Path):
    url = "memory://many"
    app = make_app(url, tmp_path)
    declare(app)
    rng = np.random.default_rng(3)
    vectors = random_vectors(rng, 40, 8)
    for chunk in (range(s, s + 5) for s in range(0, 40, 5)):
        key = app.ingest(
            {
                "collection": "docs",
                "records": [{"id": f"r{i}", "vector": vectors[i].tolist()} for i in chunk],
            }
        ).batch
        app.index_key(key)
    for i in range(0, 40, 7):
        hits = app.search({"collection": "docs", "vector": vectors[i].tolist(), "k": 1}).hits
        assert hits[0].id == f"r{i}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
