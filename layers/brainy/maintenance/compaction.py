"""Compaction: merge level-0 segments into per-partition level-1 segments, drop
masked rows and tombstones that can no longer matter, and commit by manifest CAS.

A compaction holds the lease `compact-<collection>` so two compactors do not do
the same work twice; correctness rests on the commit alone. The commit is a pure
function of the manifest it lands on: every input segment must still be there
(else another compactor won and this one stands down), rows masked by commits
that landed while the merge was built are masked again in the outputs, and a
manifest already carrying a newer lease token refuses the commit (fencing).

Tombstones older than the new `floor` (the sweeper's horizon less
`tombstone_grace`: every batch written before it is applied) are dropped; the
commit raises the manifest's floor to match, so an older copy of a deleted id
arriving later (a redelivered event) is recognised as already applied.

A merge is deterministic — inputs in manifest order, rows in input order, only
the rows live at the base version, tombstones at or above the floor — so a
corrupt compacted segment can be rebuilt row for row from the inputs its
lineage object names while the base version is retained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core.config import CollectionSchema, Settings
from brainy.format.partitioning import hash_partitions
from brainy.format.segment import (
    BuiltSegment,
    LoadedSegment,
    SegmentRows,
    Tombstones,
    build_segment,
    load_segment,
    upload_segment,
)
from brainy.maintenance.context import Maintenance
from brainy.maintenance.leases import LeaseLost, LeaseManager
from brainy.maintenance.sweeper import sweep
from brainy.storage import ObjectStore, PreconditionFailed
from brainy.table.deletions import Masks
from brainy.table.manifest import Manifest, Manifests, SegmentRef, StaleUpload
from brainy.write.indexer import reupload

log = logging.getLogger(__name__)

# A partition segment with more than this share of its rows masked is rewritten.
DIRTY_FRACTION = 0.3


class CompactionConflict(RuntimeError):
    """Another compaction already replaced some of this one's inputs."""


@dataclass(frozen=True)
class OutputPlan:
    """One segment to write: a partition and the input segments that feed it."""

    partition: int
    inputs: tuple[SegmentRef, ...]


@dataclass(frozen=True)
class Plan:
    base: Manifest
    level0: tuple[SegmentRef, ...]
    outputs: tuple[OutputPlan, ...]
    floor: int = 0  # tombstones below it are dropped

    @property
    def inputs(self) -> list[SegmentRef]:
        seen: dict[str, SegmentRef] = {ref.id: ref for ref in self.level0}
        for out in self.outputs:
            seen.update({ref.id: ref for ref in out.inputs})
        return list(seen.values())

    @property
    def empty(self) -> bool:
        return not self.inputs


@dataclass
class CompactionReport:
    collection: str
    status: str = "idle"  # compacted | nothing-to-do | busy | conflict | lost-lease
    version: int | None = None
    inputs: int = 0
    outputs: int = 0
    rows_in: int = 0
    rows_out: int = 0
    masked_dropped: int = 0
    tombstones_dropped: int = 0
    lease_token: int | None = None
    sweep: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_compaction(
    manifest: Manifest,
    schema: CollectionSchema,
    settings: Settings,
    *,
    force: bool = False,
    floor: int = 0,
) -> Plan:
    """Choose the work: all level-0 segments once there are `compact_min_segments`
    of them (any, when forced); per partition, the dirty segments (many rows
    masked, or nothing live but tombstones the floor lets go) and, when the
    partition would exceed `max_segments_per_partition`, its smallest segments,
    merged with the level-0 rows routed to it."""
    level0 = tuple(s for s in manifest.segments if s.level == 0)
    take_level0 = bool(level0) and (force or len(level0) >= settings.compact_min_segments)
    by_partition: dict[int, list[SegmentRef]] = {}
    for ref in manifest.segments:
        if ref.level > 0:
            by_partition.setdefault(ref.partition or 0, []).append(ref)
    outputs = []
    partitions = range(schema.partitions) if take_level0 else sorted(by_partition)
    for p in partitions:
        segs = by_partition.get(p, [])
        dirty = [s for s in segs if _dirty(s, force, floor)]
        clean = sorted((s for s in segs if s not in dirty), key=lambda s: (s.live, s.id))
        # The output joins the clean segments kept: merge the smallest to stay in bound.
        overflow = max(0, len(clean) + 1 - settings.max_segments_per_partition)
        merged = dirty + clean[:overflow] if (take_level0 or dirty) else []
        if take_level0 or merged:
            # Keep manifest order: it decides the row order of the output.
            chosen = {s.id for s in merged}
            ordered = tuple(s for s in manifest.segments if s.id in chosen)
            outputs.append(OutputPlan(p, ordered))
    return Plan(manifest, level0 if take_level0 else (), tuple(outputs), floor)


