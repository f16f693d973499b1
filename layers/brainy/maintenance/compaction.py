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

Level-0 rows go to a partition by the collection's strategy (DESIGN §6): the
hash of the id, or, for a semantic collection, the nearest centroid. The
centroids are trained (seeded k-means on a sample of the live level-0 rows) by
the first compaction of a semantic collection with enough rows, written as an
immutable object before its outputs are built, named by each output's lineage
(a rebuild routes with them) and set in the manifest by the commit; every later
compaction routes with the ones the manifest names. They never change: a
retrain would mean rewriting every partition, which compaction does not do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core.config import CollectionSchema, Settings
from brainy.core.heap import release_freed
from brainy.format.calibration import (
    Neighbours,
    calibrate_probes,
    probe_queries,
    probes_by_level,
)
from brainy.format.centroids import Centroids, read_centroids, write_centroids
from brainy.format.partitioning import (
    auto_partitions,
    hash_partitions,
    nearest_centroids,
    train_basis,
    train_centroids,
)
from brainy.format.segment import (
    BuiltSegment,
    LoadedSegment,
    SegmentHeader,
    SegmentRows,
    Tombstones,
    VectorChunks,
    build_collection_segment,
    load_segment,
    read_rows,
    read_vectors,
    upload_segment,
)
from brainy.maintenance.context import Maintenance, Progress
from brainy.maintenance.leases import LeaseLost, LeaseManager
from brainy.maintenance.sweeper import sweep
from brainy.storage import ObjectStore, PreconditionFailed
from brainy.table.deletions import Masks
from brainy.table.manifest import Manifest, Manifests, SegmentRef, StaleUpload
from brainy.write.indexer import reupload

log = logging.getLogger(__name__)

# A partition segment with more than this share of its rows masked is rewritten.
DIRTY_FRACTION = 0.3
# Centroids are trained on up to this many live rows per partition (and at most
# SAMPLE_CAP rows): enough for k-means, bounded in memory and time.
SAMPLE_PER_PARTITION = 64
SAMPLE_CAP = 65_536
# A partition of at least these raw bytes returns the heap's free pages before its
# build (`brainy.core.heap`): a trim costs its pages' faults when they are reused,
# worth it where the build's peak is the compaction's, not for small partitions.
TRIM_BEFORE_BYTES = 32 << 20
# A semantic collection's first compaction waits for this many live level-0 rows
# per partition: its centroids are kept for good, so they are not trained on a
# handful of rows (level-0 segments are searched in full meanwhile).
MIN_TRAINING_ROWS = 32
# The probes recorded from every row's true partition spare a third of the misses
# each level allows: the calibration's queries (midpoints and Gaussian draws) came
# out easier than real ones (the shared MiniLM set's 100 real queries: 0.942 at
# 0.95 with none spared, 0.989 at 0.99 with half).
EXACT_MARGIN = 1 / 3
# An "auto" collection is retrained once it calls for this many times the
# partitions it has (its rows grew about fourfold since).
RETRAIN_GROWTH = 2


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
    partitions: int = 1  # the collection's partition count ("auto" resolved)
    # New centroids for an "auto" collection that outgrew its own: every segment
    # is in `level0`, routed afresh (see `plan_compaction`).
    retrain: bool = False

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
    partitions: int | None = None,
) -> Plan:
    """Choose the work: all level-0 segments once there are `compact_min_segments`
    of them (any, when forced); per partition, the dirty segments (many rows
    masked, or nothing live but tombstones the floor lets go) and, when the
    partition would exceed `max_segments_per_partition`, its smallest segments,
    merged with the level-0 rows routed to it.

    A semantic collection of `"auto"` partitions whose live rows have grown to
    call for at least `RETRAIN_GROWTH` times its partitions is retrained instead:
    new centroids, sized for it now, and every segment routed by them into new
    partitions (a rewrite of the collection, at each fourfold growth of its rows,
    so amortised over its life it rewrites each row about 1.3 times).

    Args:
        partitions: the partition count of a collection whose centroids the
            manifest names (theirs); otherwise the schema's, `"auto"` sized from
            the live level-0 rows (see `auto_partitions`).
    """
    level0 = tuple(s for s in manifest.segments if s.level == 0)
    take_level0 = bool(level0) and (force or len(level0) >= settings.compact_min_segments)
    if partitions is None:
        fixed = schema.fixed_partitions
        partitions = fixed or auto_partitions(sum(s.live for s in level0))
    elif manifest.centroids is not None and schema.fixed_partitions is None:
        wanted = auto_partitions(manifest.live)
        if wanted >= RETRAIN_GROWTH * partitions:
            everything = tuple(s for s in manifest.segments if s.live or s.tombstones)
            outputs = tuple(OutputPlan(p, ()) for p in range(wanted))
            return Plan(manifest, everything, outputs, floor, wanted, retrain=True)
    if take_level0 and schema.strategy == "semantic" and manifest.centroids is None:
        take_level0 = sum(s.live for s in level0) >= MIN_TRAINING_ROWS * partitions
    by_partition: dict[int, list[SegmentRef]] = {}
    for ref in manifest.segments:
        if ref.level > 0:
            by_partition.setdefault(ref.partition or 0, []).append(ref)
    outputs = []
    for p in range(partitions) if take_level0 else sorted(by_partition):
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
    return Plan(manifest, level0 if take_level0 else (), tuple(outputs), floor, partitions)


