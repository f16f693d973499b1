"""Repair what `verify` found, as far as the bucket still allows.

A missing or corrupt segment is rebuilt — a level-0 segment from its source batch
while that is retained (the indexer's own code on the batch's winning records
gives the same rows and tombstones in the same order, so the segment's deletion
file stays valid), a compacted one from the inputs its lineage names
(`compaction.rebuild_compacted`) — and swapped into the manifest by a commit
(every build has a fresh id). Ids live twice or behind a tombstone are
re-resolved last-writer-wins (`table.lww`) by masking the losing rows. A corrupt
batch is moved to quarantine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.format.batch import Batch, CorruptBatch
from brainy.format.segment import (
    BuiltSegment,
    CorruptSegment,
    build_collection_segment,
    upload_segment,
)
from brainy.maintenance.compaction import rebuild_compacted
from brainy.maintenance.context import Maintenance
from brainy.maintenance.verify import (
    CORRUPT_BATCH,
    CORRUPT_SEGMENT,
    DUPLICATE_LIVE,
    LIVE_AFTER_DELETE,
    MISSING_SEGMENT,
    Problem,
    VerifyReport,
    live_copies,
)
from brainy.storage import NotFound, ObjectStore, StorageError
from brainy.table.lww import conflicts
from brainy.table.manifest import Manifest, Manifests, SegmentRef
from brainy.write.indexer import build_batch_segment, last_per_id
from brainy.write.quarantine import quarantine

log = logging.getLogger(__name__)

REBUILDABLE = (MISSING_SEGMENT, CORRUPT_SEGMENT)
RESOLVABLE = (DUPLICATE_LIVE, LIVE_AFTER_DELETE)

# `compaction.rebuild_compacted(store, schema, ref, cache_dir)`, or a stand-in.
RebuildCompacted = Callable[[ObjectStore, CollectionSchema, SegmentRef, Path], BuiltSegment]


@dataclass
class RepairReport:
    """What `repair` did: `ok` when every problem it was given was dealt with.

    Attributes:
        swapped: old segment id → the id of its rebuild (every build has a fresh
            id), committed into the manifest.
        quarantined: batch keys moved to quarantine.
        resolved: record ids whose losing live rows were masked.
        unrepaired: problems left, each with the reason.
        version: the manifest version repair committed (None: no commit needed).
    """

    collection: str
    swapped: dict[str, str] = field(default_factory=dict)
    quarantined: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    unrepaired: list[dict[str, str]] = field(default_factory=list)
    version: int | None = None

    @property
    def ok(self) -> bool:
        return not self.unrepaired

    def leave(self, problem: Problem, reason: str) -> None:
        self.unrepaired.append({**problem.to_dict(), "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class NotRebuildable(Exception):
    """A segment cannot be rebuilt; the message says why."""


def repair(
    ctx: Maintenance,
    collection: str,
    report: VerifyReport,
    *,
    rebuild_compacted: RebuildCompacted = rebuild_compacted,
) -> RepairReport:
    """Fix what `report` found, as far as the bucket still allows.

    Args:
        ctx: the store, settings (the build folder) and schemas to work with.
        collection: the collection `report` is about.
        report: the outcome of `verify` on it.
        rebuild_compacted: rebuilds a level > 0 segment (tests pass a stand-in).

    Returns:
        What was rebuilt, swapped, quarantined and re-resolved, and what was not
        (with why). Run `verify` again to confirm.

    Raises:
        StorageError: the store failed; the repairs before it stand.
        CommitFailed: the manifest could not be committed (sustained contention).
    """
    out = RepairReport(collection)
    schema = ctx.require_schema(collection)
    manifests = ctx.manifests_of(collection)
    manifest = manifests.latest()
    refs = {ref.key: ref for ref in manifest.segments} if manifest else {}
    workdir = Path(ctx.settings.cache_dir) / "repair"
    replacements: dict[str, SegmentRef] = {}
    resolve = False
    for problem in report.problems:
        if problem.kind in REBUILDABLE:
            ref = refs.get(problem.key)
            if ref is None:
                log.info("repair %s: %s is no longer referenced", collection, problem.key)
                continue
            try:
                new = _rebuild(ctx.store, manifests, schema, ref, workdir, rebuild_compacted)
            except NotRebuildable as e:
                out.leave(problem, str(e))
                continue
            replacements[ref.id] = new
        elif problem.kind == CORRUPT_BATCH:
            if quarantine(ctx.store, problem.key, problem.detail) is not None:
                out.quarantined.append(problem.key)
        elif problem.kind in RESOLVABLE:
            resolve = True
        else:
            out.leave(problem, "no automatic repair: needs an operator")
    if replacements or resolve:
        _commit_repairs(ctx, manifests, schema, replacements, resolve, out)
    return out


def _rebuild(
    store: ObjectStore,
    manifests: Manifests,
    schema: CollectionSchema,
    ref: SegmentRef,
    workdir: Path,
    rebuild_compacted: RebuildCompacted,
) -> SegmentRef:
    """Rebuild `ref`'s rows and upload them; the ref the manifest should now hold."""
    if ref.level > 0:
        try:
            built = rebuild_compacted(store, schema, ref, workdir)
        except (StorageError, ValueError, KeyError, RuntimeError, OSError) as e:
            raise NotRebuildable(f"compacted segment: {e}") from e
    else:
        built = _rebuild_level0(store, schema, ref, workdir)
    try:
        if (built.count, built.tombstones, built.min_ts, built.max_ts) != (
            ref.count,
            ref.tombstones,
            ref.min_ts,
            ref.max_ts,
        ):
            raise NotRebuildable(
                f"the rebuilt rows differ from the ref ({built.count} rows, "
                f"{built.min_ts}..{built.max_ts}): its masks would not fit"
            )
        key = upload_segment(store, manifests.collection, built)
        return ref.rebuilt(built, key)
    finally:
        built.path.unlink(missing_ok=True)


