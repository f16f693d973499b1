"""Helpers for the maintenance tests (sweeper, GC, verify): random batches, their
last-writer-wins model, a stand-in compaction, and search pinned to one version."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from brainy.app import Brainy
from brainy.batches import Batch
from brainy.config import CollectionSchema
from brainy.manifest import Manifest, SegmentRef
from brainy.search import SegmentCache, search_segment
from brainy.segments import SegmentRows, build_segment, load_segment, upload_segment
from brainy.storage import ObjectStore
from helpers import LWWModel, random_vectors

IDS = [f"id-{i}" for i in range(10)]


def ingest_batch(
    app: Brainy,
    rng: np.random.Generator,
    *,
    upserts: list[str] | None = None,
    deletes: list[str] | None = None,
    collection: str = "docs",
) -> str:
    """One batch of upserts (random vectors) and deletes; returns its key."""
    if upserts is None:
        free = [rid for rid in IDS if rid not in (deletes or [])]
        upserts = [str(rid) for rid in rng.choice(free, size=4, replace=False)]
    vectors = random_vectors(rng, len(upserts), 8)
    payload: dict[str, Any] = {"collection": collection}
    if upserts:
        payload["records"] = [
            {"id": rid, "vector": vectors[j].tolist(), "metadata": {"n": j}}
            for j, rid in enumerate(upserts)
        ]
    if deletes:
        payload["deletes"] = deletes
    return app.ingest(payload).batch


def model_of(store: ObjectStore, keys: list[str]) -> dict:
    """The live set last-writer-wins says the batches at `keys` leave."""
    model = LWWModel()
    for key in keys:
        model.apply_batch(Batch.decode(store.get(key).data, key))
    return model.live()


def compact_all(app: Brainy, collection: str = "docs") -> Manifest:
    """A stand-in for the compactor: every live row of the newest version merged
    into one level-1 segment, committed in place of all the others."""
    manifests = app.manifests(collection)
    base = manifests.latest()
    assert base is not None
    schema = app.require_schema(collection)
    cache = Path(tempfile.mkdtemp(prefix="brainy-compact-"))
    ids: list[str] = []
    stamps: list[int] = []
    writers: list[str] = []
    metadata: list[Any] = []
    vectors: list[np.ndarray] = []
    for ref in base.segments:
        seg = load_segment(app.store, ref.key, ref.id, cache)
        for row in sorted(set(range(ref.count)) - set(ref.deleted)):
            ids.append(seg.header.ids[row])
            stamps.append(int(seg.header.timestamps[row]))
            writers.append(seg.header.writers[row])
            metadata.append(seg.header.metadata[row])
            vectors.append(np.array(seg.vectors[row]))
    rows = SegmentRows(
        ids, np.asarray(stamps, dtype=np.int64), writers, metadata, np.stack(vectors)
    )
    built = build_segment(
        rows, metric=schema.metric, n_trees=schema.n_trees, seed=schema.seed, workdir=cache
    )
    key = upload_segment(app.store, collection, built)
    merged = SegmentRef(
        id=built.id,
        key=key,
        count=built.count,
        bytes=built.size,
        min_ts=built.min_ts,
        max_ts=built.max_ts,
        level=1,
        partition=0,
        inputs=tuple(ref.id for ref in base.segments),
        base_version=base.version,
    )

    def update(parent: Manifest) -> Manifest:
        assert parent.segments == base.segments, "the tests compact with nothing in flight"
        return replace(parent, segments=(merged,))

    manifest, _ = manifests.commit(update, schema=base.schema, committed_by="test-compactor")
    return manifest


def search_version(
    store: ObjectStore,
    manifest: Manifest,
    schema: CollectionSchema,
    query: np.ndarray,
    k: int = 5,
) -> list[tuple[str, float]]:
    """What a reader holding `manifest` answers: the search path's own segment cache
    (download, checksum, map) and per-segment search, on a cold cache."""
    cache = SegmentCache(store, Path(tempfile.mkdtemp(prefix="brainy-reader-")), 10**9, 2)
    try:
        refs = [ref for ref in manifest.segments if ref.live > 0]
        hits = [
            hit
            for seg, ref in zip(cache.get_many(refs), refs, strict=True)
            for hit in search_segment(seg, ref, schema, query, k, None)
        ]
    finally:
        cache.close()
    hits.sort(key=lambda h: (-h[0], h[1]))
    return [(rid, round(score, 5)) for score, rid, _ in hits[:k]]