def _dirty(ref: SegmentRef, force: bool, floor: int) -> bool:
    if ref.count and ref.live == 0:
        return True
    if ref.masked > DIRTY_FRACTION * ref.count or (force and ref.masked):
        return True
    # Tombstones the floor has passed: rewritten when they are all the segment is.
    return bool(ref.tombstones) and ref.min_ts < floor and (force or ref.live == 0)


@dataclass
class _Output:
    plan: OutputPlan
    built: BuiltSegment | None
    # Per input segment id: each input row's row in the output (-1: not taken),
    # for re-masking rows masked while the merge was built.
    row_of: dict[str, np.ndarray]
    tombstones_in: int = 0


class _Inputs:
    """The input segments of a merge, each downloaded once, and the partition of
    each level-0 row and tombstone, hashed once whatever the number of outputs."""

    def __init__(self, store: ObjectStore, schema: CollectionSchema, cache_dir: Path) -> None:
        self.store = store
        self.schema = schema
        self.cache_dir = cache_dir
        self._segments: dict[str, LoadedSegment] = {}
        self._partitions: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def segment(self, ref: SegmentRef) -> LoadedSegment:
        if ref.id not in self._segments:
            self._segments[ref.id] = load_segment(self.store, ref.key, ref.id, self.cache_dir)
        return self._segments[ref.id]

    def close(self) -> None:
        """Remove the downloaded inputs: merged away, they are not read again."""
        self._segments.clear()
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def partitions(self, ref: SegmentRef) -> tuple[np.ndarray, np.ndarray]:
        """(partition of each row, partition of each tombstone)."""
        if ref.id not in self._partitions:
            header = self.segment(ref).header
            n, seed = self.schema.partitions, self.schema.seed
            self._partitions[ref.id] = (
                hash_partitions(header.ids, n, seed),
                hash_partitions(header.tombstones.ids, n, seed),
            )
        return self._partitions[ref.id]


def _pick(values: list[Any], rows: np.ndarray) -> list[Any]:
    return [values[r] for r in rows.tolist()]


