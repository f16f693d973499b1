"""The sweeper: indexes batches that no event ever indexed.

Notifications get lost (a platform outage, a misconfigured trigger, a crash
between the put and the event). The sweeper lists `<collection>/wal/` and hands
every batch that may not be applied to the same `Indexer.index` an event would
have reached, so a lost notification delays a record but never drops it.
Indexing is idempotent, so a sweep racing the real event is harmless.

A batch is known applied, and skipped without being read, when it was written
before the newest manifest's `swept` instant (a previous sweep's horizon,
recorded by the compaction that followed it) or is the source of one of its
level-0 segments. The rest — batches written since the last recorded sweep —
are indexed; those already applied cost one read and commit nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from brainy.format.batch import WAL, collection_of_batch
from brainy.storage import StorageError
from brainy.table.manifest import CommitFailed

if TYPE_CHECKING:
    from brainy.maintenance.context import Maintenance

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep of a collection's `wal/` found and did.

    Attributes:
        collection: the collection swept.
        started: epoch seconds just before the listing began; every batch written
            before this instant (less the clock margin) was listed.
        margin: the clock skew allowed between this machine and the store.
        older_than: batches younger than this many seconds were left to their events.
        seen: batch objects listed.
        already_applied: of those, applied by the newest manifest (or by the time
            the indexer looked).
        indexed: applied by this sweep (their events were lost or are late).
        quarantined: corrupt batches moved to quarantine by the indexer.
        missing: listed, then gone before they could be read.
        deferred: younger than `older_than`, left alone.
        failed: keys whose indexing failed with a storage or commit error (retried
            by the next sweep); any failure voids the horizon.
        version: the newest manifest version after the sweep (0: none).
        unrecorded: the oldest modification time among the batches written since
            the manifest's `swept` instant (None: there are none); once a
            compaction records this sweep's horizon, GC may collect them.
        indexed_keys: the keys this sweep applied.
        oldest_unapplied: the modification time of the oldest batch the listing
            found not yet applied (indexed by this sweep, deferred, failed or
            quarantined); None: every batch listed was applied. `lag` derives the
            index lag from it.
    """

    collection: str
    started: float
    older_than: float = 0.0
    margin: float = 0.0
    seen: int = 0
    already_applied: int = 0
    indexed: int = 0
    quarantined: int = 0
    missing: int = 0
    deferred: int = 0
    failed: list[str] = field(default_factory=list)
    version: int = 0
    unrecorded: float | None = None
    indexed_keys: list[str] = field(default_factory=list)
    oldest_unapplied: float | None = None

    @property
    def lag(self) -> float:
        """Seconds the oldest batch not yet applied had waited when the listing
        began (0: none was waiting)."""
        if self.oldest_unapplied is None:
            return 0.0
        return max(0.0, self.started - self.oldest_unapplied)

    def _unapplied(self, modified: float) -> None:
        if self.oldest_unapplied is None or modified < self.oldest_unapplied:
            self.oldest_unapplied = modified

    @property
    def horizon(self) -> float | None:
        """Every batch written before this instant is applied, quarantined or gone;
        None when a batch could not be indexed. Compaction may drop a tombstone only
        once its delete is older than the horizon (no older copy can still arrive)."""
        return None if self.failed else self.started - self.older_than - self.margin

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "horizon": self.horizon, "lag": self.lag}


def sweep(ctx: Maintenance, collection: str, *, older_than: float = 0) -> SweepReport:
    """Index every batch of `collection` that may not be applied yet.

    Args:
        ctx: the store, and the indexer (the same code events reach) to apply with.
        collection: the collection to sweep.
        older_than: leave batches younger than this many seconds (by the store's
            modification time) to the events that are probably on their way.

    Returns:
        The counts, the keys indexed and the time the listing started.

    Raises:
        StorageError: the listing or the manifest read failed.
    """
    manifests = ctx.manifests_of(collection)
    # A remote store's clock may differ from ours by the skew allowed, and S3 and GCS
    # report modification times truncated to the second.
    margin = 0.0 if ctx.store.local_clock else max(manifests.clock_margin, 1.0)
    report = SweepReport(collection, started=time.time(), older_than=older_than, margin=margin)
    manifest = manifests.latest()
    swept = manifest.swept if manifest else 0.0
    sources = {ref.source for ref in manifest.segments if ref.source} if manifest else set()
    cutoff = report.started - older_than
    for info in ctx.store.list(f"{collection}/{WAL}/"):
        if collection_of_batch(info.key) != collection:
            continue
        report.seen += 1
        if info.modified >= swept:
            report.unrecorded = min(report.unrecorded or info.modified, info.modified)
        if info.modified < swept or info.key in sources:
            report.already_applied += 1
            continue
        if older_than and info.modified > cutoff:
            report.deferred += 1
            report._unapplied(info.modified)
            continue
        try:
            result = ctx.index(info.key)
        except (StorageError, CommitFailed) as e:
            log.warning("sweep %s: could not index %s: %s", collection, info.key, e)
            report.failed.append(info.key)
            report._unapplied(info.modified)
            continue
        if result.status == "already-applied":
            report.already_applied += 1
            continue
        if result.status == "missing":
            report.missing += 1
            continue
        report._unapplied(info.modified)
        if result.status == "applied":
            report.indexed += 1
            report.indexed_keys.append(info.key)
        elif result.status == "quarantined":
            report.quarantined += 1
        else:
            # "ignored": the collection is not declared on this instance; nothing
            # can index it here, so the horizon must not claim otherwise.
            report.failed.append(info.key)
    latest = manifests.latest(manifest)
    report.version = latest.version if latest else 0
    if report.indexed or report.quarantined:
        log.info(
            "sweep %s: %d indexed, %d quarantined of %d batches",
            collection,
            report.indexed,
            report.quarantined,
            report.seen,
        )
    return report
