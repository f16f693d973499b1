"""Compaction: merge level-0 segments into per-partition level-1 segments, drop
masked rows and tombstones that can no longer matter, and commit by manifest CAS.

A compaction holds the lease `compact-<collection>` so two compactors do not do
the same work twice; correctness rests on the commit alone. The commit is a pure
function of the manifest it lands on: every input segment must still be there
(else another compactor won and this one stands down), rows masked by commits
that landed while the merge was built are masked again in the outputs, and a
manifest already carrying a newer lease token refuses the commit (fencing).

A merge is deterministic — inputs in manifest order, rows in input order, only
the rows live at the base version — so a corrupt compacted segment can be
rebuilt row for row from its inputs while the base version is retained.
"""

from __future__ import annotations

import logging
import shutil
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
    build_segment,
    load_segment,
    upload_segment,
)
from brainy.maintenance.leases import LeaseLost, LeaseManager
from brainy.storage import ObjectStore
from brainy.table.manifest import Manifest, Manifests, SegmentRef

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
    manifest: Manifest, schema: CollectionSchema, settings: Settings, *, force: bool = False
) -> Plan:
    """Choose the work: all level-0 segments once there are `compact_min_segments`
    of them (any, when forced); per partition, the dirty segments (many rows
    masked) and, when the partition would exceed `max_segments_per_partition`,
    its smallest segments, merged with the level-0 rows routed to it."""
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
        dirty = [
            s
            for s in segs
            if s.live == 0 or len(s.deleted) > DIRTY_FRACTION * s.count or (force and s.deleted)
        ]
        clean = sorted((s for s in segs if s not in dirty), key=lambda s: (s.live, s.id))
        # The output joins the clean segments kept: merge the smallest to stay in bound.
        overflow = max(0, len(clean) + 1 - settings.max_segments_per_partition)
        merged = dirty + clean[:overflow] if (take_level0 or dirty) else []
        if take_level0 or merged:
            # Keep manifest order: it decides the row order of the output.
            chosen = {s.id for s in merged}
            ordered = tuple(s for s in manifest.segments if s.id in chosen)
            outputs.append(OutputPlan(p, ordered))
    return Plan(manifest, level0 if take_level0 else (), tuple(outputs))


@dataclass
class _Output:
    plan: OutputPlan
    built: BuiltSegment | None
    # (input segment id, input row) → output row, for re-masking on rebase.
    row_of: dict[tuple[str, int], int]


class _Inputs:
    """The input segments of a merge, each downloaded once, and the partition of
    each level-0 row, hashed once whatever the number of outputs."""

    def __init__(self, store: ObjectStore, schema: CollectionSchema, cache_dir: Path) -> None:
        self.store = store
        self.schema = schema
        self.cache_dir = cache_dir
        self._segments: dict[str, LoadedSegment] = {}
        self._partitions: dict[str, np.ndarray] = {}

    def segment(self, ref: SegmentRef) -> LoadedSegment:
        if ref.id not in self._segments:
            self._segments[ref.id] = load_segment(self.store, ref.key, ref.id, self.cache_dir)
        return self._segments[ref.id]

    def close(self) -> None:
        """Remove the downloaded inputs: merged away, they are not read again."""
        self._segments.clear()
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def partitions(self, ref: SegmentRef) -> np.ndarray:
        if ref.id not in self._partitions:
            ids = self.segment(ref).header.ids
            self._partitions[ref.id] = hash_partitions(
                ids, self.schema.partitions, self.schema.seed
            )
        return self._partitions[ref.id]


