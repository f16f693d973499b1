"""Helpers for the maintenance tests (sweeper, GC, verify): random batches, their
last-writer-wins model, a stand-in compaction, and search pinned to one version."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.maintenance.gc import collect_garbage
from brainy.read.search import SegmentCache, search_segment
from brainy.service.app import Brainy
from brainy.storage import ObjectStore
from brainy.table.deletions import Masks
from brainy.table.manifest import Manifest
from helpers import random_vectors

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


def search_version(
    store: ObjectStore,
    manifest: Manifest,
    schema: CollectionSchema,
    query: np.ndarray,
    k: int = 5,
) -> list[tuple[str, float]]:
    """What a reader holding `manifest` answers: the search path's own segment cache
    (download, checksum, map) and per-segment search, on a cold cache."""
    folder = Path(tempfile.mkdtemp(prefix="brainy-reader-"))
    cache = SegmentCache(store, folder, 10**9, 2)
    masks = Masks(store)
    try:
        refs = [ref for ref in manifest.segments if ref.live > 0]
        hits = [
            hit
            for seg, ref in zip(cache.get_many(refs), refs, strict=True)
            for hit in search_segment(seg, masks.blocked(ref), schema, query, k, None)
        ]
    finally:
        cache.close()
        shutil.rmtree(folder, ignore_errors=True)
    hits.sort(key=lambda h: (-h[0], h[1]))
    return [(rid, round(score, 5)) for score, rid, _ in hits[:k]]


def collect_mid_build(app: Brainy, grace: float, deleted: list[str]) -> Callable[[], None]:
    """A compaction's `before_commit` hook: once its uploads are older than half the
    GC grace, a collector sees them unreferenced and old, and deletes them (their
    keys go to `deleted`)."""

    def collect() -> None:
        time.sleep(grace / 2 + 0.1)
        settings = replace(app.settings, retention=0.0, gc_grace=grace)
        report = collect_garbage(app.store, "docs", settings, now=time.time() + 10 * grace)
        deleted.extend(report.deleted)

    return collect