def _dirty(ref: SegmentRef, force: bool, floor: int) -> bool:
    if ref.count and ref.live == 0:
        return True
    if ref.masked > DIRTY_FRACTION * ref.count or (force and ref.masked):
        return True
    # Tombstones the floor has passed: rewritten when they are all the segment is.
    return bool(ref.tombstones) and ref.min_ts < floor and (force or ref.live == 0)


@dataclass
class _Routing:
    """Which partition a level-0 row or tombstone goes to.

    Rows: the id's hash, or for a semantic collection the nearest centroid.
    Tombstones carry no vector, and go by the id's hash in both: a tombstone need
    not share a partition with the rows of its id, because only writers read
    tombstones (last-writer-wins reads the headers of every segment, never a
    search's probe set), so any deterministic choice is correct, and the hash
    spreads them evenly.

    Attributes:
        key: the centroids object (None: hash routing).
        written_at: when this compaction wrote it (None: the manifest named it).
    """

    schema: CollectionSchema
    centroids: Centroids | None = None
    key: str | None = None
    written_at: float | None = None
    # Centroids trained by this merge, not written yet: their probe calibration
    # waits for the routing pass, which sees every row (`neighbours`).
    trained: bool = False
    neighbours: Neighbours | None = None

    @property
    def count(self) -> int:
        if self.centroids is not None:
            return len(self.centroids)
        return int(self.schema.fixed_partitions or 1)

    def rows(self, ids: Sequence[str], vectors: np.ndarray | None) -> np.ndarray:
        """The partitions of rows with these ids and vectors (hash routing reads
        no vector: None will do)."""
        if self.centroids is None:
            return hash_partitions(ids, self.count, self.schema.seed)
        assert vectors is not None, "semantic routing needs the rows' vectors"
        return nearest_centroids(vectors, self.centroids.matrix, self.schema.metric)

    def tombstones(self, ids: Sequence[str]) -> np.ndarray:
        return hash_partitions(ids, self.count, self.schema.seed)


def _load_routing(store: ObjectStore, schema: CollectionSchema, key: str | None) -> _Routing:
    if key is None:
        return _Routing(schema)
    return _Routing(schema, read_centroids(store, key), key)


def _route_rows(
    routing: _Routing, ids: Sequence[str], vectors: Iterable[np.ndarray]
) -> Iterable[tuple[np.ndarray, np.ndarray, int]]:
    """(vectors, their partitions, position of the first) per chunk of streamed rows."""
    done = 0
    for chunk in vectors:
        yield chunk, routing.rows(ids[done : done + len(chunk)], chunk), done
        done += len(chunk)


class _RowMap:
    """Where the rows of one input went in one output: input row `rows[j]` became
    output row `start + j`; any other row was not taken. Indexed like the array of
    output rows (-1: not taken) it stands for, at 8 bytes per row taken rather than
    per input row: every output of a merge has one for every level-0 input."""

    def __init__(self, rows: np.ndarray, start: int) -> None:
        self.rows = rows
        self.start = start

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        at = np.searchsorted(self.rows, rows)
        taken = at < self.rows.size
        taken[taken] = self.rows[at[taken]] == rows[taken]
        return np.where(taken, self.start + at, -1)


@dataclass
class _Output:
    plan: OutputPlan
    built: BuiltSegment | None
    # Per input segment id: where its rows went in the output, for re-masking rows
    # masked while the merge was built.
    row_of: dict[str, _RowMap]
    tombstones_in: int = 0


