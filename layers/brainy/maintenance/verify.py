"""Verify a collection's newest manifest against the bucket.

`verify` checks, for the newest manifest version: every referenced segment exists
and (deep) its content hashes to its id; its header agrees with the ref (rows,
tombstones, timestamps, dimension, metric) and the ref's size with the object;
its deletion file exists, decodes, passes its checksum and masks as many rows as
the ref says, all in range; a compacted segment's lineage exists; no id is live
twice and none is live behind a newer tombstone (last-writer-wins, `table.lww`);
the stats written in the manifest agree with its segments; the centroids object
a semantic collection's manifest names exists, decodes, passes its checksum and
holds one centroid per partition of the collection's dimension; (deep) the batches
level-0 segments were built from, where still stored, decode.

`maintenance.repair` acts on the report.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brainy.core.config import AUTO
from brainy.format.batch import Batch, CorruptBatch
from brainy.format.centroids import CorruptCentroids, read_centroids
from brainy.format.deletes import CorruptDeletionFile
from brainy.format.segment import (
    CorruptSegment,
    SegmentHeader,
    load_segment,
    read_segment_header,
    read_sketch,
)
from brainy.format.sketch import CorruptSketch, SketchSpan
from brainy.maintenance.context import Progress
from brainy.storage import NotFound, ObjectStore
from brainy.table.deletions import Masks
from brainy.table.headers import HeaderCache
from brainy.table.lww import Copy, conflicts, copies_of, winner
from brainy.table.manifest import Manifest, Manifests, SegmentRef

log = logging.getLogger(__name__)

# Problem kinds.
CORRUPT_MANIFEST = "corrupt-manifest"
STATS_MISMATCH = "stats-mismatch"
MISSING_SEGMENT = "missing-segment"
CORRUPT_SEGMENT = "corrupt-segment"
SEGMENT_MISMATCH = "segment-mismatch"
DUPLICATE_SEGMENT = "duplicate-segment"
BAD_MASK = "bad-mask"
MISSING_LINEAGE = "missing-lineage"
DUPLICATE_LIVE = "duplicate-live"
LIVE_AFTER_DELETE = "live-after-delete"
CORRUPT_BATCH = "corrupt-batch"
MISSING_CENTROIDS = "missing-centroids"
CORRUPT_CENTROIDS = "corrupt-centroids"

REBUILDABLE = (MISSING_SEGMENT, CORRUPT_SEGMENT)
RESOLVABLE = (DUPLICATE_LIVE, LIVE_AFTER_DELETE)


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


def verify(
    store: ObjectStore, collection: str, *, deep: bool = True, progress: Progress | None = None
) -> VerifyReport:
    """Check the newest manifest of `collection` against the objects it names.

    Args:
        store: the bucket (read-only is enough).
        collection: the collection to check.
        deep: download every segment and hash it, and decode every applied batch
            still stored; otherwise only sizes and segment headers are read.
        progress: told of each segment checked (`"verify"`, done, total).

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
    if manifest.centroids is not None:
        _check_centroids(store, manifest, manifest.centroids, report)
    masks = Masks(store)
    headers = HeaderCache(store)
    good: list[SegmentRef] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="brainy-verify-") as tmp:
        for ref in manifest.segments:
            if ref.id in seen:
                report.add(DUPLICATE_SEGMENT, ref.key, "referenced twice by the manifest")
                continue
            seen.add(ref.id)
            header = _check_segment(store, collection, manifest, ref, deep, Path(tmp), report)
            if header is not None and _check_mask(store, masks, ref, report):
                headers.put(ref.id, header)
                good.append(ref)
            report.segments_checked += 1
            if progress is not None:
                progress("verify", report.segments_checked, len(manifest.segments))
    _check_live(live_copies(good, headers, masks), report)
    if deep:
        _check_batches(store, manifest, report)
    return report


def _check_stats(
    store: ObjectStore, manifests: Manifests, manifest: Manifest, report: VerifyReport
) -> None:
    key = manifests.key(manifest.version)
    stored = json.loads(store.get(key).data).get("stats")
    if stored != manifest.stats():
        report.add(STATS_MISMATCH, key, f"stats say {stored}, segments say {manifest.stats()}")