def _gather(plan: Plan, out: OutputPlan, inputs: _Inputs, masks: Masks, workdir: Path) -> _Output:
    """Build one output segment from the rows of its inputs live at the base, and
    their tombstones at or above the plan's floor."""
    position = {ref.id: i for i, ref in enumerate(plan.base.segments)}
    feeds = sorted(
        {r.id: r for r in (*plan.level0, *out.inputs)}.values(), key=lambda r: position[r.id]
    )
    ids: list[str] = []
    writers: list[str] = []
    metadata: list[Any] = []
    timestamps: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    dead_ids: list[str] = []
    dead_writers: list[str] = []
    dead_ts: list[np.ndarray] = []
    row_of: dict[str, np.ndarray] = {}
    tombstones_in = 0
    for ref in feeds:
        seg = inputs.segment(ref)
        header = seg.header
        live = np.ones(header.count, dtype=bool)
        live[masks.rows(ref)] = False
        dead = header.tombstones
        keep_dead = dead.timestamps >= plan.floor
        if ref.level == 0:
            row_parts, dead_parts = inputs.partitions(ref)
            live &= row_parts == out.partition
            in_partition = dead_parts == out.partition
            keep_dead &= in_partition
            tombstones_in += int(in_partition.sum())
        else:
            tombstones_in += len(dead)
        rows = np.flatnonzero(live)
        taken = np.full(header.count, -1, dtype=np.int64)
        taken[rows] = np.arange(len(ids), len(ids) + rows.size)
        row_of[ref.id] = taken
        ids += _pick(header.ids, rows)
        writers += _pick(header.writers, rows)
        metadata += _pick(header.metadata, rows)
        timestamps.append(header.timestamps[rows])
        vectors.append(np.asarray(seg.vectors[rows], dtype=np.float32))
        kept = np.flatnonzero(keep_dead)
        dead_ids += _pick(list(dead.ids), kept)
        dead_writers += _pick(list(dead.writers), kept)
        dead_ts.append(dead.timestamps[kept])
    if not ids and not dead_ids:
        return _Output(out, None, row_of, tombstones_in)
    schema = inputs.schema
    seg_rows = SegmentRows(
        ids=ids,
        timestamps=np.concatenate(timestamps) if timestamps else np.zeros(0, np.int64),
        writers=writers,
        metadata=metadata,
        vectors=np.concatenate(vectors) if ids else np.zeros((0, schema.dimension), np.float32),
        tombstones=Tombstones(dead_ids, np.concatenate(dead_ts), dead_writers),
    )
    built = build_segment(
        seg_rows, metric=schema.metric, n_trees=schema.n_trees, seed=schema.seed, workdir=workdir
    )
    return _Output(out, built, row_of, tombstones_in)


def _apply(
    parent: Manifest,
    plan: Plan,
    outputs: list[tuple[_Output, SegmentRef]],
    masks: Masks,
    lease_token: int | None,
    swept: float,
) -> Manifest | None:
    """The compaction's commit, rebased on `parent` (see the module doc)."""
    if lease_token is not None and (parent.lease_token or 0) > lease_token:
        raise LeaseLost(
            f"{parent.collection}: version {parent.version} was committed under lease token "
            f"{parent.lease_token}, newer than this compaction's {lease_token}"
        )
    current = {ref.id: ref for ref in parent.segments}
    inputs = {ref.id: ref for ref in plan.inputs}
    if any(sid not in current for sid in inputs):
        raise CompactionConflict(f"{parent.collection}: inputs already compacted away")
    new_refs = []
    for output, ref in outputs:
        fresh: list[np.ndarray] = []
        for sid, taken in output.row_of.items():
            base_ref = inputs[sid]
            if current[sid].deletes == base_ref.deletes:
                continue
            newly = np.setdiff1d(masks.rows(current[sid]), masks.rows(base_ref))
            moved = taken[newly]
            fresh.append(moved[moved >= 0])
        if fresh:
            ref = masks.mask(parent.collection, ref, np.concatenate(fresh))
        new_refs.append(ref)
    segments = [ref for ref in parent.segments if ref.id not in inputs]
    segments += [ref for ref in new_refs if ref.live > 0 or ref.tombstones > 0]
    return replace(
        parent,
        segments=tuple(segments),
        floor=plan.floor,
        swept=swept,
        lease_token=lease_token if lease_token is not None else parent.lease_token,
    )


def lease_resource(collection: str) -> str:
    return f"compact-{collection}"


