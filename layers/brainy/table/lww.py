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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress

import numpy as np

from brainy.format.segment import SegmentHeader, Writers
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
    unmasked = None
    if ref.masked:
        keep = np.ones(ref.count, dtype=bool)
        keep[masks.rows(ref)] = False
        unmasked = np.flatnonzero(keep)
    return _as_copies(ref.id, _columns(headers.get(ref), unmasked))


def every_copy(ref: SegmentRef, headers: HeaderCache) -> Iterable[tuple[str, Copy]]:
    """(id, copy) for every row, masked or not, and every tombstone of a segment."""
    return _as_copies(ref.id, _columns(headers.get(ref)))


_Columns = tuple[Sequence[str], np.ndarray, Sequence[str], np.ndarray]


def _columns(header: SegmentHeader, rows: np.ndarray | None = None) -> Iterator[_Columns]:
    """A segment's copies as columns (ids, timestamps, writers, rows): its rows
    (all, or those given), then its tombstones (row `TOMBSTONE`)."""
    if rows is None:
        yield header.ids, header.timestamps, header.writers, np.arange(len(header.ids))
    else:
        picked = rows.tolist()
        ids, writers = header.ids, header.writers
        writers = (
            writers.take(rows) if isinstance(writers, Writers) else [writers[r] for r in picked]
        )
        yield [ids[r] for r in picked], header.timestamps[rows], writers, rows
    dead = header.tombstones
    yield dead.ids, dead.timestamps, dead.writers, np.full(len(dead), TOMBSTONE)


def _as_copies(sid: str, columns: Iterable[_Columns]) -> Iterator[tuple[str, Copy]]:
    for ids, timestamps, writers, rows in columns:
        for rid, ts, writer, row in zip(
            ids, timestamps.tolist(), writers, rows.tolist(), strict=True
        ):
            yield rid, Copy((ts, writer), sid, row)