@dataclass(frozen=True)
class _Part:
    """What one input gives one output: its rows live at the base (increasing row
    numbers) with their columns, its tombstones kept, and the rows' vectors, read
    only when the build streams them."""

    rows: np.ndarray
    ids: list[str]
    timestamps: np.ndarray
    writers: list[str]
    metadata: list[Any]
    dead: Tombstones
    tombstones_in: int  # the input's tombstones in the output's partition, kept or not
    vectors: Iterable[np.ndarray] = ()


_NO_ROWS = np.zeros(0, dtype=np.int64)
_NOTHING = _Part(_NO_ROWS, [], _NO_ROWS, [], [], Tombstones(), 0)


def _pick(values: Sequence[Any], rows: np.ndarray) -> list[Any]:
    """`values` at `rows` (increasing, so as many rows as values means all of them)."""
    if rows.size == len(values):
        return list(values)
    return [values[r] for r in rows.tolist()]


def _part(
    header: SegmentHeader, rows: np.ndarray, dead_rows: np.ndarray, tombstones_in: int
) -> _Part:
    dead = header.tombstones
    return _Part(
        rows=rows,
        ids=_pick(header.ids, rows),
        timestamps=header.timestamps[rows],
        writers=_pick(header.writers, rows),
        metadata=_pick(header.metadata, rows),
        dead=Tombstones(
            _pick(dead.ids, dead_rows), dead.timestamps[dead_rows], _pick(dead.writers, dead_rows)
        ),
        tombstones_in=tombstones_in,
    )


def _unmasked(ref: SegmentRef, count: int, masks: Masks) -> np.ndarray:
    live = np.ones(count, dtype=bool)
    live[masks.rows(ref)] = False
    return live


def _groups(partitions: np.ndarray) -> dict[int, np.ndarray]:
    """partition → the positions in `partitions` that hold it, increasing."""
    if not partitions.size:
        return {}
    order = np.argsort(partitions, kind="stable")
    present, starts = np.unique(partitions[order], return_index=True)
    return dict(zip(present.tolist(), np.split(order, starts[1:]), strict=True))


class _Staged:
    """The live level-0 rows of a merge with several outputs, split by partition on
    local disk: each level-0 input is read once, not once per output, and none is
    held in memory. Per partition, a file of vectors (float32 rows) and a file of
    pickled parts (the columns each input gives it)."""

    def __init__(self, folder: Path, schema: CollectionSchema, routing: _Routing) -> None:
        self.folder = folder
        self.schema = schema
        self.routing = routing
        self._rows: dict[int, int] = {}  # vectors written per partition
        self._parts: tuple[int, dict[str, _Part]] | None = None

    def _file(self, partition: int, kind: str) -> Path:
        return self.folder / f"{partition}.{kind}"

    def add(self, ref: SegmentRef, segment: LoadedSegment, masks: Masks, floor: int) -> None:
        """Split one level-0 input's live rows and kept tombstones by partition."""
        header = segment.header
        rows = np.flatnonzero(_unmasked(ref, header.count, masks))
        vectors = read_vectors(segment.ann_path, header.metric, header.dimension, rows).chunks
        routed = [_NO_ROWS]
        neighbours = self.routing.neighbours
        for chunk, parts, _ in _route_rows(self.routing, _pick(header.ids, rows), vectors):
            routed.append(parts)
            if neighbours is not None:
                neighbours.add(chunk, parts)
            for p, at in _groups(parts).items():
                with open(self._file(p, "f32"), "ab") as out:
                    out.write(chunk[at].data)
        row_parts = np.concatenate(routed)
        dead = header.tombstones
        kept = dead.timestamps >= floor
        by_row, by_dead = _groups(row_parts), _groups(self.routing.tombstones(dead.ids))
        for p in sorted(by_row.keys() | by_dead.keys()):
            taken = rows[by_row.get(p, _NO_ROWS)]
            in_partition = by_dead.get(p, _NO_ROWS)
            part = _part(header, taken, in_partition[kept[in_partition]], in_partition.size)
            start = self._rows.get(p, 0)
            self._rows[p] = start + taken.size
            with open(self._file(p, "parts"), "ab") as out:
                pickle.dump((ref.id, start, part), out, protocol=pickle.HIGHEST_PROTOCOL)

    def part(self, ref: SegmentRef, partition: int) -> _Part:
        """What level-0 input `ref` gives `partition`."""
        if self._parts is None or self._parts[0] != partition:
            self._parts = None
            self._parts = (partition, self._load(partition))
        return self._parts[1].get(ref.id, _NOTHING)

    def _load(self, partition: int) -> dict[str, _Part]:
        parts: dict[str, _Part] = {}
        path = self._file(partition, "parts")
        if not path.exists():
            return parts
        vectors = self._file(partition, "f32")
        dim = self.schema.dimension
        with open(path, "rb") as f:
            while f.peek(1):
                ref_id, start, part = pickle.load(f)
                rows = np.arange(start, start + part.rows.size)
                parts[ref_id] = replace(part, vectors=read_rows(vectors, rows, dim))
        return parts

    def drop(self, partition: int) -> None:
        """Delete a partition's files once its output is built."""
        self._parts = None
        for kind in ("f32", "parts"):
            self._file(partition, kind).unlink(missing_ok=True)


