"""Garbage collection: manifest versions, segments and batches no retained version needs.

The rules, for one collection at instant `now`:

**Retained versions.** Walking down from the newest version, every version is
retained until, and including, the first one created before `now - retention`:
that one was current at the start of the window, so a reader (or a time-travel
query) at any instant inside the window sees a retained version. The newest
version is therefore always retained. Older versions are deleted, oldest first;
`_latest` is never deleted, and is first pointed at the newest version if it
names one about to go (a reader or a committer probing forward from a deleted
version would find nothing).

**Segments.** An object under `<collection>/segments/<id>/` is kept while any
retained version references segment `<id>`. An unreferenced one is deleted once
its modification time is older than `gc_grace`: a younger one may be uploaded
for a commit still in flight. The delete is conditional on the object being the
one listed (same ETag and modification time): re-uploading a segment refreshes
it, so one that is about to be referenced again is left alone.

**Batches.** A batch object in `<collection>/wal/` is deleted when all hold:

1. every retained version has applied it (so no reader's version, and no sweep,
   can still need it; a batch no retained version has applied is never deleted);
2. it was written more than `batch_retention` ago;
3. no retained version has a level-0 segment built from it (`SegmentRef.sources`):
   repair rebuilds a level-0 segment from its batch. Batches behind compacted
   (level > 0) segments are not held: those are rebuilt from their input segments
   while they are retained, and after that the store's durability is relied on.

The keys of the batches deleted are then dropped from `applied` by a manifest
commit, so the manifest does not grow with every batch ever written. The object
goes before the key does: a redelivered event for it then finds no object
("missing") instead of applying it again. A key is dropped only once its object
is known gone: deleted by this run, or applied by the oldest retained version
(read before the listing), absent from the listing and absent to a HEAD — the
last catches keys left behind by a collector that died before its commit.

Quarantined objects, `_brainy/` and anything else outside `manifests/`,
`segments/` and `wal/` are never touched. A dry run computes the same lists and
deletes and commits nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from brainy.core.config import Settings, validate_name
from brainy.format.batch import WAL, collection_of_batch
from brainy.storage import NotFound, ObjectInfo, ObjectStore, PreconditionFailed, StorageError
from brainy.table.manifest import CommitFailed, Manifest, Manifests

log = logging.getLogger(__name__)


@dataclass
class GCReport:
    """What one garbage collection of a collection deleted (or, dry, would delete).

    Attributes:
        collection: the collection collected.
        dry_run: nothing was deleted or committed.
        now: the instant the ages were measured from.
        newest: the newest version at the start (None: never committed).
        retained: the version numbers retained, ascending.
        versions: manifest version keys deleted, oldest first.
        segments: segment object keys deleted.
        batches: batch object keys deleted.
        skipped: keys that changed between the listing and their delete, left for
            the next run.
        segments_kept: segment objects kept (referenced or young).
        batches_kept: batch objects kept.
        applied_dropped: keys dropped from `applied` by the commit below.
        committed: the version that dropped them (None: no commit).
    """

    collection: str
    dry_run: bool
    now: float
    newest: int | None = None
    retained: list[int] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    segments_kept: int = 0
    batches_kept: int = 0
    applied_dropped: int = 0
    committed: int | None = None

    @property
    def deleted(self) -> list[str]:
        """Every key deleted (or, dry, to delete): versions, segments, batches."""
        return [*self.versions, *self.segments, *self.batches]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retained_versions(manifests: Manifests, versions: list[int], cutoff: float) -> list[Manifest]:
    """The retained versions, newest first: down to and including the first one
    created before `cutoff` (the version current at the start of the window)."""
    retained: list[Manifest] = []
    for version in reversed(versions):
        try:
            manifest = manifests.load(version)
        except NotFound:
            # Another collector deleted it, so it is older than its window: stop.
            break
        retained.append(manifest)
        if manifest.created < cutoff:
            break
    return retained


def collect_garbage(
    store: ObjectStore,
    collection: str,
    settings: Settings,
    *,
    now: float | None = None,
    dry_run: bool = False,
) -> GCReport:
    """Delete what no retained manifest version of `collection` needs (rules above).

    Args:
        store: the bucket.
        collection: the collection to collect.
        settings: `retention`, `gc_grace`, `batch_retention` and the instance id.
        now: the instant ages are measured from (defaults to the clock; tests pass
            a later one instead of waiting).
        dry_run: list what would be deleted, delete and commit nothing.

    Returns:
        The keys deleted (or to delete) and the versions retained.

    Raises:
        StorageError: a listing or a read failed; nothing after it was deleted.
    """
    validate_name(collection)
    now = time.time() if now is None else now
    report = GCReport(collection, dry_run, now)
    manifests = Manifests(store, collection)
    # Versions are read before the objects are listed: a segment or batch that a
    # later commit adds is young (grace) or unapplied in these versions, so kept.
    versions = manifests.versions()
    retained = retained_versions(manifests, versions, now - settings.retention)
    if versions and not retained:
        # Without the newest version every segment would look unreferenced.
        raise StorageError(f"{collection}: version {versions[-1]} is listed but cannot be read")
    report.newest = retained[0].version if retained else None
    report.retained = sorted(m.version for m in retained)
    oldest = report.retained[0] if retained else 0
    expired = [v for v in versions if v < oldest]

    referenced = {ref.id for m in retained for ref in m.segments}
    rebuild_sources = {
        source for m in retained for ref in m.segments if ref.level == 0 for source in ref.sources
    }
    applied_everywhere = (
        frozenset.intersection(*(m.applied_set for m in retained)) if retained else frozenset()
    )

    doomed_segments: list[ObjectInfo] = []
    segments_prefix = f"{collection}/segments/"
    for info in store.list(segments_prefix):
        segment_id = info.key[len(segments_prefix) :].split("/", 1)[0]
        if segment_id in referenced or info.modified > now - settings.gc_grace:
            report.segments_kept += 1
        else:
            doomed_segments.append(info)

    doomed_batches: list[ObjectInfo] = []
    listed: set[str] = set()
    for info in store.list(f"{collection}/{WAL}/"):
        if collection_of_batch(info.key) != collection:
            continue
        listed.add(info.key)
        if (
            info.key in applied_everywhere
            and info.key not in rebuild_sources
            and info.modified <= now - settings.batch_retention
        ):
            doomed_batches.append(info)
        else:
            report.batches_kept += 1

    if dry_run:
        report.versions = [manifests.key(v) for v in expired]
        report.segments = [info.key for info in doomed_segments]
        report.batches = [info.key for info in doomed_batches]
        return report

    if expired and _point_hint_at(manifests, report.newest or 0, oldest):
        for version in expired:
            store.delete(manifests.key(version))
            report.versions.append(manifests.key(version))
    for info in doomed_segments:
        (report.segments if _delete_unchanged(store, info) else report.skipped).append(info.key)
    for info in doomed_batches:
        (report.batches if _delete_unchanged(store, info) else report.skipped).append(info.key)
    if retained:
        # Also keys whose batch went without the commit that should have followed
        # (a collector that died in between): applied before the listing, not in it.
        vanished = (retained[0].applied_set & retained[-1].applied_set) - listed
        gone = set(report.batches) | {key for key in vanished if not store.exists(key)}
        if gone:
            _drop_applied(manifests, retained[0], gone, settings, report)
    if report.deleted:
        log.info(
            "gc %s: deleted %d versions, %d segments, %d batches (retained %s)",
            collection,
            len(report.versions),
            len(report.segments),
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


def _drop_applied(
    manifests: Manifests,
    newest: Manifest,
    gone: set[str],
    settings: Settings,
    report: GCReport,
) -> None:
    """Commit the newest version without the `applied` keys of deleted batches."""

    def update(parent: Manifest) -> Manifest | None:
        kept = tuple(key for key in parent.applied if key not in gone)
        report.applied_dropped = len(parent.applied) - len(kept)
        return replace(parent, applied=kept) if report.applied_dropped else None

    try:
        manifest, committed = manifests.commit(
            update, schema=newest.schema, committed_by=f"gc-{settings.instance_id}", base=newest
        )
    except CommitFailed as e:
        # The keys only cost space; the next collection drops them.
        log.warning("gc %s: could not drop applied keys: %s", manifests.collection, e)
        report.applied_dropped = 0
        return
    if committed:
        report.committed = manifest.version