def compact(
    ctx: Maintenance,
    collection: str,
    *,
    force: bool = False,
    leases: LeaseManager | None = None,
    sweep_first: bool = True,
    before_commit: Callable[[], None] | None = None,
) -> CompactionReport:
    """Sweep unindexed batches, then merge segments under the collection's lease.

    Args:
        ctx: the store, settings, schemas and indexer to work with.
        collection: the collection to compact.
        force: merge whatever level-0 and masked rows there are, below the thresholds.
        leases: the lease manager (tests pass one with a fake clock).
        sweep_first: index batches no event delivered before merging (and so learn
            the horizon below which tombstones can go).
        before_commit: called once the outputs are uploaded, before the commit (a
            seam for tests that land other commits in between).
    """
    schema = ctx.require_schema(collection)
    settings = ctx.settings
    store = ctx.store
    report = CompactionReport(collection)
    leases = leases or LeaseManager(store, ctx.writer_id, ttl=settings.lease_ttl)
    lease = leases.acquire(lease_resource(collection))
    if lease is None:
        report.status = "busy"
        return report
    report.lease_token = lease.token
    try:
        manifests = ctx.manifests_of(collection)
        base = manifests.latest()
        floor, swept = base.floor if base else 0, base.swept if base else 0.0
        if sweep_first:
            swept_report = sweep(ctx, collection)
            report.sweep = swept_report.to_dict()
            # No horizon when some batch could not be indexed: keep every tombstone.
            if swept_report.horizon is not None:
                swept = max(swept, swept_report.horizon)
                floor = max(floor, int((swept - settings.tombstone_grace) * 1_000_000))
            base = manifests.latest(base)
        if base is None:
            report.status = "nothing-to-do"
            return report
        plan = plan_compaction(base, schema, settings, force=force, floor=floor)
        # With nothing to merge, the sweep's horizon is still worth a commit when it
        # lets GC collect batches past their retention (or when asked to).
        unrecorded = report.sweep.get("unrecorded")
        record = swept > base.swept and (
            force
            or (unrecorded is not None and unrecorded < time.time() - settings.batch_retention)
        )
        if plan.empty and not record:
            report.status = "nothing-to-do"
            report.version = base.version
            return report
        lease = leases.renew(lease)
        outputs = _build_outputs(ctx, plan, schema)
        try:
            lease = leases.renew(lease)
            if before_commit is not None:
                before_commit()
            leases.check(lease)
            token = lease.token

            def update(parent: Manifest) -> Manifest | None:
                return _apply(
                    parent,
                    plan,
                    [(o, ref) for o, ref, _ in outputs],
                    ctx.masks,
                    token,
                    swept,
                )

            manifest = _commit(ctx, collection, update, plan, outputs, schema)
        except CompactionConflict:
            report.status = "conflict"
            return report
        finally:
            for output, _, _ in outputs:
                if output.built is not None:
                    output.built.path.unlink(missing_ok=True)
        report.status = "compacted"
        report.version = manifest.version
        report.inputs = len(plan.inputs)
        report.outputs = sum(1 for _, ref, _ in outputs if ref.live > 0 or ref.tombstones)
        report.rows_in = sum(ref.count for ref in plan.inputs)
        report.rows_out = sum(ref.count for _, ref, _ in outputs)
        report.masked_dropped = sum(ref.masked for ref in plan.inputs)
        report.tombstones_dropped = sum(o.tombstones_in for o, _, _ in outputs) - sum(
            ref.tombstones for _, ref, _ in outputs
        )
        return report
    except LeaseLost as e:
        log.warning("compaction of %s stood down: %s", collection, e)
        report.status = "lost-lease"
        return report
    finally:
        leases.release(lease)


_Built = tuple[_Output, SegmentRef, float]  # an output, its ref, when its upload began


