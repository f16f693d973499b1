"""Verify a collection's newest manifest against the bucket, and repair what can be.

`verify` checks, for the newest manifest version: every referenced segment exists
and (deep) its content hashes to its id; its header agrees with the ref (count,
timestamps, dimension, metric) and the ref's size with the object; masked row
numbers are in range; no id is live twice and none is live behind a newer
tombstone; the stats written in the manifest agree with its segments; (deep)
every applied batch that still exists decodes.

`repair` acts on a report: a missing or corrupt segment is rebuilt — a level-0
segment from its source batch while that is retained (the indexer's own code on
the batch's winning upserts gives the same rows in the same order, so the
manifest's masks stay valid), a compacted one by the compactor's
`rebuild_compacted` — and put back under its key, or, if the rebuild has another
id, swapped into the manifest by a commit. Ids live twice or behind a tombstone
are re-resolved last-writer-wins by masking the losing rows. A corrupt batch is
moved to quarantine.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainy.core.config import CollectionSchema
from brainy.format.batch import WAL, Batch, CorruptBatch, collection_of_batch
from brainy.format.segment import (
    BuiltSegment,
    CorruptSegment,
    SegmentHeader,
    build_segment,
    load_segment,
    read_segment_header,
    segment_key,
    upload_segment,
)
from brainy.storage import NotFound, ObjectStore, StorageError
from brainy.table.manifest import Manifest, Manifests, SegmentRef
from brainy.write.indexer import HeaderCache, Order, build_batch_segment, last_per_id
from brainy.write.quarantine import quarantine

if TYPE_CHECKING:
    from brainy.service.app import Brainy

log = logging.getLogger(__name__)

# Problem kinds.
CORRUPT_MANIFEST = "corrupt-manifest"
STATS_MISMATCH = "stats-mismatch"
MISSING_SEGMENT = "missing-segment"
CORRUPT_SEGMENT = "corrupt-segment"
SEGMENT_MISMATCH = "segment-mismatch"
DUPLICATE_SEGMENT = "duplicate-segment"
BAD_MASK = "bad-mask"
DUPLICATE_LIVE = "duplicate-live"
LIVE_AFTER_DELETE = "live-after-delete"
CORRUPT_BATCH = "corrupt-batch"

REBUILDABLE = (MISSING_SEGMENT, CORRUPT_SEGMENT)
RESOLVABLE = (DUPLICATE_LIVE, LIVE_AFTER_DELETE)

# The compactor's `rebuild_compacted(store, schema, ref, cache_dir)`.
RebuildCompacted = Callable[[ObjectStore, CollectionSchema, SegmentRef, Path], BuiltSegment]


@dataclass(frozen=True)
class Problem:
    """One thing wrong. `key` is the object key, or the record id for row problems."""

    kind: str
    key: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class VerifyReport:
    """The outcome of `verify`: `ok` when `problems` is empty."""

    collection: str
    version: int = 0
    deep: bool = True
    segments_checked: int = 0
    batches_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, key: str, detail: str) -> None:
        self.problems.append(Problem(kind, key, detail))

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "deep": self.deep,
            "ok": self.ok,
            "segments_checked": self.segments_checked,
            "batches_checked": self.batches_checked,
            "problems": [p.to_dict() for p in self.problems],
        }


def verify(store: ObjectStore, collection: str, *, deep: bool = True) -> VerifyReport:
    """Check the newest manifest of `collection` against the objects it names.

    Args:
        store: the bucket (read-only is enough).
        collection: the collection to check.
        deep: download every segment and hash it, and decode every applied batch
            still stored; otherwise only sizes and segment headers are read.

    Returns:
        The report; `report.ok` when nothing is wrong. A collection never
        committed is ok at version 0.

    Raises:
        StorageError: the store failed (other than a missing object).
    """
    report = VerifyReport(collection, deep=deep)
    manifests = Manifests(store, collection)
    try:
        manifest = manifests.latest()
    except (ValueError, KeyError, TypeError) as e:
        report.add(CORRUPT_MANIFEST, manifests.prefix, f"cannot decode the newest version: {e}")
        return report
    if manifest is None:
        return report
    report.version = manifest.version
    _check_stats(store, manifests, manifest, report)
    headers: dict[str, SegmentHeader] = {}
    with tempfile.TemporaryDirectory(prefix="brainy-verify-") as tmp:
        for ref in manifest.segments:
            if ref.id in headers:
                report.add(DUPLICATE_SEGMENT, ref.key, "referenced twice by the manifest")
                continue
            header = _check_segment(store, collection, manifest, ref, deep, Path(tmp), report)
            if header is not None:
                headers[ref.id] = header
            report.segments_checked += 1
    _check_live(manifest, headers, report)
    if deep:
        _check_batches(store, collection, manifest, report)
    return report


def _check_stats(
    store: ObjectStore, manifests: Manifests, manifest: Manifest, report: VerifyReport
) -> None:
    key = manifests.key(manifest.version)
    stored = json.loads(store.get(key).data).get("stats")
    if stored != manifest.stats():
        report.add(STATS_MISMATCH, key, f"stats say {stored}, segments say {manifest.stats()}")


def _check_segment(
    store: ObjectStore,
    collection: str,
    manifest: Manifest,
    ref: SegmentRef,
    deep: bool,
    tmp: Path,
    report: VerifyReport,
) -> SegmentHeader | None:
    """Check one referenced segment; its header when it could be read whole."""
    if ref.key != segment_key(collection, ref.id):
        report.add(SEGMENT_MISMATCH, ref.key, f"key does not name segment {ref.id}")
    try:
        info = store.head(ref.key)
        if deep:
            loaded = load_segment(store, ref.key, ref.id, tmp)
            header = loaded.header
            loaded.index.unload()
            for suffix in (".ann", ".json"):
                (tmp / f"{ref.id}{suffix}").unlink(missing_ok=True)
        else:
            header = read_segment_header(store, ref.key)
    except NotFound:
        report.add(MISSING_SEGMENT, ref.key, "referenced by the manifest but not stored")
        return None
    except (CorruptSegment, ValueError, KeyError, OSError) as e:
        report.add(CORRUPT_SEGMENT, ref.key, str(e))
        return None
    mismatches = []
    if info.size != ref.bytes:
        mismatches.append(f"object has {info.size} bytes, ref says {ref.bytes}")
    columns = {len(header.ids), len(header.timestamps), len(header.writers), len(header.metadata)}
    if columns != {ref.count} or header.count != ref.count:
        mismatches.append(
            f"header has {header.count} rows ({sorted(columns)} per column), ref says {ref.count}"
        )
    elif ref.count and (
        int(header.timestamps.min()) != ref.min_ts or int(header.timestamps.max()) != ref.max_ts
    ):
        mismatches.append("timestamp range differs from the ref")
    for name in ("dimension", "metric"):
        if name in manifest.schema and getattr(header, name) != manifest.schema[name]:
            mismatches.append(
                f"{name} {getattr(header, name)!r}, schema says {manifest.schema[name]!r}"
            )
    if mismatches:
        report.add(SEGMENT_MISMATCH, ref.key, "; ".join(mismatches))
    if list(ref.deleted) != sorted(set(ref.deleted)) or any(
        not 0 <= row < ref.count for row in ref.deleted
    ):
        report.add(BAD_MASK, ref.key, f"masked rows not sorted, unique and in [0, {ref.count})")
    return header


@dataclass(frozen=True)
class _Copy:
    order: Order
    position: int  # of the segment in the manifest: later segments win ties
    segment: SegmentRef
    row: int


def _live_copies(
    manifest: Manifest, header_of: Callable[[SegmentRef], SegmentHeader | None]
) -> dict[str, list[_Copy]]:
    """id → every unmasked row holding it, over the segments whose header is known."""
    copies: dict[str, list[_Copy]] = {}
    for position, ref in enumerate(manifest.segments):
        header = header_of(ref)
        if header is None:
            continue
        masked = set(ref.deleted)
        for row, (rid, ts, writer) in enumerate(
            zip(header.ids, header.timestamps.tolist(), header.writers, strict=False)
        ):
            if row not in masked:
                copies.setdefault(rid, []).append(_Copy((ts, writer), position, ref, row))
    return copies


def _check_live(
    manifest: Manifest, headers: dict[str, SegmentHeader], report: VerifyReport
) -> None:
    for rid, copies in _live_copies(manifest, lambda ref: headers.get(ref.id)).items():
        if len(copies) > 1:
            where = ", ".join(f"{c.segment.key} row {c.row}" for c in copies)
            report.add(DUPLICATE_LIVE, rid, f"live {len(copies)} times: {where}")
        tombstone = manifest.tombstones.get(rid)
        newest = max(c.order for c in copies)
        if tombstone is not None and tombstone >= newest:
            report.add(LIVE_AFTER_DELETE, rid, f"live at {newest}, deleted at {tombstone}")


def _check_batches(
    store: ObjectStore, collection: str, manifest: Manifest, report: VerifyReport
) -> None:
    applied = manifest.applied_set
    for info in store.list(f"{collection}/{WAL}/"):
        if info.key not in applied or collection_of_batch(info.key) != collection:
            continue
        try:
            batch = Batch.decode(store.get(info.key).data, info.key)
        except NotFound:
            continue  # collected between the listing and the read
        except CorruptBatch as e:
            report.add(CORRUPT_BATCH, info.key, str(e))
            continue
        if batch.collection != collection:
            report.add(CORRUPT_BATCH, info.key, f"says collection {batch.collection!r}")
        report.batches_checked += 1


# --------------------------------------------------------------------- repair


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
    app: Brainy,
    collection: str,
    report: VerifyReport,
    *,
    rebuild_compacted: RebuildCompacted | None = None,
) -> RepairReport:
    """Fix what `report` found, as far as the bucket still allows.

    Args:
        app: a read-write instance (its settings give the build folder, its
            schema the index parameters).
        collection: the collection `report` is about.
        report: the outcome of `verify` on it.
        rebuild_compacted: rebuilds a level > 0 segment; defaults to the
            compactor's `brainy.maintenance.compaction.rebuild_compacted` when it exists.

    Returns:
        What was rebuilt, swapped, quarantined and re-resolved, and what was not
        (with why). Run `verify` again to confirm.

    Raises:
        StorageError: the store failed; the repairs before it stand.
        CommitFailed: the manifest could not be committed (sustained contention).
    """
    out = RepairReport(collection)
    schema = app.require_schema(collection)
    manifests = app.manifests(collection)
    manifest = manifests.latest()
    refs = {ref.key: ref for ref in manifest.segments} if manifest else {}
    workdir = Path(app.settings.cache_dir) / "repair"
    replacements: dict[str, SegmentRef] = {}
    resolve: list[Problem] = []
    for problem in report.problems:
        if problem.kind in REBUILDABLE:
            ref = refs.get(problem.key)
            if ref is None:
                log.info("repair %s: %s is no longer referenced", collection, problem.key)
                continue
            try:
                new = _rebuild(app.store, manifests, schema, ref, workdir, rebuild_compacted)
            except NotRebuildable as e:
                out.leave(problem, str(e))
                continue
            replacements[ref.id] = new
        elif problem.kind == CORRUPT_BATCH:
            if quarantine(app.store, problem.key, problem.detail) is not None:
                out.quarantined.append(problem.key)
        elif problem.kind in RESOLVABLE:
            resolve.append(problem)
        else:
            out.leave(problem, "no automatic repair: needs an operator")
    if replacements or resolve:
        _commit_repairs(app, manifests, schema, replacements, resolve, out)
    return out


def _rebuild(
    store: ObjectStore,
    manifests: Manifests,
    schema: CollectionSchema,
    ref: SegmentRef,
    workdir: Path,
    rebuild_compacted: RebuildCompacted | None,
) -> SegmentRef:
    """Rebuild `ref`'s rows and upload them; the ref the manifest should now hold."""
    if ref.level > 0:
        rebuild_compacted = rebuild_compacted or _compactor_rebuild()
        try:
            built = rebuild_compacted(store, schema, ref, workdir)
        except (StorageError, ValueError, KeyError, RuntimeError, OSError) as e:
            raise NotRebuildable(f"compacted segment: {e}") from e
    else:
        built = _rebuild_level0(store, schema, ref, workdir)
    try:
        if (built.count, built.min_ts, built.max_ts) != (ref.count, ref.min_ts, ref.max_ts):
            raise NotRebuildable(
                f"the rebuilt rows differ from the ref ({built.count} rows, "
                f"{built.min_ts}..{built.max_ts}): its masks would not fit"
            )
        key = upload_segment(store, manifests.collection, built)
        return replace(ref, id=built.id, key=key, bytes=built.size)
    finally:
        built.path.unlink(missing_ok=True)