def _gather(plan: Plan, out: OutputPlan, inputs: _Inputs, workdir: Path) -> _Output:
    """Build one output segment from the rows of its inputs live at the base."""
    position = {ref.id: i for i, ref in enumerate(plan.base.segments)}
    feeds = sorted(
        {r.id: r for r in (*plan.level0, *out.inputs)}.values(), key=lambda r: position[r.id]
    )
    ids: list[str] = []
    timestamps: list[np.ndarray] = []
    writers: list[str] = []
    metadata: list[Any] = []
    vectors: list[np.ndarray] = []
    row_of: dict[tuple[str, int], int] = {}
    schema = inputs.schema
    for ref in feeds:
        seg = inputs.segment(ref)
        header = seg.header
        live = np.ones(header.count, dtype=bool)
        live[list(ref.deleted)] = False
        if ref.level == 0:
            live &= inputs.partitions(ref) == out.partition
        rows = np.flatnonzero(live)
        for r in rows.tolist():
            row_of[(ref.id, r)] = len(ids)
            ids.append(header.ids[r])
            writers.append(header.writers[r])
            metadata.append(header.metadata[r])
        timestamps.append(header.timestamps[rows])
        vectors.append(np.asarray(seg.vectors[rows], dtype=np.float32))
    if not ids:
        return _Output(out, None, row_of)
    seg_rows = SegmentRows(
        ids=ids,
        timestamps=np.concatenate(timestamps),
        writers=writers,
        metadata=metadata,
        vectors=np.concatenate(vectors),
    )
    built = build_segment(
        seg_rows, metric=schema.metric, n_trees=schema.n_trees, seed=schema.seed, workdir=workdir
    )
    return _Output(out, built, row_of)