class _Inputs:
    """The input segments of a merge, each downloaded once and deleted once merged;
    with several outputs, the level-0 rows split by partition first (`_Staged`)."""

    def __init__(self, store: ObjectStore, schema: CollectionSchema, cache_dir: Path) -> None:
        self.store = store
        self.schema = schema
        self.cache_dir = cache_dir
        self._segments: dict[str, LoadedSegment] = {}
        self._staged: _Staged | None = None
        self.routing = _Routing(schema)
        # The inputs whose rows are routed to partitions (the plan's `level0`; None:
        # the level-0 ones): the others are a partition's already.
        self.routed: set[str] | None = None

    def _routed(self, ref: SegmentRef) -> bool:
        return ref.level == 0 if self.routed is None else ref.id in self.routed

    def segment(self, ref: SegmentRef) -> LoadedSegment:
        if ref.id not in self._segments:
            self._segments[ref.id] = load_segment(self.store, ref.key, ref.id, self.cache_dir)
        return self._segments[ref.id]

    def release(self, ref: SegmentRef) -> None:
        """Delete an input's local files: merged, it is not read again."""
        segment = self._segments.pop(ref.id, None)
        if segment is not None:
            segment.ann_path.unlink(missing_ok=True)
            segment.ann_path.with_suffix(".json").unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the downloaded inputs: merged away, they are not read again."""
        self._segments.clear()
        self._staged = None
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def stage(self, level0: Sequence[SegmentRef], masks: Masks, floor: int) -> None:
        """Split the level-0 inputs by partition, for a merge with several outputs."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.cache_dir))
        self._staged = _Staged(folder, self.schema, self.routing)
        for ref in level0:
            self._staged.add(ref, self.segment(ref), masks, floor)
            self.release(ref)

    def done(self, out: OutputPlan) -> None:
        """Delete what only `out` needed: its level-1 inputs and staged rows."""
        for ref in out.inputs:
            self.release(ref)
        if self._staged is not None:
            self._staged.drop(out.partition)

    def _partitions_of(self, segment: LoadedSegment, rows: np.ndarray) -> np.ndarray:
        """The partitions of a level-0 input's `rows` (semantic: its vectors streamed
        through the centroids once)."""
        header = segment.header
        ids = _pick(header.ids, rows)
        if self.routing.centroids is None:
            return self.routing.rows(ids, None)
        chunks = read_vectors(segment.ann_path, header.metric, header.dimension, rows).chunks
        return np.concatenate(
            [_NO_ROWS, *(p for _, p, _ in _route_rows(self.routing, ids, chunks))]
        )

    def sample(self, level0: Sequence[SegmentRef], masks: Masks, size: int) -> np.ndarray:
        """`size` live rows of the level-0 inputs drawn without replacement by the
        collection's seed (fewer if there are fewer), read a chunk at a time.

        Each input is downloaded here (staging finds it on disk) but not kept
        loaded: holding every input's header at once would cost more memory than
        the merge itself (ids and metadata of the whole collection).
        """
        live = [np.flatnonzero(_unmasked(r, r.count, masks)) for r in level0]
        ends = np.cumsum([rows.size for rows in live])
        total = int(ends[-1]) if len(ends) else 0
        rng = np.random.default_rng(self.schema.seed)
        picks = np.sort(rng.choice(total, min(size, total), replace=False))
        # Filled in place: chunks copied, then concatenated, held the sample twice
        # (and glibc kept the chunks' pages after, see `brainy.core.heap`).
        out = np.empty((picks.size, self.schema.dimension), dtype=np.float32)
        at = 0
        for ref, rows, end in zip(level0, live, ends.tolist(), strict=True):
            mine = picks[(picks >= end - rows.size) & (picks < end)] - (end - rows.size)
            segment = load_segment(self.store, ref.key, ref.id, self.cache_dir)
            header = segment.header
            chunks = read_vectors(segment.ann_path, header.metric, header.dimension, rows[mine])
            at += chunks.read_into(out[at:])
        if at != picks.size:
            raise ValueError(f"compaction sample: {at} vectors read for {picks.size} rows")
        return out

    def part(self, ref: SegmentRef, partition: int, floor: int, masks: Masks) -> _Part:
        """What input `ref` gives the output of `partition`."""
        if self._routed(ref) and self._staged is not None:
            return self._staged.part(ref, partition)
        segment = self.segment(ref)
        header = segment.header
        live = _unmasked(ref, header.count, masks)
        dead = header.tombstones
        keep_dead = dead.timestamps >= floor
        tombstones_in = len(dead)
        if self._routed(ref):
            rows = np.flatnonzero(live)
            live[rows[self._partitions_of(segment, rows) != partition]] = False
            in_partition = self.routing.tombstones(dead.ids) == partition
            keep_dead &= in_partition
            tombstones_in = int(np.count_nonzero(in_partition))
        rows = np.flatnonzero(live)
        vectors = read_vectors(segment.ann_path, header.metric, header.dimension, rows)
        part = _part(header, rows, np.flatnonzero(keep_dead), tombstones_in)
        return replace(part, vectors=vectors.chunks)


