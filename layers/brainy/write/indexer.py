"""Batch → segment → commit: what the indexer does for each created batch object.

Upserts and deletes resolve last-writer-wins by (timestamp, writer) (`table.lww`):
each id ends up with the record that has the greatest pair among all applied
batches, whatever order they were indexed in. A batch becomes one level-0
segment holding its winning upserts as rows and its deletes as tombstones; older
copies of its ids are masked through the deletion files of their segments.

Indexing is idempotent without a record of applied batches: a redelivered batch
finds each of its records already applied (or superseded) and commits nothing.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.format.batch import UPSERT, Batch, CorruptBatch, collection_of_batch
from brainy.format.segment import (
    BuiltSegment,
    SegmentHeader,
    SegmentRows,
    Tombstones,
    build_collection_segment,
    upload_segment,
)
from brainy.storage import NotFound, ObjectStore
from brainy.table.deletions import Masks
from brainy.table.headers import HeaderCache
from brainy.table.lww import TOMBSTONE, Change, LiveIndex, resolve
from brainy.table.manifest import Manifest, Manifests, SegmentRef, StaleUpload, empty_manifest
from brainy.write.quarantine import quarantine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexResult:
    """What happened to one batch object.

    `already-applied`: committing it would change nothing (every record is
    already applied, or superseded by a newer one).
    """

    key: str
    status: str  # applied | already-applied | ignored | missing | quarantined
    version: int | None = None
    detail: str = ""


def last_per_id(batch: Batch) -> list[int]:
    """Indices of the records that win inside one batch: the last one for each id
    (timestamps increase through a batch, so the last is the newest)."""
    last = dict(zip(batch.ids, range(len(batch.ids)), strict=True))
    if len(last) == len(batch.ids):  # the usual case: every id once
        return list(range(len(batch.ids)))
    return sorted(last.values())


def build_batch_segment(batch: Batch, winners: list[int]) -> tuple[SegmentRows, list[int]]:
    """The rows (winning upserts) and tombstones (winning deletes) of the segment
    for `batch`, and each winner's row in it (`TOMBSTONE` for a delete)."""
    picked = np.asarray(winners, dtype=np.int64)
    upsert = np.asarray(batch.ops, dtype="<U1") == UPSERT
    is_upsert = upsert[picked]
    ups, dels = picked[is_upsert], picked[~is_upsert]
    rows = np.full(picked.size, TOMBSTONE, dtype=np.int64)
    rows[is_upsert] = np.arange(ups.size)
    vector_rows = (np.cumsum(upsert) - 1)[ups]
    seg_rows = SegmentRows(
        ids=[batch.ids[i] for i in ups.tolist()],
        timestamps=batch.timestamps[ups],
        writers=[batch.writer] * int(ups.size),
        metadata=[batch.metadata[i] for i in ups.tolist()],
        # Usually every upsert wins: then the batch's vectors are the rows, uncopied.
        vectors=batch.vectors
        if vector_rows.size == len(batch.vectors)
        else batch.vectors[vector_rows],
        tombstones=Tombstones(
            ids=[batch.ids[i] for i in dels.tolist()],
            timestamps=batch.timestamps[dels],
            writers=[batch.writer] * int(dels.size),
        ),
    )
    return seg_rows, rows.tolist()


def header_of(built_rows: SegmentRows, schema: CollectionSchema) -> SegmentHeader:
    """The header a segment built from `built_rows` has (kept instead of re-read)."""
    return SegmentHeader(
        dimension=schema.dimension,
        metric=schema.metric,
        count=len(built_rows),
        ids=list(built_rows.ids),
        timestamps=built_rows.timestamps,
        writers=list(built_rows.writers),
        metadata=list(built_rows.metadata),
        tombstones=built_rows.tombstones,
    )