class _Newest(Mapping[str, Copy]):
    """id → its newest copy, held as columns: a dict from id to a slot, and numpy
    arrays of each slot's timestamp, writer, segment and row, so that a segment is
    applied with array operations and an id costs ~140 bytes rather than the ~210
    of a `Copy` of its own (a `Copy` is made when one is asked for). Writers and
    segments are held once, by code; a writer's rank orders writers as strings do,
    so (timestamp, rank) orders copies as (timestamp, writer) does."""

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        self._ts = np.zeros(0, dtype=np.int64)
        self._writer = np.zeros(0, dtype=np.int32)
        self._segment = np.zeros(0, dtype=np.int32)
        self._row = np.zeros(0, dtype=np.int32)  # Annoy's item ids are int32 too
        self._used = 0  # slots handed out; those freed since are reclaimed when full
        self._writers: list[str] = []
        self._writer_code: dict[str, int] = {}
        self._rank = np.zeros(0, dtype=np.int64)
        self._segments: list[str] = []
        self._segment_code: dict[str, int] = {}
        self._free_codes: list[int] = []

    def __getitem__(self, rid: str) -> Copy:
        return self._copy(self._slot[rid])

    def get(self, rid: str, default: Copy | None = None) -> Copy | None:
        slot = self._slot.get(rid)
        return default if slot is None else self._copy(slot)

    def __iter__(self) -> Iterator[str]:
        return iter(self._slot)

    def __len__(self) -> int:
        return len(self._slot)

    def _copy(self, slot: int) -> Copy:
        order = (int(self._ts[slot]), self._writers[self._writer[slot]])
        return Copy(order, self._segments[self._segment[slot]], int(self._row[slot]))

    def offer(
        self, sid: str, ids: Sequence[str], ts: np.ndarray, writers: Sequence[str], rows: np.ndarray
    ) -> None:
        """Make each copy the newest of its id unless a newer one is known."""
        if len(set(ids)) < len(ids):
            # The same id twice (tombstones of two deletes merged into one segment):
            # one at a time, so the newer of the two is kept.
            for i in range(len(ids)):
                self.offer(sid, ids[i : i + 1], ts[i : i + 1], writers[i : i + 1], rows[i : i + 1])
            return
        ts = np.asarray(ts, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        writer = self._writer_codes(writers)
        if self._used + len(ids) > self._ts.size:
            self._grow(len(ids))  # renumbers slots: before any is looked up
        slots = self._slots_of(ids)
        known = slots >= 0
        current = slots[known]
        newer = (ts[known] > self._ts[current]) | (
            (ts[known] == self._ts[current])
            & (self._rank[writer[known]] > self._rank[self._writer[current]])
        )
        put = np.concatenate([current[newer], self._new_slots(ids, known)])
        take = np.concatenate([np.flatnonzero(known)[newer], np.flatnonzero(~known)])
        self._ts[put] = ts[take]
        self._writer[put] = writer[take]
        self._segment[put] = self._code_of(sid)
        self._row[put] = rows[take]

    def _code_of(self, sid: str) -> int:
        code = self._segment_code.get(sid)
        if code is None:
            code = self._free_codes.pop() if self._free_codes else len(self._segments)
            if code == len(self._segments):
                self._segments.append(sid)
            self._segments[code] = sid
            self._segment_code[sid] = code
        return code

    def forget(self, sid: str) -> None:
        """Give back the code of a segment no longer listed (once its copies are dropped)."""
        code = self._segment_code.pop(sid, None)
        if code is not None:
            self._free_codes.append(code)

    def drop(
        self, sid: str, ids: Sequence[str], ts: np.ndarray, writers: Sequence[str], rows: np.ndarray
    ) -> None:
        """Forget each id whose newest copy is exactly the one given."""
        code = self._segment_code.get(sid)
        if code is None or not len(ids):
            return
        slots = self._slots_of(ids)
        known = slots >= 0
        at = slots[known]
        writer = self._writer_codes(writers)[known]
        same = (
            (self._segment[at] == code)
            & (self._row[at] == np.asarray(rows)[known])
            & (self._ts[at] == np.asarray(ts)[known])
            & (self._writer[at] == writer)
        )
        for rid in compress(compress(ids, known.tolist()), same.tolist()):
            del self._slot[rid]

    def _slots_of(self, ids: Sequence[str]) -> np.ndarray:
        get = self._slot.get
        return np.fromiter((get(rid, -1) for rid in ids), dtype=np.int64, count=len(ids))

    def _new_slots(self, ids: Sequence[str], known: np.ndarray) -> np.ndarray:
        fresh = list(compress(ids, (~known).tolist()))
        start = self._used
        self._used += len(fresh)
        self._slot.update(zip(fresh, range(start, self._used), strict=True))
        return np.arange(start, self._used)

    def _grow(self, more: int) -> None:
        """Room for `more` slots: freed slots given back first if they are worth it
        (a quarter of those in use), then the arrays enlarged.

        Slots are renumbered in place, by replacing the dict's values: a second
        dict of every id, built beside the first, was the largest transient of a
        cold start (~70 MB at 1M ids)."""
        live = len(self._slot)
        reclaim = self._used - live > live // 4
        kept = live if reclaim else self._used
        size = max((kept + more) * 3 // 2, 1024)
        if reclaim:
            order = np.fromiter(self._slot.values(), dtype=np.int64, count=live)
        for name in ("_ts", "_writer", "_segment", "_row"):
            old = getattr(self, name)
            column = np.zeros(size, dtype=old.dtype)
            column[:kept] = old[order] if reclaim else old[:kept]
            setattr(self, name, column)
        if reclaim:
            slot = self._slot
            for new, rid in enumerate(list(slot)):
                slot[rid] = new
            self._used = live

    def _writer_codes(self, writers: Sequence[str]) -> np.ndarray:
        if isinstance(writers, Writers):
            # Coded already: translate the segment's table, not each row.
            table = self._writer_codes(writers.names)
            return table[writers.codes] if table.size else table
        new = set(writers) - self._writer_code.keys()
        if new:
            for writer in sorted(new):
                self._writer_code[writer] = len(self._writers)
                self._writers.append(writer)
            by_name = sorted(range(len(self._writers)), key=self._writers.__getitem__)
            self._rank = np.empty(len(self._writers), dtype=np.int64)
            self._rank[by_name] = np.arange(len(by_name))
        code = self._writer_code
        return np.fromiter((code[w] for w in writers), dtype=np.int32, count=len(writers))


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
        self._newest = _Newest()
        self._refs: dict[str, SegmentRef] = {}

    def at(self, manifest: Manifest) -> Mapping[str, Copy]:
        with self.lock:
            target = {ref.id: ref for ref in manifest.segments}
            newest = self._newest
            gone = [ref for sid, ref in self._refs.items() if sid not in target]
            for ref in gone:
                for columns in _columns(self.headers.get(ref)):
                    newest.drop(ref.id, *columns)
                newest.forget(ref.id)
            self.headers.forget({ref.id for ref in gone})
            for sid, ref in target.items():
                if sid not in self._refs:
                    for columns in _columns(self.headers.get(ref)):
                        newest.offer(sid, *columns)
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