def _gather(plan: Plan, out: OutputPlan, inputs: _Inputs, masks: Masks, workdir: Path) -> _Output:
    """Build one output segment from the rows of its inputs live at the base, and
    their tombstones at or above the plan's floor.

    The columns of the output's rows are gathered first; the vectors stream from
    the inputs (or the staged level-0 rows) into the build, a chunk at a time.
    """
    position = {ref.id: i for i, ref in enumerate(plan.base.segments)}
    feeds = sorted(
        {r.id: r for r in (*plan.level0, *out.inputs)}.values(), key=lambda r: position[r.id]
    )
    parts = [inputs.part(ref, out.partition, plan.floor, masks) for ref in feeds]
    row_of: dict[str, _RowMap] = {}
    count = 0
    for ref, part in zip(feeds, parts, strict=True):
        row_of[ref.id] = _RowMap(part.rows, count)
        count += part.rows.size
    tombstones_in = sum(part.tombstones_in for part in parts)
    dead = [part.dead for part in parts]
    if not count and not any(len(d) for d in dead):
        return _Output(out, None, row_of, tombstones_in)
    schema = inputs.schema
    seg_rows = SegmentRows(
        ids=_chain(part.ids for part in parts),
        timestamps=np.concatenate([part.timestamps for part in parts]),
        writers=_chain(part.writers for part in parts),
        metadata=_chain(part.metadata for part in parts),
        vectors=VectorChunks(
            schema.dimension, count, chain.from_iterable(p.vectors for p in parts)
        ),
        tombstones=Tombstones(
            _chain(d.ids for d in dead),
            np.concatenate([d.timestamps for d in dead]),
            _chain(d.writers for d in dead),
        ),
    )
    if count * schema.dimension * 4 >= TRIM_BEFORE_BYTES:
        # What gathering the rows left freed is not held beside the index's pages.
        release_freed()
    built = build_collection_segment(schema, seg_rows, workdir)
    return _Output(out, built, row_of, tombstones_in)


def _chain(lists: Iterable[Sequence[Any]]) -> list[Any]:
    return list(chain.from_iterable(lists))