def _commit(
    ctx: Maintenance,
    collection: str,
    update: Callable[[Manifest], Manifest | None],
    plan: Plan,
    outputs: list[_Built],
    schema: CollectionSchema,
) -> Manifest:
    manifests = ctx.manifests_of(collection)
    while True:
        uploaded_at = min((at for _, _, at in outputs), default=None)
        try:
            manifest, _ = manifests.commit(
                update,
                schema=schema.frozen(),
                committed_by=ctx.writer_id,
                base=plan.base,
                uploaded_at=uploaded_at,
            )
            return manifest
        except StaleUpload:
            # The build outlasted half the GC grace: a collector may take its first
            # uploads for orphans. Upload everything again under fresh keys.
            for i, (output, ref, _) in enumerate(outputs):
                assert output.built is not None
                at, new_ref = reupload(ctx.store, collection, output.built, ref)
                lineage = write_lineage(ctx.store, collection, ref.id, plan, output.plan)
                outputs[i] = (output, replace(new_ref, lineage=lineage), at)


def _build_outputs(ctx: Maintenance, plan: Plan, schema: CollectionSchema) -> list[_Built]:
    cache_dir = Path(ctx.settings.cache_dir)
    inputs = _Inputs(ctx.store, schema, cache_dir / "compaction")
    results: list[_Built] = []
    try:
        for out in plan.outputs:
            output = _gather(plan, out, inputs, ctx.masks, cache_dir / "build")
            if output.built is None:
                continue
            built = output.built
            uploaded_at = time.time()
            key = upload_segment(ctx.store, schema.name, built)
            lineage = write_lineage(ctx.store, schema.name, built.id, plan, out)
            ref = SegmentRef.uploaded(
                built,
                key,
                level=1,
                partition=out.partition,
                lineage=lineage,
                base_version=plan.base.version,
            )
            results.append((output, ref, uploaded_at))
    except BaseException:
        for output, _, _ in results:
            if output.built is not None:
                output.built.path.unlink(missing_ok=True)
        raise
    finally:
        inputs.close()
    return results


def lineage_key(collection: str, segment_id: str) -> str:
    return f"{collection}/meta/lineage/{segment_id}-{uuid.uuid4().hex[:12]}.json"


def write_lineage(
    store: ObjectStore, collection: str, segment_id: str, plan: Plan, out: OutputPlan
) -> str:
    """Record what a compacted segment was merged from (a side object the manifest
    points at, so the manifest stays small however many inputs a merge had)."""
    body = {
        "segment": segment_id,
        "base_version": plan.base.version,
        "partition": out.partition,
        "floor": plan.floor,
        "level0": [r.id for r in plan.level0],
        "inputs": [r.id for r in out.inputs],
    }
    key = lineage_key(collection, segment_id)
    # A fresh key: taken only by this put's own retry after a lost response.
    with contextlib.suppress(PreconditionFailed):
        store.put(key, json.dumps(body).encode(), if_absent=True)
    return key


def rebuild_compacted(
    store: ObjectStore, schema: CollectionSchema, ref: SegmentRef, cache_dir: Path
) -> BuiltSegment:
    """Rebuild a compacted segment from its inputs as they stood at its base version.

    Returns a built segment with the same rows in the same order, so the masks the
    manifest records for `ref` stay valid. Raises `NotFound` when the base version,
    the lineage or an input is no longer retained.
    """
    if ref.base_version is None or ref.lineage is None:
        raise ValueError(f"{ref.key}: not a compacted segment")
    lineage = json.loads(store.get(ref.lineage).data)
    base = Manifests(store, schema.name).load(ref.base_version)
    by_id = {s.id: s for s in base.segments}
    level0 = tuple(by_id[sid] for sid in lineage["level0"] if sid in by_id)
    others = tuple(by_id[sid] for sid in lineage["inputs"] if sid in by_id)
    plan = Plan(base, level0, (OutputPlan(lineage["partition"], others),), lineage["floor"])
    inputs = _Inputs(store, schema, cache_dir / "rebuild")
    try:
        output = _gather(plan, plan.outputs[0], inputs, Masks(store), cache_dir / "build")
    finally:
        inputs.close()
    if output.built is None or output.built.count != ref.count:
        raise ValueError(f"{ref.key}: its inputs no longer give {ref.count} rows")
    return output.built
