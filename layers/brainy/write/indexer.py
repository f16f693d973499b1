"""Batch → segment → commit: what the indexer does for each created batch object.

Upserts and deletes resolve last-writer-wins by (timestamp, writer): each id ends
up with the record that has the greatest pair among all applied batches, whatever
order they were indexed in. An older copy is masked in the manifest; a delete
leaves a tombstone so that an older upsert arriving later stays masked.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.format.batch import UPSERT, Batch, CorruptBatch, collection_of_batch
from brainy.format.segment import (
    SegmentHeader,
    SegmentRows,
    build_segment,
    read_segment_header,
    upload_segment,
)
from brainy.storage import NotFound, ObjectStore
from brainy.table.manifest import Manifest, Manifests, SegmentRef
from brainy.write.quarantine import quarantine

log = logging.getLogger(__name__)

Order = tuple[int, str]  # (timestamp, writer): the last-writer-wins order


@dataclass(frozen=True)
class IndexResult:
    """What happened to one batch object."""

    key: str
    status: str  # applied | already-applied | ignored | missing | quarantined
    version: int | None = None
    detail: str = ""


class HeaderCache:
    """Segment headers (ids, timestamps, writers) by segment id. Segments are
    immutable, so an entry never goes stale; only a ranged GET fills a miss."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._headers: dict[str, SegmentHeader] = {}
        self._lock = threading.Lock()

    def put(self, segment_id: str, header: SegmentHeader) -> None:
        with self._lock:
            self._headers[segment_id] = header

    def get(self, ref: SegmentRef) -> SegmentHeader:
        with self._lock:
            header = self._headers.get(ref.id)
        if header is None:
            header = read_segment_header(self.store, ref.key)
            self.put(ref.id, header)
        return header

    def forget(self, segment_ids: set[str]) -> None:
        """Drop the headers of segments no manifest will list again (compacted away)."""
        with self._lock:
            for sid in segment_ids:
                self._headers.pop(sid, None)


@dataclass(frozen=True)
class LiveRow:
    order: Order
    segment_id: str
    row: int


def live_rows(manifest: Manifest, headers: HeaderCache) -> dict[str, LiveRow]:
    """id → its live row in `manifest` (masked rows skipped), computed afresh."""
    return dict(LiveIndex(headers).at(manifest))


class LiveIndex:
    """id → live row, kept in step with successive manifests by applying only what
    changed between them (segments added or removed, rows newly masked), so an
    indexer commit costs the size of the change, not of the collection.

    Hold `lock` while using the mapping `at` returns.
    """

    def __init__(self, headers: HeaderCache) -> None:
        self.headers = headers
        self.lock = threading.RLock()
        self._rows: dict[str, LiveRow] = {}
        self._refs: dict[str, SegmentRef] = {}

    def at(self, manifest: Manifest) -> dict[str, LiveRow]:
        with self.lock:
            target = {ref.id: ref for ref in manifest.segments}
            gone: list[tuple[str, int]] = []
            back: list[tuple[SegmentRef, int]] = []
            for sid, old in self._refs.items():
                new = target.get(sid)
                if new is None:
                    gone += [(sid, r) for r in range(old.count) if r not in set(old.deleted)]
                elif new.deleted != old.deleted:
                    before, after = set(old.deleted), set(new.deleted)
                    gone += [(sid, r) for r in after - before]
                    back += [(new, r) for r in before - after]
            for sid, row in gone:
                rid = self.headers.get(self._refs[sid]).ids[row]
                current = self._rows.get(rid)
                if current is not None and current.segment_id == sid and current.row == row:
                    del self._rows[rid]
            self.headers.forget(set(self._refs) - set(target))
            for sid, ref in target.items():
                if sid not in self._refs:
                    masked = set(ref.deleted)
                    back += [(ref, r) for r in range(ref.count) if r not in masked]
            for ref, row in back:
                header = self.headers.get(ref)
                order = (int(header.timestamps[row]), header.writers[row])
                self._rows[header.ids[row]] = LiveRow(order, ref.id, row)
            self._refs = target
            return self._rows


@dataclass(frozen=True)
class Change:
    """Records to merge into a manifest: for each, its order, whether it deletes,
    and (for an upsert) its row in the new segment."""

    ids: list[str]
    orders: list[Order]
    deletes: list[bool]
    rows: list[int | None]


def merge_change(
    parent: Manifest,
    change: Change,
    new_segment: SegmentRef | None,
    live: Mapping[str, LiveRow],
) -> tuple[list[SegmentRef], dict[str, Order]]:
    """The segments and tombstones of `parent` after last-writer-wins merges `change`
    (`live` is the live-row map of `parent`)."""
    tombstones = dict(parent.tombstones)
    masks: dict[str, set[int]] = {}
    new_masked: set[int] = set()
    for rid, order, is_delete, row in zip(
        change.ids, change.orders, change.deletes, change.rows, strict=True
    ):
        current = live.get(rid)
        newest = max(
            (o for o in (current.order if current else None, tombstones.get(rid)) if o),
            default=None,
        )
        if newest is not None and newest >= order:
            if row is not None:
                new_masked.add(row)
            continue
        if current is not None:
            masks.setdefault(current.segment_id, set()).add(current.row)
        if is_delete:
            tombstones[rid] = order
        else:
            # The live copy now masks anything older; the tombstone has done its job.
            tombstones.pop(rid, None)
    segments = [
        ref.with_deleted(masks[ref.id]) if ref.id in masks else ref for ref in parent.segments
    ]
    fresh = new_segment is not None and all(ref.id != new_segment.id for ref in segments)
    if fresh and new_segment.count > len(new_masked):
        segments.append(new_segment.with_deleted(new_masked))
    return segments, tombstones