def _apply(
    parent: Manifest,
    plan: Plan,
    outputs: list[tuple[_Output, SegmentRef]],
    masks: Masks,
    lease_token: int | None,
    swept: float,
    centroids: str | None = None,
) -> Manifest | None:
    """The compaction's commit, rebased on `parent` (see the module doc).
    `centroids`: the centroids the level-0 rows were routed by (None: by hash)."""
    if lease_token is not None and (parent.lease_token or 0) > lease_token:
        raise LeaseLost(
            f"{parent.collection}: version {parent.version} was committed under lease token "
            f"{parent.lease_token}, newer than this compaction's {lease_token}"
        )
    current = {ref.id: ref for ref in parent.segments}
    inputs = {ref.id: ref for ref in plan.inputs}
    if any(sid not in current for sid in inputs):
        raise CompactionConflict(f"{parent.collection}: inputs already compacted away")
    # A retrain replaces the centroids its base named; any other merge routes by
    # the manifest's own.
    current_centroids = plan.base.centroids if plan.retrain else centroids
    if centroids is not None and parent.centroids not in (None, current_centroids):
        raise CompactionConflict(f"{parent.collection}: routed by centroids no longer current")
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
        centroids=centroids if plan.retrain else (parent.centroids or centroids),
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
    progress: Progress | None = None,
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
        progress: told of each output merged (`"compact"`, done, total).
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
        unrecorded: float | None = None
        if sweep_first:
            swept_report = sweep(ctx, collection)
            report.sweep = swept_report.to_dict()
            unrecorded = swept_report.unrecorded
            # No horizon when some batch could not be indexed: keep every tombstone.
            if swept_report.horizon is not None:
                swept = max(swept, swept_report.horizon)
                floor = max(floor, int((swept - settings.tombstone_grace) * 1_000_000))
            base = manifests.latest(base)
        if base is None:
            report.status = "nothing-to-do"
            return report
        # Read once: the plan needs their count, the merge routes by them.
        current = read_centroids(store, base.centroids) if base.centroids is not None else None
        partitions = len(current) if current is not None else None
        plan = plan_compaction(
            base, schema, settings, force=force, floor=floor, partitions=partitions
        )
        # With nothing to merge, the sweep's horizon is still worth a commit when it
        # lets GC collect batches past their retention (or when asked to).
        record = swept > base.swept and (
            force
            or (unrecorded is not None and unrecorded < time.time() - settings.batch_retention)
        )
        if plan.empty and not record:
            report.status = "nothing-to-do"
            report.version = base.version
            return report
        lease = leases.renew(lease)
        outputs, routing = _build_outputs(ctx, plan, schema, current, progress)
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
                    routing.key,  # read at each attempt: a stale upload rewrites it
                )

            manifest = _commit(ctx, collection, update, plan, outputs, schema, routing)
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
    routing: _Routing,
) -> Manifest:
    manifests = ctx.manifests_of(collection)
    while True:
        times = [at for _, _, at in outputs]
        times += [routing.written_at] if routing.written_at is not None else []
        uploaded_at = min(times, default=None)
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
            if routing.written_at is not None and routing.centroids is not None:
                routing.written_at = time.time()
                routing.key = write_centroids(ctx.store, collection, routing.centroids)
            for i, (output, ref, _) in enumerate(outputs):
                assert output.built is not None
                at, new_ref = reupload(ctx.store, collection, output.built, ref)
                lineage = write_lineage(
                    ctx.store, collection, ref.id, plan, output.plan, routing.key
                )
                outputs[i] = (output, replace(new_ref, lineage=lineage), at)


def _routing(
    ctx: Maintenance,
    plan: Plan,
    schema: CollectionSchema,
    inputs: _Inputs,
    current: Centroids | None,
) -> _Routing:
    """The centroids the manifest names (`current`, read by the caller); for a
    semantic collection's first merge of level-0 rows (or a retrain), centroids
    trained on a sample of them, written by `_publish` once the probes each recall
    level needs are known: measured on every row by the routing pass of a merge
    with several outputs, estimated on the sample otherwise."""
    if schema.strategy != "semantic":
        return _Routing(schema)
    if not plan.retrain and (plan.base.centroids is not None or not plan.level0):
        return _Routing(schema, current, plan.base.centroids)
    k = plan.partitions
    # k-means needs SAMPLE_PER_PARTITION rows a centroid; the probe calibration
    # more (its estimate is pessimistic by the sample's sparsity): up to SAMPLE_CAP.
    sample = inputs.sample(plan.level0, ctx.masks, SAMPLE_CAP)
    # The sample is in input order: train on a seeded random part of it.
    order = np.random.default_rng(schema.seed).permutation(len(sample))
    training = sample[np.sort(order[: SAMPLE_PER_PARTITION * k])]
    matrix = train_centroids(training, k, schema.metric, schema.seed)
    centroids = Centroids(matrix, basis=train_basis(sample, schema.metric))
    routing = _Routing(schema, centroids, trained=True)
    if len(plan.outputs) > 1:
        queries = probe_queries(sample, schema.metric, schema.seed)
        routing.neighbours = Neighbours(queries, schema.metric)
    else:
        rows = sum(ref.live for ref in plan.base.segments)
        calibration = calibrate_probes(sample, matrix, schema.metric, schema.seed, rows)
        routing.centroids = replace(centroids, calibration=calibration)
    log.info("%s: trained %d centroids on %d rows", schema.name, k, len(training))
    return routing


