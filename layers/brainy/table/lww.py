"""The last-writer-wins engine: one implementation for indexing, verify, repair
and the tests' model.

Every record (upsert or delete) carries an order, (timestamp, writer), unique
over everything ever written. For each id, the record with the greatest order
wins: if it is an upsert, its row is live; if it is a delete, the id is absent.
Every other row of the id is masked. The result does not depend on the order in
which batches are indexed, and applying a record twice changes nothing (it finds
itself, or something newer).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from brainy.table.deletions import Masks
from brainy.table.headers import HeaderCache
from brainy.table.manifest import Manifest, SegmentRef

Order = tuple[int, str]  # (timestamp in microseconds, writer)
TOMBSTONE = -1  # the row of an entry that is a delete


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy of an id in a manifest: a live row, or a tombstone (row -1)."""

    order: Order
    segment: str
    row: int

    @property
    def is_tombstone(self) -> bool:
        return self.row == TOMBSTONE


def winner(copies: Iterable[Copy]) -> Copy:
    """The copy last-writer-wins keeps (a tombstone means: deleted)."""
    return max(copies, key=lambda c: c.order)


def losers(copies: Sequence[Copy]) -> list[Copy]:
    """The live rows among `copies` (all of one id) that must be masked."""
    best = winner(copies)
    return [c for c in copies if not c.is_tombstone and c is not best]


def copies_of(ref: SegmentRef, headers: HeaderCache, masks: Masks) -> Iterable[tuple[str, Copy]]:
    """(id, copy) for every unmasked row and every tombstone of a segment."""
    header = headers.get(ref)
    rows = np.arange(ref.count)
    if ref.masked:
        rows = np.setdiff1d(rows, masks.rows(ref), assume_unique=True)
    ids, writers = header.ids, header.writers
    for row, ts in zip(rows.tolist(), header.timestamps[rows].tolist(), strict=True):
        yield ids[row], Copy((ts, writers[row]), ref.id, row)
    dead = header.tombstones
    for rid, ts, writer in zip(dead.ids, dead.timestamps.tolist(), dead.writers, strict=True):
        yield rid, Copy((ts, writer), ref.id, TOMBSTONE)


def every_copy(ref: SegmentRef, headers: HeaderCache) -> Iterable[tuple[str, Copy]]:
    """(id, copy) for every row, masked or not, and every tombstone of a segment."""
    header = headers.get(ref)
    ids, writers = header.ids, header.writers
    for row, ts in enumerate(header.timestamps.tolist()):
        yield ids[row], Copy((ts, writers[row]), ref.id, row)
    dead = header.tombstones
    for rid, ts, writer in zip(dead.ids, dead.timestamps.tolist(), dead.writers, strict=True):
        yield rid, Copy((ts, writer), ref.id, TOMBSTONE)


class LiveIndex:
    """id → the newest copy in a manifest, kept in step with successive manifests
    by applying only the segments added and removed between them, so an indexer
    commit costs the size of the change, not of the collection. Hold `lock` while
    using the mapping `at` returns.

    It reads segment headers only, never deletion files: the newest copy of an id
    is never masked (a row is masked only because a newer copy exists, and
    compaction keeps every unmasked row), so the newest copy over all rows,
    masked or not, is the newest live one.
    """

    def __init__(self, headers: HeaderCache) -> None:
        self.headers = headers
        self.lock = threading.RLock()
        self._newest: dict[str, Copy] = {}
        self._refs: dict[str, SegmentRef] = {}

    def at(self, manifest: Manifest) -> Mapping[str, Copy]:
        with self.lock:
            target = {ref.id: ref for ref in manifest.segments}
            newest = self._newest
            gone = [ref for sid, ref in self._refs.items() if sid not in target]
            for ref in gone:
                for rid, copy in every_copy(ref, self.headers):
                    if newest.get(rid) == copy:
                        del newest[rid]
            self.headers.forget({ref.id for ref in gone})
            for sid, ref in target.items():
                if sid not in self._refs:
                    for rid, copy in every_copy(ref, self.headers):
                        current = newest.get(rid)
                        if current is None or current.order < copy.order:
                            newest[rid] = copy
            self._refs = target
            return newest


@dataclass(frozen=True)
class Change:
    """Records to merge into a manifest (at most one per id): each one's order,
    and its row in the new segment (`TOMBSTONE` for a delete)."""

    ids: Sequence[str]
    orders: Sequence[Order]
    rows: Sequence[int]


@dataclass(frozen=True)
class Resolution:
    """What merging a change does: the rows it masks in existing segments, the
    rows of its own segment that lose, and how many of its records win."""

    masks: dict[str, list[int]]
    losing: list[int]
    wins: int


def resolve(newest: Mapping[str, Copy], change: Change, floor: int) -> Resolution:
    """Last-writer-wins for `change` against the newest copies of a manifest.

    A record older than the manifest's `floor` is already applied or superseded
    (see `table.manifest`): it loses.
    """
    masks: dict[str, list[int]] = {}
    losing: list[int] = []
    wins = 0
    for rid, order, row in zip(change.ids, change.orders, change.rows, strict=True):
        current = newest.get(rid)
        if order[0] < floor or (current is not None and current.order >= order):
            if row != TOMBSTONE:
                losing.append(row)
            continue
        wins += 1
        if current is not None and not current.is_tombstone:
            masks.setdefault(current.segment, []).append(current.row)
    return Resolution(masks, losing, wins)


def conflicts(
    copies: Mapping[str, list[Copy]],
) -> dict[str, list[Copy]]:
    """id → its live rows that last-writer-wins says must be masked (verify and
    repair: an id live twice, or live behind a newer tombstone)."""
    return {rid: lost for rid, cs in copies.items() if len(cs) > 1 and (lost := losers(cs))}