def _apply(
    parent: Manifest,
    plan: Plan,
    outputs: list[tuple[_Output, SegmentRef]],
    horizon_us: int,
    lease_token: int | None,
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
        masked = set()
        for sid, base_ref in inputs.items():
            fresh = set(current[sid].deleted) - set(base_ref.deleted)
            masked.update(output.row_of[(sid, r)] for r in fresh if (sid, r) in output.row_of)
        new_refs.append(ref.with_deleted(masked) if masked else ref)
    segments = [ref for ref in parent.segments if ref.id not in inputs]
    segments += [ref for ref in new_refs if ref.live > 0]
    tombstones = {rid: o for rid, o in parent.tombstones.items() if o[0] >= horizon_us}
    return replace(
        parent,
        segments=tuple(segments),
        tombstones=tombstones,
        lease_token=lease_token if lease_token is not None else parent.lease_token,
    )


def lease_resource(collection: str) -> str:
    return f"compact-{collection}"


def compact(
    app: Any,
    collection: str,
    *,
    force: bool = False,
    leases: LeaseManager | None = None,
    sweep_first: bool = True,
    before_commit: Callable[[], None] | None = None,
) -> CompactionReport:
    """Sweep unindexed batches, then merge segments under the collection's lease.

    Args:
        app: the `Brainy` instance (its store, settings and indexer).
        collection: the collection to compact.
        force: merge whatever level-0 and masked rows there are, below the thresholds.
        leases: the lease manager (tests pass one with a fake clock).
        sweep_first: index batches no event delivered before merging (and so learn
            the horizon below which tombstones can go).
        before_commit: called once the outputs are uploaded, before the commit (a
            seam for tests that land other commits in between).
    """
    schema: CollectionSchema = app.require_schema(collection)
    settings: Settings = app.settings
    store: ObjectStore = app.store
    report = CompactionReport(collection)
    leases = leases or LeaseManager(store, app.writer_id, ttl=settings.lease_ttl)
    lease = leases.acquire(lease_resource(collection))
    if lease is None:
        report.status = "busy"
        return report
    report.lease_token = lease.token
    try:
        horizon_us = 0
        if sweep_first:
            from brainy.maintenance.sweeper import sweep

            swept = sweep(app, collection)
            report.sweep = swept.to_dict()
            # No horizon when some batch could not be indexed: keep every tombstone.
            if swept.horizon is not None:
                horizon_us = int((swept.horizon - settings.tombstone_grace) * 1_000_000)
        manifests = Manifests(store, collection)
        base = manifests.latest()
        if base is None:
            report.status = "nothing-to-do"
            return report
        plan = plan_compaction(base, schema, settings, force=force)
        droppable = sum(1 for o in base.tombstones.values() if o[0] < horizon_us)
        if plan.empty and not droppable:
            report.status = "nothing-to-do"
            report.version = base.version
            return report
        lease = leases.renew(lease)
        outputs = _build_outputs(store, plan, schema, Path(settings.cache_dir))
        lease = leases.renew(lease)
        if before_commit is not None:
            before_commit()
        leases.check(lease)

        def update(parent: Manifest) -> Manifest | None:
            return _apply(parent, plan, outputs, horizon_us, lease.token)

        try:
            manifest, _ = manifests.commit(
                update, schema=schema.frozen(), committed_by=app.writer_id, base=base
            )
        except CompactionConflict:
            report.status = "conflict"
            return report
        report.status = "compacted"
        report.version = manifest.version
        report.inputs = len(plan.inputs)
        report.outputs = sum(1 for _, ref in outputs if ref.live > 0)
        report.rows_in = sum(ref.count for ref in plan.inputs)
        report.rows_out = sum(ref.count for _, ref in outputs)
        report.masked_dropped = sum(len(ref.deleted) for ref in plan.inputs)
        report.tombstones_dropped = len(base.tombstones) - sum(
            1 for o in base.tombstones.values() if o[0] >= horizon_us
        )
        return report
    except LeaseLost as e:
        log.warning("compaction of %s stood down: %s", collection, e)
        report.status = "lost-lease"
        return report
    finally:
        leases.release(lease)


def _build_outputs(
    store: ObjectStore, plan: Plan, schema: CollectionSchema, cache_dir: Path
) -> list[tuple[_Output, SegmentRef]]:
    inputs = _Inputs(store, schema, cache_dir / "compaction")
    try:
        return _upload_outputs(store, plan, schema, inputs, cache_dir / "build")
    finally:
        inputs.close()


def _upload_outputs(
    store: ObjectStore, plan: Plan, schema: CollectionSchema, inputs: _Inputs, workdir: Path
) -> list[tuple[_Output, SegmentRef]]:
    results = []
    for out in plan.outputs:
        output = _gather(plan, out, inputs, workdir)
        if output.built is None:
            continue
        built = output.built
        try:
            key = upload_segment(store, schema.name, built)
        finally:
            built.path.unlink(missing_ok=True)
        ref = SegmentRef.uploaded(
            built,
            key,
            level=1,
            partition=out.partition,
            inputs=tuple(r.id for r in (*plan.level0, *out.inputs)),
            base_version=plan.base.version,
        )
        results.append((output, ref))
    return results


def rebuild_compacted(
    store: ObjectStore, schema: CollectionSchema, ref: SegmentRef, cache_dir: Path
) -> BuiltSegment:
    """Rebuild a compacted segment from its inputs as they stood at its base version.

    Returns a built segment with the same rows in the same order, so the masks the
    manifest records for `ref` stay valid. Raises `NotFound` when the base version
    or an input is no longer retained.
    """
    if ref.base_version is None or not ref.inputs:
        raise ValueError(f"{ref.key}: not a compacted segment")
    base = Manifests(store, schema.name).load(ref.base_version)
    by_id = {s.id: s for s in base.segments}
    inputs = [by_id[sid] for sid in ref.inputs if sid in by_id]
    level0 = tuple(s for s in inputs if s.level == 0)
    others = tuple(s for s in inputs if s.level > 0)
    plan = Plan(base, level0, (OutputPlan(ref.partition or 0, others),))
    inputs = _Inputs(store, schema, cache_dir / "rebuild")
    try:
        output = _gather(plan, plan.outputs[0], inputs, cache_dir / "build")
    finally:
        inputs.close()
    if output.built is None or output.built.count != ref.count:
        raise ValueError(f"{ref.key}: its inputs no longer give {ref.count} rows")
    return output.built
