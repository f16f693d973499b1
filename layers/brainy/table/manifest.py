"""Manifest versions: the commit log of a collection (DESIGN §5).

Version N+1 is created by put-if-absent at `<collection>/manifests/<N+1:020d>.json`;
that single conditional put is the commit. A writer that loses the race reads the
winner, re-applies its change to it (the change re-checks what it assumed) and
tries again. `_latest` is a hint written after the commit; readers read it with a
conditional GET and probe forward until a version is missing.

A manifest's size grows with its number of segments only. What used to grow with
history lives elsewhere:

* masked rows: in each segment's immutable deletion file (`format.deletes`),
  which the segment's ref points at;
* tombstones: in the segments themselves, beside the rows (`format.segment`);
* the set of applied batches: not kept at all. Applying a batch is idempotent by
  last-writer-wins — every record carries a unique (timestamp, writer) order, so
  a record already applied finds itself (or something newer) and changes nothing
  — as long as the newest order of every id is remembered. Tombstones remember
  it for deleted ids, and compaction drops a tombstone only once it is older
  than the sweeper's horizon (every batch written before it was applied); the
  manifest's `floor` records that bound, and records older than the floor are
  known to be applied already (or superseded), so they are ignored.

Two rules keep garbage collection and slow committers apart:

* **No version number is used twice.** GC deletes a version only once its
  successor is older than `gc_grace`, and a committer re-reads the newest version
  (through `_latest`) before putting on a base it confirmed more than
  `gc_grace / 2` ago. A put therefore lands only in a slot that never held a
  version: the slot after the base was seen empty, and filling then emptying it
  takes longer than the committer may wait.
* **Nothing a commit references is collected under it.** GC deletes an
  unreferenced object only if it is older than `gc_grace` by a clock read before
  it reads the versions; a commit refuses (`StaleUpload`) to reference objects
  uploaded more than `gc_grace / 2` ago, and its author uploads them again under
  fresh keys. A commit that GC did not see therefore references only objects too
  young for that GC to delete.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from brainy.storage import NotFound, NotModified, ObjectStore, PreconditionFailed, StorageError
from brainy.storage.cas import contention_delay

if TYPE_CHECKING:
    from brainy.format.segment import BuiltSegment

log = logging.getLogger(__name__)

FORMAT = 2
DEFAULT_GC_GRACE = 3600.0
DEFAULT_CLOCK_MARGIN = 30.0


class CommitFailed(RuntimeError):
    """A commit could not land after every retry (sustained contention)."""


class StaleUpload(RuntimeError):
    """A commit would reference objects uploaded so long ago that garbage
    collection may have deleted them as orphans. Upload them again and retry."""


@dataclass(frozen=True)
class SegmentRef:
    """A live segment as the manifest records it.

    Attributes:
        id: the segment's digest (its checksum).
        key: where the segment object is.
        count: rows with a vector; `masked` of them are masked by `deletes`.
        tombstones: deletes the segment records (no vector).
        deletes: the key of the segment's current deletion file (None: no row
            masked).
        source: for a level-0 segment, the batch it was built from (repair).
        lineage: for a compacted segment, the key of the side object naming its
            inputs (repair rebuilds it from them at `base_version`).
        sketch: where the segment's sketch lies in its object, and its checksum
            (`SketchSpan`, as text); None: it has none.
    """

    id: str
    key: str
    count: int
    bytes: int
    min_ts: int
    max_ts: int
    level: int = 0
    partition: int | None = None
    tombstones: int = 0
    masked: int = 0
    deletes: str | None = None
    source: str | None = None
    lineage: str | None = None
    base_version: int | None = None
    sketch: str | None = None

    @property
    def live(self) -> int:
        return self.count - self.masked

    @property
    def checksum(self) -> str:
        # The id is the xxh3-128 digest of the object (which holds a build nonce).
        return self.id

    @classmethod
    def uploaded(cls, built: BuiltSegment, key: str, **fields: Any) -> SegmentRef:
        """The ref of a segment just built and uploaded at `key`."""
        return cls(
            id=built.id,
            key=key,
            count=built.count,
            bytes=built.size,
            min_ts=built.min_ts,
            max_ts=built.max_ts,
            tombstones=built.tombstones,
            sketch=_sketch(built),
            **fields,
        )

    def rebuilt(self, built: BuiltSegment, key: str) -> SegmentRef:
        """This ref, its segment built again (same rows) and uploaded at `key`."""
        return replace(self, id=built.id, key=key, bytes=built.size, sketch=_sketch(built))

    def to_dict(self) -> dict[str, Any]:
        # Defaults are left out: this is most of the manifest's bytes.
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is MISSING or value != f.default:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentRef:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _sketch(built: BuiltSegment) -> str | None:
    return None if built.sketch is None else str(built.sketch)


@dataclass(frozen=True)
class Manifest:
    """One immutable version of a collection's state.

    Attributes:
        floor: microseconds; records older than this are already applied or
            superseded (their tombstones may have been dropped), see the module doc.
        swept: epoch seconds; every batch object written before it is applied.
        centroids: for a semantic collection once first compacted, the key of its
            centroids object (`format.centroids`); set once, then carried forward
            by every commit (each update derives its result from its parent).
        confirmed: when (by the reader's monotonic clock) this version was seen to
            be the newest; not stored.
    """

    collection: str
    version: int
    schema: dict[str, Any]
    segments: tuple[SegmentRef, ...] = ()
    floor: int = 0
    swept: float = 0.0
    created: float = 0.0
    committed_by: str = ""
    commit_id: str = ""
    lease_token: int | None = None
    centroids: str | None = None
    confirmed: float = field(default=float("-inf"), compare=False)

    @property
    def live(self) -> int:
        return sum(s.live for s in self.segments)

    @property
    def masked(self) -> int:
        return sum(s.masked for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    def stats(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "segments": len(self.segments),
            "live": self.live,
            "masked": self.masked,
            "rows": sum(s.count for s in self.segments),
            "bytes": self.bytes,
            "tombstones": sum(s.tombstones for s in self.segments),
        }

    def to_json(self) -> bytes:
        d = {
            "format": FORMAT,
            "collection": self.collection,
            "version": self.version,
            "schema": self.schema,
            "segments": [s.to_dict() for s in self.segments],
            "floor": self.floor,
            "swept": self.swept,
            "created": self.created,
            "committed_by": self.committed_by,
            "commit_id": self.commit_id,
            "lease_token": self.lease_token,
            "stats": self.stats(),
        }
        if self.centroids is not None:
            d["centroids"] = self.centroids
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = json.loads(data)
        if d.get("format") != FORMAT:
            raise ValueError(f"manifest format {d.get('format')!r}, this build reads {FORMAT}")
        return cls(
            collection=d["collection"],
            version=d["version"],
            schema=d["schema"],
            segments=tuple(SegmentRef.from_dict(s) for s in d["segments"]),
            floor=int(d.get("floor", 0)),
            swept=float(d.get("swept", 0.0)),
            created=d.get("created", 0.0),
            committed_by=d.get("committed_by", ""),
            commit_id=d.get("commit_id", ""),
            lease_token=d.get("lease_token"),
            centroids=d.get("centroids"),
        )


class VersionCache:
    """Decoded manifest versions by (collection, version), least recently used
    evicted: versions are immutable, so a process that reads the same versions
    again (the compactor's GC, every pass) fetches each one once."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int], Manifest] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, manifests: Manifests, version: int) -> Manifest:
        """`manifests.load(version)`, from the cache when it was read before."""
        key = (manifests.collection, version)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        manifest = manifests.load(version)
        with self._lock:
            self._entries[key] = manifest
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return manifest


def empty_manifest(collection: str, schema: dict[str, Any]) -> Manifest:
    """Version 0: the state of a collection before its first commit (never stored)."""
    return Manifest(collection=collection, version=0, schema=schema)


class Manifests:
    """Reads and commits the manifest versions of one collection.

    Args:
        store: the bucket.
        collection: the collection.
        gc_grace: garbage collection's grace period; a base confirmed newest, or
            an upload begun, more than half of it ago is too old to commit on.
        clock_margin: the clock skew allowed between instances (`max_clock_skew`).
        clock: monotonic seconds (tests pass a fake one).
        on_commit: called with (parent, new) after each commit this object lands
            (the manifest hint written); it must not block or raise (see
            `brainy.write.broadcast`: it only queues an event).
    """

    def __init__(
        self,
        store: ObjectStore,
        collection: str,
        *,
        gc_grace: float = DEFAULT_GC_GRACE,
        clock_margin: float = DEFAULT_CLOCK_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        on_commit: Callable[[Manifest, Manifest], None] | None = None,
    ) -> None:
        self.store = store
        self.collection = collection
        self.prefix = f"{collection}/manifests/"
        self.latest_key = f"{self.prefix}_latest"
        self.confirm_window = gc_grace / 2
        self.clock_margin = clock_margin
        self.clock = clock
        self.on_commit = on_commit

    def key(self, version: int) -> str:
        return f"{self.prefix}{version:020d}.json"

    def load(self, version: int) -> Manifest:
        """A retained version. Raises `NotFound`."""
        return Manifest.from_json(self.store.get(self.key(version)).data)

    def versions(self) -> list[int]:
        """Every stored version number, ascending (a listing: for tools, not hot paths)."""
        out = []
        for info in self.store.list(self.prefix):
            name = info.key[len(self.prefix) :]
            if name.endswith(".json") and name[:-5].isdigit():
                out.append(int(name[:-5]))
        return sorted(out)

    def probe_forward(self, base: Manifest | None, start: int = 0) -> Manifest | None:
        """The newest version at or after max(start, base.version), found by loading
        the next version until one is missing; never older than `base`."""
        current = base
        version = max(start, base.version if base else 0)
        if current is None or current.version < version:
            try:
                current = self.load(version) if version > 0 else current
            except NotFound:
                current = base
                version = base.version if base else 0
                # The hint can name a version garbage collection has deleted; then
                # probing from the base would stop at a gap, and only a listing
                # shows where the retained versions are.
                found = self.versions()
                if found and found[-1] > version:
                    current, version = self.load(found[-1]), found[-1]
        while True:
            try:
                current = self.load(version + 1)
            except NotFound:
                return replace(current, confirmed=self.clock()) if current else None
            version += 1

    def read_hint(self, etag: str | None = None) -> tuple[int | None, str | None]:
        """(version, etag) of `_latest`; raises `NotModified` when `etag` still matches."""
        try:
            blob = self.store.get(self.latest_key, if_none_match=etag)
        except NotFound:
            return None, None
        try:
            return int(json.loads(blob.data)["version"]), blob.etag
        except (ValueError, KeyError, TypeError):
            return None, blob.etag

    def latest(self, base: Manifest | None = None) -> Manifest | None:
        """The newest committed version (None for a collection never committed)."""
        hint, _ = self.read_hint()
        if hint is None and base is None:
            found = self.versions()
            hint = found[-1] if found else 0
        return self.probe_forward(base, hint or 0)

    def write_hint(self, version: int) -> None:
        try:
            self.store.put(self.latest_key, json.dumps({"version": version}).encode())
        except StorageError as e:  # only a hint: readers probe forward anyway
            log.warning("could not update %s to %d: %s", self.latest_key, version, e)

    def stale(self, uploaded_at: float | None) -> bool:
        """Whether objects whose upload began at `uploaded_at` (epoch seconds) are
        too old to reference: a collector may take them for orphans."""
        return uploaded_at is not None and time.time() - uploaded_at > self.confirm_window

    def commit(
        self,
        update: Callable[[Manifest], Manifest | None],
        *,
        schema: dict[str, Any],
        committed_by: str,
        base: Manifest | None = None,
        uploaded_at: float | None = None,
        max_attempts: int = 100,
    ) -> tuple[Manifest, bool]:
        """Commit `update(base)` as the next version, rebasing until it lands.

        `update` receives the newest version (version 0 and `schema` for a new
        collection) and returns the new state, or None when there is nothing to do
        (for instance, the change is already in). After a lost race it is called
        again on the winner, so it must derive everything from its argument (side
        objects it writes, such as deletion files, are written afresh).

        Args:
            uploaded_at: when the caller began uploading the objects its change
                references (epoch seconds); see `StaleUpload`.

        Returns:
            (the manifest now current, whether this call committed it).

        Raises:
            CommitFailed: no attempt landed within `max_attempts`.
            StaleUpload: the objects must be uploaded again (under new keys) first.
        """
        commit_id = uuid.uuid4().hex
        current = self.latest() if base is None else base
        tried_on: Manifest | None = None  # the parent of the latest put
        for attempt in range(max_attempts):
            if current is not None and self.clock() - current.confirmed > self.confirm_window:
                # Too long since this base was seen newest: versions after it may
                # have come and gone (GC), and a put could land in an emptied slot.
                current = self.latest(current)
            parent = current or empty_manifest(self.collection, schema)
            if parent.commit_id == commit_id:
                # A put whose response was lost did land: it is our commit.
                self._committed(tried_on, parent)
                return parent, True
            if self.stale(uploaded_at):
                raise StaleUpload(
                    f"{self.collection}: uploads begun at {uploaded_at:.3f} are older than "
                    f"{self.confirm_window:g}s, half the GC grace period"
                )
            new = update(parent)
            if new is None:
                return parent, False
            new = replace(
                new,
                version=parent.version + 1,
                created=time.time(),
                committed_by=committed_by,
                commit_id=commit_id,
                floor=max(new.floor, parent.floor),
                swept=max(new.swept, parent.swept),
            )
            tried_on = parent
            try:
                self.store.put(self.key(new.version), new.to_json(), if_absent=True)
            except PreconditionFailed:
                time.sleep(contention_delay(attempt))
                current = self.probe_forward(parent)
                continue
            self.write_hint(new.version)
            self._committed(parent, new)
            return replace(new, confirmed=self.clock()), True
        raise CommitFailed(
            f"{self.collection}: could not commit after {max_attempts} attempts (contention)"
        )

    def _committed(self, parent: Manifest | None, new: Manifest) -> None:
        if self.on_commit is None:
            return
        try:
            self.on_commit(parent or empty_manifest(self.collection, new.schema), new)
        except Exception:
            # The commit has landed: nothing after it may turn it into a failure.
            log.exception(
                "%s: the commit hook failed after version %d", self.collection, new.version
            )


class ManifestView:
    """A reader's cached view of the newest version, refreshed at most once per
    `refresh_interval` by a conditional GET of `_latest` (one request, answered
    not-modified while nothing changed).

    The hint is only a hint: a writer may die between its commit and the hint, or
    fail to write it. So every `probe_every`-th refresh answered not-modified also
    looks for the version after the current one (one more GET), which bounds how
    stale a reader can be to `probe_every` refresh intervals whatever happens to
    the hint. The view never goes back to an older version.
    """

    def __init__(
        self,
        manifests: Manifests,
        refresh_interval: float,
        clock: Callable[[], float] = time.monotonic,
        probe_every: int = 3,
    ) -> None:
        self.manifests = manifests
        self.refresh_interval = refresh_interval
        self.clock = clock
        self.probe_every = probe_every
        self._current: Manifest | None = None
        self._etag: str | None = None
        self._checked = float("-inf")
        self._unchanged = 0
        # The newest version this reader has heard of (a hint, a `note`), served or not.
        self._heard = 0
        self._lock = threading.Lock()

    def note(self, version: int) -> None:
        """Record that `version` was committed (an event said so, say), before it is read."""
        self._heard = max(self._heard, version)

    def state(self) -> tuple[Manifest | None, int, float]:
        """(the version served, the newest version heard of, seconds since the store
        was last asked for a newer one): what `/metrics` reports, without a request."""
        current = self._current
        served = current.version if current is not None else 0
        return current, max(self._heard, served), self.clock() - self._checked

    def _fresh(self) -> bool:
        return self.clock() - self._checked < self.refresh_interval

    def current(self, *, force: bool = False) -> Manifest | None:
        """The newest version known, refreshed if the interval has passed.

        One caller refreshes at a time. Before the first refresh completes, every
        caller waits for it (a cold reader must not answer from nothing); after,
        callers arriving mid-refresh keep serving the version they have.
        """
        if not force and self._fresh():
            return self._current
        warm = self._current is not None and not force
        if not self._lock.acquire(blocking=not warm):
            return self._current
        try:
            if not force and self._fresh():
                return self._current
            now = self.clock()
            try:
                hint, etag = self.manifests.read_hint(self._etag)
            except NotModified:
                self._unchanged += 1
                if self._unchanged >= self.probe_every and self._current is not None:
                    self._unchanged = 0
                    self._keep_newest(self.manifests.probe_forward(self._current))
                self._checked = now
                return self._current
            self._unchanged = 0
            self.note(hint or 0)
            if hint is None and self._current is None:
                current = self.manifests.latest()
            else:
                current = self.manifests.probe_forward(self._current, hint or 0)
            # Only a completed refresh moves the ETag: after a failure the next
            # refresh must not be answered "not modified" on a version never read.
            self._keep_newest(current)
            self._etag, self._checked = etag, now
            return self._current
        finally:
            self._lock.release()

    def _keep_newest(self, manifest: Manifest | None) -> None:
        if manifest is not None and (
            self._current is None or manifest.version > self._current.version
        ):
            self._current = manifest

    def _advance(self, manifest: Manifest | None) -> None:
        with self._lock:
            self._keep_newest(manifest)

    def refresh_to(self, version: int) -> tuple[int, Manifest | None]:
        """Refresh now because `version` was announced (an index-updated event);
        a version at or below the one held changes nothing and costs no request.

        Returns:
            (the version held before, the manifest held now).
        """
        held = self._current.version if self._current is not None else 0
        if version <= held:
            return held, self._current
        current = self.current(force=True)
        if current is None or current.version < version:
            # The hint may lag the announced commit: look past it directly.
            self._advance(self.manifests.probe_forward(current, 0))
        return held, self._current

    def wait_for(self, version: int, timeout: float) -> Manifest | None:
        """Refresh until `version` is visible or `timeout` passes (read-your-writes)."""
        deadline = self.clock() + timeout
        delay = 0.02
        while True:
            current = self.current()
            if current is not None and current.version >= version:
                return current
            current = self.manifests.probe_forward(current, 0)
            self._advance(current)
            if current is not None and current.version >= version:
                return current
            if self.clock() >= deadline:
                return current
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
