"""Garbage collection: manifest versions, segments, side objects and batches no
retained version needs.

The rules, for one collection at instant `now` (read before anything else):

**Retained versions.** Walking down from the newest version, every version is
retained until, and including, the first one created before `now - retention`
(and before `now - gc_grace`): that one was current at the start of the window,
so a reader (or a time-travel query) at any instant inside the window sees a
retained version. The newest version is therefore always retained. Older
versions are deleted, oldest first; `_latest` is never deleted, and is first
pointed at the newest version if it names one about to go (a reader or a
committer probing forward from a deleted version would find nothing). A version
goes only once its successor is older than `gc_grace`, which is what lets a
committer know its put cannot land in a slot a deleted version left
(`table.manifest`).

**Segments and side objects** (`segments/`, `deletes/`, `meta/`). An object is
kept while any retained version references it (a segment's key, its deletion
file, its lineage, the collection's centroids). An unreferenced one is deleted
once its modification time is older than `gc_grace`: a younger one may be
uploaded for a commit still in flight, and a commit never references an upload
older than half the grace (it uploads again instead), so nothing this run
deletes can be referenced by a commit it did not see. The delete is conditional
on the object being the one listed (same ETag and modification time).

**Batches.** A batch object in `<collection>/wal/` is deleted when all hold:

1. it was written before the newest version's `swept` instant: a sweep found it
   and it is applied (so no sweep needs it again, and a redelivered event finds
   it missing, which is a no-op);
2. it was written more than `batch_retention` ago;
3. no retained version has a level-0 segment built from it (`SegmentRef.source`):
   repair rebuilds a level-0 segment from its batch. Batches behind compacted
   segments are not held: those are rebuilt from their input segments while
   they are retained, and after that the store's durability is relied on.

Quarantined objects, `_brainy/` and anything else outside `manifests/`,
`segments/`, `deletes/`, `meta/` and `wal/` are never touched. Nothing is
committed. A dry run computes the same lists and deletes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from brainy.core.config import Settings, validate_name
from brainy.format.batch import WAL, collection_of_batch
from brainy.maintenance.context import Progress
from brainy.storage import NotFound, ObjectInfo, ObjectStore, PreconditionFailed, StorageError
from brainy.table.manifest import Manifest, Manifests, VersionCache

log = logging.getLogger(__name__)


SIDE_PREFIXES = ("segments", "deletes", "meta")


@dataclass
class GCReport:
    """What one garbage collection of a collection deleted (or, dry, would delete).

    Attributes:
        collection: the collection collected.
        dry_run: nothing was deleted.
        now: the instant the ages were measured from.
        newest: the newest version at the start (None: never committed).
        retained: the version numbers retained, ascending.
        versions: manifest version keys deleted, oldest first.
        segments: segment object keys deleted.
        side: deletion files and other side objects deleted.
        batches: batch object keys deleted.
        skipped: keys that changed between the listing and their delete, left for
            the next run.
        segments_kept: segment and side objects kept (referenced or young).
        batches_kept: batch objects kept.
    """

    collection: str
    dry_run: bool
    now: float
    newest: int | None = None
    retained: list[int] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    side: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    segments_kept: int = 0
    batches_kept: int = 0

    @property
    def deleted(self) -> list[str]:
        """Every key deleted (or, dry, to delete)."""
        return [*self.versions, *self.segments, *self.side, *self.batches]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retained_versions(
    manifests: Manifests, versions: list[int], cutoff: float, cache: VersionCache | None = None
) -> list[Manifest]:
    """The retained versions, newest first: down to and including the first one
    created before `cutoff` (the version current at the start of the window).
    `versions` is a listing, so every version in it was there when listed."""
    retained: list[Manifest] = []
    for version in reversed(versions):
        try:
            manifest = cache.load(manifests, version) if cache else manifests.load(version)
        except NotFound:
            # Another collector deleted it, so it is older than its window: stop.
            break
        retained.append(manifest)
        if manifest.created < cutoff:
            break
    return retained


def referenced_keys(manifest: Manifest) -> set[str]:
    """Every object key `manifest` references: segments, deletion files, lineages,
    the centroids."""
    keys: set[str] = {manifest.centroids} if manifest.centroids else set()
    for ref in manifest.segments:
        keys.add(ref.key)
        keys.update(k for k in (ref.deletes, ref.lineage) if k)
    return keys


def collect_garbage(
    store: ObjectStore,
    collection: str,
    settings: Settings,
    *,
    now: float | None = None,
    dry_run: bool = False,
    cache: VersionCache | None = None,
    progress: Progress | None = None,
) -> GCReport:
    """Delete what no retained manifest version of `collection` needs (rules above).

    Args:
        store: the bucket.
        collection: the collection to collect.
        settings: `retention`, `gc_grace` and `batch_retention`.
        now: the instant ages are measured from (defaults to the clock; tests pass
            a later one instead of waiting).
        dry_run: list what would be deleted, delete nothing.
        cache: versions decoded by earlier runs in this process (each version in
            the retention window is then fetched once, not once a run).
        progress: told of each object deleted (`"gc"`, done, total).

    Returns:
        The keys deleted (or to delete) and the versions retained.

    Raises:
        StorageError: a listing or a read failed; nothing after it was deleted.
    """
    validate_name(collection)
    now = time.time() if now is None else now
    report = GCReport(collection, dry_run, now)
    manifests = Manifests(store, collection, gc_grace=settings.gc_grace)
    # Versions are read before the objects are listed: an object that a later
    # commit references is younger than the grace (see the module doc), so kept.
    versions = manifests.versions()
    cutoff = now - max(settings.retention, settings.gc_grace)
    retained = retained_versions(manifests, versions, cutoff, cache)
    if versions and not retained:
        # Without the newest version every segment would look unreferenced.
        raise StorageError(f"{collection}: version {versions[-1]} is listed but cannot be read")
    report.newest = retained[0].version if retained else None
    report.retained = sorted(m.version for m in retained)
    oldest = report.retained[0] if retained else 0
    expired = [v for v in versions if v < oldest]

    referenced = set().union(*(referenced_keys(m) for m in retained))
    sources = {ref.source for m in retained for ref in m.segments if ref.source}
    swept = retained[0].swept if retained else 0.0

    doomed_side: list[ObjectInfo] = []
    for prefix in SIDE_PREFIXES:
        for info in store.list(f"{collection}/{prefix}/"):
            if info.key in referenced or info.modified > now - settings.gc_grace:
                report.segments_kept += 1
            else:
                doomed_side.append(info)

    doomed_batches: list[ObjectInfo] = []
    for info in store.list(f"{collection}/{WAL}/"):
        if collection_of_batch(info.key) != collection:
            continue
        if (
            info.modified < swept
            and info.modified <= now - settings.batch_retention
            and info.key not in sources
        ):
            doomed_batches.append(info)
        else:
            report.batches_kept += 1

    segments_prefix = f"{collection}/segments/"
    if dry_run:
        report.versions = [manifests.key(v) for v in expired]
        for info in doomed_side:
            (report.segments if info.key.startswith(segments_prefix) else report.side).append(
                info.key
            )
        report.batches = [info.key for info in doomed_batches]
        return report

    total = len(expired) + len(doomed_side) + len(doomed_batches)

    def tick() -> None:
        if progress is not None:
            progress("gc", len(report.deleted) + len(report.skipped), total)

    if expired and _point_hint_at(manifests, report.newest or 0, oldest):
        for version in expired:
            store.delete(manifests.key(version))
            report.versions.append(manifests.key(version))
            tick()
    for info in doomed_side:
        if not _delete_unchanged(store, info):
            report.skipped.append(info.key)
        elif info.key.startswith(segments_prefix):
            report.segments.append(info.key)
        else:
            report.side.append(info.key)
        tick()
    for info in doomed_batches:
        (report.batches if _delete_unchanged(store, info) else report.skipped).append(info.key)
        tick()
    if report.deleted:
        log.info(
            "gc %s: deleted %d versions, %d segments, %d side objects, %d batches (retained %s)",
            collection,
            len(report.versions),
            len(report.segments),
            len(report.side),
            len(report.batches),
            report.retained,
        )
    return report


def _point_hint_at(manifests: Manifests, newest: int, oldest: int) -> bool:
    """Make sure `_latest` names a retained version before older ones go; False if
    it could not be made to, in which case no version may be deleted."""
    hint, _ = manifests.read_hint()
    if hint is not None and hint >= oldest:
        return True
    manifests.write_hint(newest)
    hint, _ = manifests.read_hint()
    if hint is None or hint < oldest:
        log.warning("gc %s: _latest still names %s; versions kept", manifests.collection, hint)
        return False
    return True


def _delete_unchanged(store: ObjectStore, info: ObjectInfo) -> bool:
    """Delete the object only if it is still the one listed; True if it is gone.

    The ETag condition catches a rewrite on stores whose ETag changes with every
    write; S3's ETag is the content's MD5, so the modification time is compared too.
    """
    try:
        current = store.head(info.key)
    except NotFound:
        return True
    if current.etag != info.etag or current.modified != info.modified:
        return False
    try:
        store.delete(info.key, if_match=info.etag)
    except NotFound:
        return True
    except PreconditionFailed:
        return False
    return True