def _publish(ctx: Maintenance, schema: CollectionSchema, routing: _Routing) -> None:
    """Write the centroids this merge trained (before any output is built, so their
    upload is the merge's oldest), their probes per recall level measured against
    every row's true partition when the routing pass saw them all."""
    assert routing.centroids is not None
    centroids = routing.centroids
    found = routing.neighbours
    if found is not None and found.labels.size:
        probes = probes_by_level(
            found.queries, found.labels, centroids.matrix, schema.metric, margin=EXACT_MARGIN
        )
        calibration = {"nprobe": probes, "queries": len(found.queries), "k": found.k}
        centroids = routing.centroids = replace(centroids, calibration=calibration)
    routing.written_at = time.time()
    routing.key = write_centroids(ctx.store, schema.name, centroids)
    routing.trained, routing.neighbours = False, None
    log.info(
        "%s: centroids %s, probes per recall level %s",
        schema.name, routing.key, centroids.calibration.get("nprobe"),
    )  # fmt: skip


def _build_outputs(
    ctx: Maintenance,
    plan: Plan,
    schema: CollectionSchema,
    current: Centroids | None,
    progress: Progress | None = None,
) -> tuple[list[_Built], _Routing]:
    """Build the plan's outputs, routing level-0 rows by `current` (the centroids
    the base names) or by centroids trained here."""
    cache_dir = Path(ctx.settings.cache_dir)
    inputs = _Inputs(ctx.store, schema, cache_dir / "compaction")
    inputs.routed = {ref.id for ref in plan.level0}
    results: list[_Built] = []
    try:
        routing = inputs.routing = _routing(ctx, plan, schema, inputs, current)
        release_freed()  # the training sample's pages, before the rows are split
        if plan.level0 and len(plan.outputs) > 1:
            inputs.stage(plan.level0, ctx.masks, plan.floor)
        if routing.trained:
            _publish(ctx, schema, routing)
        # One output at a time, each input deleted once merged: a merge holds one
        # partition's rows, never the whole collection.
        for done, out in enumerate(plan.outputs, start=1):
            output = _gather(plan, out, inputs, ctx.masks, cache_dir / "build")
            inputs.done(out)
            if progress is not None:
                progress("compact", done, len(plan.outputs))
            if output.built is None:
                continue
            built = output.built
            uploaded_at = time.time()
            key = upload_segment(ctx.store, schema.name, built)
            lineage = write_lineage(ctx.store, schema.name, built.id, plan, out, routing.key)
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
    return results, routing


def lineage_key(collection: str, segment_id: str) -> str:
    return f"{collection}/meta/lineage/{segment_id}-{uuid.uuid4().hex[:12]}.json"


def write_lineage(
    store: ObjectStore,
    collection: str,
    segment_id: str,
    plan: Plan,
    out: OutputPlan,
    centroids: str | None = None,
) -> str:
    """Record what a compacted segment was merged from (a side object the manifest
    points at, so the manifest stays small however many inputs a merge had), and
    the centroids its level-0 rows were routed by (None: by hash)."""
    body = {
        "segment": segment_id,
        "base_version": plan.base.version,
        "partition": out.partition,
        "floor": plan.floor,
        "level0": [r.id for r in plan.level0],
        "inputs": [r.id for r in out.inputs],
        "centroids": centroids,
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
    inputs.routed = {ref.id for ref in level0}
    # Routed by the centroids the merge used: the first compaction's base version
    # names none yet, its lineage does.
    inputs.routing = _load_routing(store, schema, lineage.get("centroids"))
    try:
        output = _gather(plan, plan.outputs[0], inputs, Masks(store), cache_dir / "build")
    finally:
        inputs.close()
    if output.built is None or output.built.count != ref.count:
        raise ValueError(f"{ref.key}: its inputs no longer give {ref.count} rows")
    return output.built