class Indexer:
    """Turns batch objects into committed segments for every collection of a store."""

    def __init__(
        self,
        store: ObjectStore,
        schema_of: Callable[[str], CollectionSchema | None],
        committed_by: str,
        workdir: Path | None = None,
        manifests_of: Callable[[str], Manifests] | None = None,
    ) -> None:
        self.store = store
        self.schema_of = schema_of
        self.committed_by = committed_by
        self.manifests_of = manifests_of or (lambda name: Manifests(store, name))
        self.headers = HeaderCache(store, keep_metadata=False)
        self.masks = Masks(store)
        self.workdir = workdir or Path(tempfile.gettempdir()) / "brainy-indexer"
        self._manifests: dict[str, Manifest | None] = {}
        self._live: dict[str, LiveIndex] = {}

    def live_index(self, collection: str) -> LiveIndex:
        index = self._live.get(collection)
        if index is None:
            index = self._live.setdefault(collection, LiveIndex(self.headers))
        return index

    def held(self) -> dict[str, Manifest]:
        """The newest manifest this indexer committed or read, by collection."""
        return {name: m for name, m in self._manifests.items() if m is not None}

    def index(self, key: str) -> IndexResult:
        """Apply the batch at `key`; safe to call any number of times, in any order."""
        collection = collection_of_batch(key)
        if collection is None:
            return IndexResult(key, "ignored", detail="not a batch object")
        schema = self.schema_of(collection)
        if schema is None:
            return IndexResult(key, "ignored", detail=f"unknown collection {collection!r}")
        manifests = self.manifests_of(collection)
        known = manifests.latest(self._manifests.get(collection))
        try:
            data = self.store.get(key).data
        except NotFound:
            return IndexResult(key, "missing", detail="batch object not found")
        try:
            batch = Batch.decode(data, key)
            if batch.collection != collection:
                raise CorruptBatch(f"{key}: batch says collection {batch.collection!r}")
            if batch.upserts and batch.vectors.shape[1] != schema.dimension:
                raise CorruptBatch(
                    f"{key}: vectors have dimension {batch.vectors.shape[1]}, "
                    f"collection has {schema.dimension}"
                )
        except CorruptBatch as e:
            quarantine(self.store, key, str(e))
            return IndexResult(key, "quarantined", detail=str(e))
        manifest, committed = self.apply(schema, key, batch, known)
        self._manifests[collection] = manifest
        # Another indexer may have committed the same batch while this one built it.
        return IndexResult(key, "applied" if committed else "already-applied", manifest.version)

    def apply(
        self, schema: CollectionSchema, key: str, batch: Batch, known: Manifest | None
    ) -> tuple[Manifest, bool]:
        """Build the batch's segment, upload it, then commit it by manifest CAS.

        Returns:
            The manifest now current, and whether this call committed the batch
            (False when it changes nothing: applied before, or superseded).
        """
        manifests = self.manifests_of(schema.name)
        base = known or empty_manifest(schema.name, schema.frozen())
        winners = last_per_id(batch)
        seg_rows, rows = build_batch_segment(batch, winners)
        every = len(winners) == len(batch.ids)
        change = Change(
            ids=batch.ids if every else [batch.ids[i] for i in winners],
            orders=list(zip(batch.timestamps[winners].tolist(), repeat(batch.writer))),
            rows=rows,
        )
        live_index = self.live_index(schema.name)
        with live_index.lock:
            if resolve(live_index.at(base), change, base.floor).wins == 0:
                # A redelivery: nothing to build.
                return base, False
        built = build_collection_segment(schema, seg_rows, self.workdir)
        try:
            uploaded_at = time.time()
            new_ref = SegmentRef.uploaded(
                built, upload_segment(self.store, schema.name, built), source=key
            )
            self.headers.put(built.id, header_of(seg_rows, schema))

            def update(parent: Manifest) -> Manifest | None:
                schema_check(schema, parent)
                with live_index.lock:
                    res = resolve(live_index.at(parent), change, parent.floor)
                if res.wins == 0:
                    return None
                segments = [
                    self.masks.mask(schema.name, ref, res.masks[ref.id])
                    if ref.id in res.masks
                    else ref
                    for ref in parent.segments
                ]
                segments.append(self.masks.mask(schema.name, new_ref, res.losing))
                return replace(parent, schema=schema.frozen(), segments=tuple(segments))

            while True:
                try:
                    return manifests.commit(
                        update,
                        schema=schema.frozen(),
                        committed_by=self.committed_by,
                        base=known,
                        uploaded_at=uploaded_at,
                    )
                except StaleUpload:
                    uploaded_at, new_ref = reupload(self.store, schema.name, built, new_ref)
        finally:
            built.path.unlink(missing_ok=True)


def reupload(
    store: ObjectStore, collection: str, built: BuiltSegment, ref: SegmentRef
) -> tuple[float, SegmentRef]:
    """Upload `built` again under a fresh key, for a commit whose first upload fell
    older than half the GC grace; returns the new upload time and ref."""
    uploaded_at = time.time()
    key = upload_segment(store, collection, built, copy=uuid.uuid4().hex[:12])
    log.info(
        "%s: re-uploaded segment %s as %s (older than half the GC grace)", collection, ref.id, key
    )
    return uploaded_at, replace(ref, key=key)


def schema_check(schema: CollectionSchema, manifest: Manifest) -> None:
    """Refuse to touch data written with a different frozen schema."""
    if manifest.version > 0:
        schema.check_compatible(manifest.schema)