def last_per_id(batch: Batch) -> list[int]:
    """Indices of the records that win inside one batch: the last one for each id
    (timestamps increase through a batch, so the last is the newest)."""
    last: dict[str, int] = {}
    for i, rid in enumerate(batch.ids):
        last[rid] = i
    return sorted(last.values())


def build_batch_segment(
    batch: Batch, winners: list[int]
) -> tuple[SegmentRows | None, list[int | None]]:
    """The rows of the segment for `batch`'s winning upserts, and each winner's row."""
    upsert_row = np.cumsum([op == UPSERT for op in batch.ops]) - 1
    rows: list[int | None] = []
    picks: list[int] = []
    for i in winners:
        if batch.ops[i] == UPSERT:
            rows.append(len(picks))
            picks.append(i)
        else:
            rows.append(None)
    if not picks:
        return None, rows
    vectors = batch.vectors[upsert_row[picks]]
    seg_rows = SegmentRows(
        ids=[batch.ids[i] for i in picks],
        timestamps=batch.timestamps[picks],
        writers=[batch.writer] * len(picks),
        metadata=[batch.metadata[i] for i in picks],
        vectors=vectors,
    )
    return seg_rows, rows


class Indexer:
    """Turns batch objects into committed segments for every collection of a store."""

    def __init__(
        self,
        store: ObjectStore,
        schema_of: Callable[[str], CollectionSchema | None],
        committed_by: str,
        workdir: Path | None = None,
    ) -> None:
        self.store = store
        self.schema_of = schema_of
        self.committed_by = committed_by
        self.headers = HeaderCache(store)
        self.workdir = workdir or Path(tempfile.gettempdir()) / "brainy-indexer"
        self._manifests: dict[str, Manifest | None] = {}
        self._live: dict[str, LiveIndex] = {}

    def _live_index(self, collection: str) -> LiveIndex:
        index = self._live.get(collection)
        if index is None:
            index = self._live.setdefault(collection, LiveIndex(self.headers))
        return index

    def index(self, key: str) -> IndexResult:
        """Apply the batch at `key`; safe to call any number of times, in any order."""
        collection = collection_of_batch(key)
        if collection is None:
            return IndexResult(key, "ignored", detail="not a batch object")
        schema = self.schema_of(collection)
        if schema is None:
            return IndexResult(key, "ignored", detail=f"unknown collection {collection!r}")
        manifests = Manifests(self.store, collection)
        known = manifests.latest(self._manifests.get(collection))
        if known is not None and key in known.applied_set:
            self._manifests[collection] = known
            return IndexResult(key, "already-applied", known.version)
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
            (False when another indexer applied it first).
        """
        winners = last_per_id(batch)
        seg_rows, rows = build_batch_segment(batch, winners)
        new_ref = None
        if seg_rows is not None:
            built = build_segment(
                seg_rows,
                metric=schema.metric,
                n_trees=schema.n_trees,
                seed=schema.seed,
                workdir=self.workdir,
            )
            try:
                seg_key = upload_segment(self.store, schema.name, built)
            finally:
                built.path.unlink(missing_ok=True)
            new_ref = SegmentRef.uploaded(built, seg_key, sources=(key,))
            self.headers.put(
                built.id,
                SegmentHeader(
                    dimension=schema.dimension,
                    metric=schema.metric,
                    count=built.count,
                    ids=list(seg_rows.ids),
                    timestamps=seg_rows.timestamps,
                    writers=list(seg_rows.writers),
                    metadata=list(seg_rows.metadata),
                ),
            )
        change = Change(
            ids=[batch.ids[i] for i in winners],
            orders=[(int(batch.timestamps[i]), batch.writer) for i in winners],
            deletes=[batch.ops[i] != UPSERT for i in winners],
            rows=rows,
        )

        def update(parent: Manifest) -> Manifest | None:
            if key in parent.applied_set:
                return None
            schema_check(schema, parent)
            live_index = self._live_index(schema.name)
            with live_index.lock:
                live = live_index.at(parent)
                segments, tombstones = merge_change(parent, change, new_ref, live)
            return replace(
                parent,
                schema=schema.frozen(),
                segments=tuple(segments),
                applied=(*parent.applied, key),
                tombstones=tombstones,
            )

        return Manifests(self.store, schema.name).commit(
            update, schema=schema.frozen(), committed_by=self.committed_by, base=known
        )


def schema_check(schema: CollectionSchema, manifest: Manifest) -> None:
    """Refuse to touch data written with a different frozen schema."""
    if manifest.version > 0:
        schema.check_compatible(manifest.schema)