def _rebuild_level0(
    store: ObjectStore, schema: CollectionSchema, ref: SegmentRef, workdir: Path
) -> BuiltSegment:
    if ref.source is None:
        raise NotRebuildable("level-0 segment without a source batch")
    try:
        batch = Batch.decode(store.get(ref.source).data, ref.source)
    except NotFound:
        raise NotRebuildable(f"source batch {ref.source} is gone (past batch_retention)") from None
    except CorruptBatch as e:
        raise NotRebuildable(f"source batch is corrupt: {e}") from None
    rows, _ = build_batch_segment(batch, last_per_id(batch))
    return build_collection_segment(schema, rows, workdir)


def _commit_repairs(
    ctx: Maintenance,
    manifests: Manifests,
    schema: CollectionSchema,
    replacements: dict[str, SegmentRef],
    resolve: bool,
    out: RepairReport,
) -> None:
    """Swap rebuilt refs in by id and mask the losers of re-resolved ids, in one commit."""

    def update(parent: Manifest) -> Manifest | None:
        segments: list[SegmentRef] = []
        swapped: dict[str, str] = {}
        for ref in parent.segments:
            new = replacements.get(ref.id)
            if new is not None:
                # Swapped by id, keeping the deletion file the parent's ref may have
                # gained since verify; a ref compacted away meanwhile needs nothing.
                swapped[ref.id] = new.id
                ref = replace(new, deletes=ref.deletes, masked=ref.masked)
            segments.append(ref)
        masks, resolved = _losing_rows(ctx, segments) if resolve else ({}, [])
        out.swapped, out.resolved = swapped, resolved
        if not swapped and not masks:
            return None
        return replace(
            parent,
            segments=tuple(
                ctx.masks.mask(parent.collection, ref, np.asarray(sorted(masks[ref.id])))
                if ref.id in masks
                else ref
                for ref in segments
            ),
        )

    manifest, committed = manifests.commit(
        update, schema=schema.frozen(), committed_by=f"repair-{ctx.writer_id}"
    )
    if committed:
        out.version = manifest.version
    else:
        # The newest version already had none of it (another repair got there).
        out.swapped, out.resolved = {}, []


def _losing_rows(
    ctx: Maintenance, segments: list[SegmentRef]
) -> tuple[dict[str, set[int]], list[str]]:
    """Rows to mask so each id is live at most once, by last-writer-wins, and not at
    all behind a newer tombstone; and the ids that needed it. Segments whose header
    cannot be read are left out (still broken: their rows cannot be resolved)."""
    readable = []
    for ref in segments:
        try:
            ctx.headers.get(ref)
        except (NotFound, CorruptSegment):
            continue
        readable.append(ref)
    masks: dict[str, set[int]] = {}
    lost = conflicts(live_copies(readable, ctx.headers, ctx.masks))
    for copies in lost.values():
        for c in copies:
            masks.setdefault(c.segment, set()).add(c.row)
    return masks, sorted(lost)
