"""Manifest versions: the commit log of a collection (DESIGN §5).

Version N+1 is created by put-if-absent at `<collection>/manifests/<N+1:020d>.json`;
that single conditional put is the commit. A writer that loses the race reads the
winner, re-applies its change to it (the change re-checks what it assumed) and
tries again. `_latest` is a hint written after the commit; readers read it with a
conditional GET and probe forward until a version is missing.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from brainy.storage import NotFound, NotModified, ObjectStore, PreconditionFailed, StorageError

if TYPE_CHECKING:
    from brainy.format.segment import BuiltSegment

log = logging.getLogger(__name__)

FORMAT = 1


class CommitFailed(RuntimeError):
    """A commit could not land after every retry (sustained contention)."""


@dataclass(frozen=True)
class SegmentRef:
    """A live segment as the manifest records it."""

    id: str
    key: str
    count: int
    bytes: int
    min_ts: int
    max_ts: int
    level: int = 0
    partition: int | None = None
    deleted: tuple[int, ...] = ()  # masked row numbers, sorted
    sources: tuple[str, ...] = ()  # the batch keys its rows came from
    # For a compacted segment: the segments it merged and the manifest version whose
    # masks it merged them at, so repair can rebuild it row for row.
    inputs: tuple[str, ...] = ()
    base_version: int | None = None

    @property
    def live(self) -> int:
        return self.count - len(self.deleted)

    @property
    def checksum(self) -> str:
        # Segments are content-addressed: the id is the xxh3-128 of the object.
        return self.id

    def with_deleted(self, rows: set[int] | list[int]) -> SegmentRef:
        return replace(self, deleted=tuple(sorted(set(self.deleted) | set(rows))))

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
            **fields,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentRef:
        return cls(
            **{
                **d,
                "deleted": tuple(d.get("deleted", ())),
                "sources": tuple(d.get("sources", ())),
                "inputs": tuple(d.get("inputs", ())),
            }
        )


@dataclass(frozen=True)
class Manifest:
    """One immutable version of a collection's state."""

    collection: str
    version: int
    schema: dict[str, Any]
    segments: tuple[SegmentRef, ...] = ()
    applied: tuple[str, ...] = ()  # batch keys already applied
    tombstones: dict[str, tuple[int, str]] = field(default_factory=dict)
    created: float = 0.0
    committed_by: str = ""
    commit_id: str = ""
    lease_token: int | None = None

    @cached_property
    def applied_set(self) -> frozenset[str]:
        return frozenset(self.applied)

    @property
    def live(self) -> int:
        return sum(s.live for s in self.segments)

    @property
    def masked(self) -> int:
        return sum(len(s.deleted) for s in self.segments)

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
            "batches_applied": len(self.applied),
            "tombstones": len(self.tombstones),
        }

    def to_json(self) -> bytes:
        d = {
            "format": FORMAT,
            "collection": self.collection,
            "version": self.version,
            "schema": self.schema,
            "segments": [asdict(s) for s in self.segments],
            "applied": list(self.applied),
            "tombstones": {k: list(v) for k, v in sorted(self.tombstones.items())},
            "created": self.created,
            "committed_by": self.committed_by,
            "commit_id": self.commit_id,
            "lease_token": self.lease_token,
            "stats": self.stats(),
        }
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = json.loads(data)
        return cls(
            collection=d["collection"],
            version=d["version"],
            schema=d["schema"],
            segments=tuple(SegmentRef.from_dict(s) for s in d["segments"]),
            applied=tuple(d["applied"]),
            tombstones={k: (int(v[0]), str(v[1])) for k, v in d["tombstones"].items()},
            created=d.get("created", 0.0),
            committed_by=d.get("committed_by", ""),
            commit_id=d.get("commit_id", ""),
            lease_token=d.get("lease_token"),
        )


def empty_manifest(collection: str, schema: dict[str, Any]) -> Manifest:
    """Version 0: the state of a collection before its first commit (never stored)."""
    return Manifest(collection=collection, version=0, schema=schema)


class Manifests:
    """Reads and commits the manifest versions of one collection."""

    def __init__(self, store: ObjectStore, collection: str) -> None:
        self.store = store
        self.collection = collection
        self.prefix = f"{collection}/manifests/"
        self.latest_key = f"{self.prefix}_latest"

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
        the next version until one is missing."""
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
                return current
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

    def commit(
        self,
        update: Callable[[Manifest], Manifest | None],
        *,
        schema: dict[str, Any],
        committed_by: str,
        base: Manifest | None = None,
        max_attempts: int = 100,
    ) -> tuple[Manifest, bool]:
        """Commit `update(base)` as the next version, rebasing until it lands.

        `update` receives the newest version (version 0 and `schema` for a new
        collection) and returns the new state, or None when there is nothing to do
        (for instance, the change is already in). It must be a pure function of its
        argument: after a lost race it is called again on the winner.

        Returns:
            (the manifest now current, whether this call committed it).

        Raises:
            CommitFailed: no attempt landed within `max_attempts`.
        """
        commit_id = uuid.uuid4().hex
        # A caller's base was just read: commit on it, and let a lost put tell
        # whether newer versions exist rather than probing for them first.
        current = self.latest() if base is None else base
        for attempt in range(max_attempts):
            parent = current or empty_manifest(self.collection, schema)
            if parent.commit_id == commit_id:
                # A put whose response was lost did land: it is our commit.
                return parent, True
            new = update(parent)
            if new is None:
                return parent, False
            new = replace(
                new,
                version=parent.version + 1,
                created=time.time(),
                committed_by=committed_by,
                commit_id=commit_id,
            )
            try:
                self.store.put(self.key(new.version), new.to_json(), if_absent=True)
            except PreconditionFailed:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** min(attempt, 6))))
                current = self.probe_forward(parent)
                continue
            self.write_hint(new.version)
            return new, True
        raise CommitFailed(
            f"{self.collection}: could not commit after {max_attempts} attempts (contention)"
        )


class ManifestView:
    """A reader's cached view of the newest version, refreshed at most once per
    `refresh_interval` by a conditional GET of `_latest` (one request, answered
    not-modified while nothing changed)."""

    def __init__(
        self,
        manifests: Manifests,
        refresh_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manifests = manifests
        self.refresh_interval = refresh_interval
        self.clock = clock
        self._current: Manifest | None = None
        self._etag: str | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

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
                self._checked = now
                return self._current
            if hint is None and self._current is None:
                current = self.manifests.latest()
            else:
                current = self.manifests.probe_forward(self._current, hint or 0)
            # Only a completed refresh moves the ETag: after a failure the next
            # refresh must not be answered "not modified" on a version never read.
            self._current, self._etag, self._checked = current, etag, now
            return current
        finally:
            self._lock.release()

    def _advance(self, manifest: Manifest | None) -> None:
        with self._lock:
            if manifest is not None and (
                self._current is None or manifest.version > self._current.version
            ):
                self._current = manifest

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