def _rebuild_level0(
    store: ObjectStore, schema: CollectionSchema, ref: SegmentRef, workdir: Path
) -> BuiltSegment:
    if len(ref.sources) != 1:
        raise NotRebuildable(f"level-0 segment with {len(ref.sources)} source batches")
    source = ref.sources[0]
    try:
        batch = Batch.decode(store.get(source).data, source)
    except NotFound:
        raise NotRebuildable(f"source batch {source} is gone (past batch_retention)") from None
    except CorruptBatch as e:
        raise NotRebuildable(f"source batch is corrupt: {e}") from None
    rows, _ = build_batch_segment(batch, last_per_id(batch))
    if rows is None:
        raise NotRebuildable(f"source batch {source} has no winning upserts")
    return build_segment(
        rows, metric=schema.metric, n_trees=schema.n_trees, seed=schema.seed, workdir=workdir
    )


def _compactor_rebuild() -> RebuildCompacted:
    try:
        from brainy.maintenance.compaction import rebuild_compacted
    except ImportError:
        raise NotRebuildable(
            "brainy.maintenance.compaction.rebuild_compacted is not available"
        ) from None
    return rebuild_compacted


def _commit_repairs(
    app: Brainy,
    manifests: Manifests,
    schema: CollectionSchema,
    replacements: dict[str, SegmentRef],
    resolve: list[Problem],
    out: RepairReport,
) -> None:
    """Swap rebuilt refs in by id and mask the losers of re-resolved ids, in one commit."""
    headers = HeaderCache(app.store)

    def header_of(ref: SegmentRef) -> SegmentHeader | None:
        try:
            return headers.get(ref)
        except (NotFound, CorruptSegment):
            return None  # still broken: its rows cannot be resolved

    def update(parent: Manifest) -> Manifest | None:
        segments: list[SegmentRef] = []
        swapped: dict[str, str] = {}
        for ref in parent.segments:
            new = replacements.get(ref.id)
            if new is not None:
                # Swapped by id, keeping the masks the parent's ref may have gained
                # since verify; a ref compacted away meanwhile needs nothing.
                swapped[ref.id] = new.id
                ref = replace(new, deleted=ref.deleted)
            segments.append(ref)
        current = replace(parent, segments=tuple(segments))
        masks, resolved = _losing_rows(current, header_of) if resolve else ({}, [])
        out.swapped, out.resolved = swapped, resolved
        if not swapped and not masks:
            return None
        return replace(
            current,
            segments=tuple(
                ref.with_deleted(masks[ref.id]) if ref.id in masks else ref
                for ref in current.segments
            ),
        )

    manifest, committed = manifests.commit(
        update, schema=schema.frozen(), committed_by=f"repair-{app.writer_id}"
    )
    if committed:
        out.version = manifest.version
    else:
        # The newest version already had none of it (another repair got there).
        out.swapped, out.resolved = {}, []


def _losing_rows(
    manifest: Manifest, header_of: Callable[[SegmentRef], SegmentHeader | None]
) -> tuple[dict[str, set[int]], list[str]]:
    """Rows to mask so each id is live at most once, by last-writer-wins, and not at
    all behind a newer tombstone; and the ids that needed it."""
    masks: dict[str, set[int]] = {}
    resolved: list[str] = []
    for rid, copies in _live_copies(manifest, header_of).items():
        tombstone = manifest.tombstones.get(rid)
        ranked = sorted(copies, key=lambda c: (c.order, c.position, c.row))
        keep = ranked[-1]
        if tombstone is not None and tombstone >= keep.order:
            losers = ranked
        elif len(ranked) > 1:
            losers = ranked[:-1]
        else:
            continue
        for c in losers:
            masks.setdefault(c.segment.id, set()).add(c.row)
        resolved.append(rid)
    return masks, resolved