def _check_centroids(
    store: ObjectStore, manifest: Manifest, key: str, report: VerifyReport
) -> None:
    try:
        centroids = read_centroids(store, key)
    except NotFound:
        report.add(MISSING_CENTROIDS, key, "referenced by the manifest but not stored")
        return
    except CorruptCentroids as e:
        report.add(CORRUPT_CENTROIDS, key, str(e))
        return
    shape = centroids.matrix.shape
    partitions = manifest.schema.get("partitions")
    # "auto": the count was decided at training; any is consistent.
    want = (shape[0] if partitions == AUTO else partitions, manifest.schema.get("dimension"))
    if shape != want:
        report.add(CORRUPT_CENTROIDS, key, f"shape {shape}, schema says {want}")
    # Partitions the segments name must exist among the centroids.
    beyond = sorted({r.partition for r in manifest.segments if (r.partition or 0) >= shape[0]})
    if beyond:
        report.add(CORRUPT_CENTROIDS, key, f"{shape[0]} centroids, segments in partition {beyond}")


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
    if not ref.key.startswith(f"{collection}/segments/{ref.id}/"):
        report.add(SEGMENT_MISMATCH, ref.key, f"key does not name segment {ref.id}")
    try:
        info = store.head(ref.key)
        if deep:
            loaded = load_segment(store, ref.key, ref.id, tmp)
            header = loaded.header
            if loaded.index is not None:
                loaded.index.unload()
            for suffix in (".ann", ".json"):
                (tmp / f"{ref.id}{suffix}").unlink(missing_ok=True)
            if ref.sketch is not None:
                # What a cold query reads in its place: where the ref says, as it says.
                sketch = read_sketch(store, ref.key, SketchSpan.parse(ref.sketch))
                if sketch.count != ref.count:
                    raise CorruptSketch(f"sketch of {sketch.count} rows, ref says {ref.count}")
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
    dead = header.tombstones
    columns = {len(header.ids), len(header.timestamps), len(header.writers), len(header.metadata)}
    if columns != {ref.count} or header.count != ref.count:
        mismatches.append(
            f"header has {header.count} rows ({sorted(columns)} per column), ref says {ref.count}"
        )
    elif {len(dead.ids), len(dead.timestamps), len(dead.writers)} != {ref.tombstones}:
        mismatches.append(f"header has {len(dead.ids)} tombstones, ref says {ref.tombstones}")
    else:
        stamps = [t for t in (header.timestamps, dead.timestamps) if t.size]
        if stamps and (
            min(int(t.min()) for t in stamps) != ref.min_ts
            or max(int(t.max()) for t in stamps) != ref.max_ts
        ):
            mismatches.append("timestamp range differs from the ref")
    for name in ("dimension", "metric"):
        if name == "dimension" and not ref.count:
            continue  # tombstones only: no vectors to have a dimension
        if name in manifest.schema and getattr(header, name) != manifest.schema[name]:
            mismatches.append(
                f"{name} {getattr(header, name)!r}, schema says {manifest.schema[name]!r}"
            )
    if mismatches:
        report.add(SEGMENT_MISMATCH, ref.key, "; ".join(mismatches))
    if ref.lineage is not None and not store.exists(ref.lineage):
        report.add(MISSING_LINEAGE, ref.lineage, f"lineage of {ref.key} is not stored")
    return header


def _check_mask(store: ObjectStore, masks: Masks, ref: SegmentRef, report: VerifyReport) -> bool:
    """Whether `ref`'s deletion file can be read and agrees with the ref."""
    if ref.deletes is None:
        if ref.masked:
            report.add(BAD_MASK, ref.key, f"ref says {ref.masked} rows masked but has no file")
            return False
        return True
    try:
        masks.rows(ref)
    except NotFound:
        report.add(BAD_MASK, ref.deletes, f"deletion file of {ref.key} is not stored")
        return False
    except (CorruptDeletionFile, ValueError) as e:
        report.add(BAD_MASK, ref.deletes, str(e))
        return False
    return True


def live_copies(
    refs: list[SegmentRef], headers: HeaderCache, masks: Masks
) -> dict[str, list[Copy]]:
    """id → every unmasked row and every tombstone holding it, over `refs`."""
    copies: dict[str, list[Copy]] = {}
    for ref in refs:
        for rid, copy in copies_of(ref, headers, masks):
            copies.setdefault(rid, []).append(copy)
    return copies


def _check_live(copies: dict[str, list[Copy]], report: VerifyReport) -> None:
    for rid, lost in conflicts(copies).items():
        best = winner(copies[rid])
        if best.is_tombstone:
            report.add(LIVE_AFTER_DELETE, rid, f"live behind the delete at {best.order}")
        else:
            where = ", ".join(f"{c.segment} row {c.row}" for c in (best, *lost))
            report.add(DUPLICATE_LIVE, rid, f"live {len(lost) + 1} times: {where}")


def _check_batches(store: ObjectStore, manifest: Manifest, report: VerifyReport) -> None:
    for source in sorted({ref.source for ref in manifest.segments if ref.source}):
        try:
            batch = Batch.decode(store.get(source).data, source)
        except NotFound:
            continue  # collected (past batch_retention)
        except CorruptBatch as e:
            report.add(CORRUPT_BATCH, source, str(e))
            continue
        if batch.collection != manifest.collection:
            report.add(CORRUPT_BATCH, source, f"says collection {batch.collection!r}")
        report.batches_checked += 1
