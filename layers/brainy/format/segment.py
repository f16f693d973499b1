"""Segments: immutable, content-addressed objects holding an Annoy index and its rows.

One object per segment, `<collection>/segments/<segment-id>/segment.bin`:

    MAGIC(8) | xxh3-128 digest of the rest(16) | header length(8) | header JSON |
    Annoy file | (padding, sketch)

The header holds the row ids, timestamps, writers and metadata, and the segment's
tombstones (deletes: id, timestamp, writer; no vector); the Annoy file holds the
vectors (Annoy keeps every item's float32 vector in its node array, so the
segment does not store them twice: `vectors` reads them back out of the
memory-mapped index). A segment of deletes only has no Annoy file. The segment
id is the digest; every build carries a nonce, so two builds of the same rows
are two segments (see `upload_segment`).

A segment of up to `SKETCHED_ROWS` rows (or the collection's `exact_threshold`,
if more) ends with a sketch of its rows (`brainy.format.sketch`), at the first
64-byte boundary after its Annoy file (`annoy_bytes` long, as the header says):
what a search reads of a segment it has not cached.

Tombstones live in segments rather than in the manifest, so the manifest grows
with segments only: a tombstone is written once with the batch that deleted the
id, merged by compaction like any row, and dropped by compaction once no older
copy of its id can still arrive (the manifest's `floor`).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import struct
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import xxhash
from annoy import AnnoyIndex

from brainy.core.config import CollectionSchema
from brainy.core.jsonio import decode_json
from brainy.format.calibration import calibrate
from brainy.format.sketch import CorruptSketch, RowStats, Sketch, SketchSpan, write_sketch
from brainy.storage import NotFound, ObjectStore, PreconditionFailed

MAGIC = b"BRAINYS1"
_PREFIX_LEN = len(MAGIC) + 16 + 8
# Where a segment's Annoy file starts, a multiple of this (its header is padded):
# read in place, its float32 vectors are aligned (misaligned, numpy cannot hand
# them to BLAS: measured, a full scan several times slower).
ALIGN = 64
_HEADER_PROBE = 256 * 1024
# Byte offset of the vector inside an Annoy node, and the node size minus the vector.
_ANNOY_LAYOUT = {"angular": (12, 12), "euclidean": (16, 16), "dot": (16, 16)}
# Segments of up to this many rows end with a sketch (see `build_collection_segment`):
# at 384 dimensions a 96 MB sketch, which a cold query scans in about 20 ms, against
# a 390 MB segment; a larger one (a hash partition of millions of rows) is
# downloaded whole.
SKETCHED_ROWS = 250_000
# Vectors move between files in pieces of about this size (one reusable buffer).
CHUNK_BYTES = 4 << 20


class CorruptSegment(ValueError):
    """A segment object fails its checksum or cannot be decoded."""


def segment_key(collection: str, segment_id: str, copy: str | None = None) -> str:
    name = f"segment-{copy}.bin" if copy else "segment.bin"
    return f"{collection}/segments/{segment_id}/{name}"


def _no_timestamps() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Tombstones:
    """Deletes a segment records: the id, and the (timestamp, writer) of the delete."""

    ids: Sequence[str] = ()
    timestamps: np.ndarray = field(default_factory=_no_timestamps)
    writers: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class VectorChunks:
    """Vectors handed to a build a chunk at a time, so that a merge never holds all
    the vectors of a segment in memory: `count` rows of `dimension` float32 in all,
    in row order, in pieces of any size. Read once."""

    dimension: int
    count: int
    chunks: Iterable[np.ndarray]

    def read_into(self, out: np.ndarray) -> int:
        """Copy the chunks, in order, into the first rows of `out`; returns the rows
        they held. One array filled in place: the chunks are never all held at once."""
        at = 0
        for chunk in self.chunks:
            out[at : at + len(chunk)] = chunk
            at += len(chunk)
        return at


@dataclass(frozen=True)
class SegmentRows:
    """The rows a segment is built from, and its tombstones."""

    ids: Sequence[str]
    timestamps: np.ndarray
    writers: Sequence[str]
    metadata: Sequence[dict | None]
    vectors: np.ndarray | VectorChunks
    tombstones: Tombstones = field(default_factory=Tombstones)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class BuiltSegment:
    id: str
    path: Path
    size: int
    count: int  # rows with a vector
    min_ts: int  # over rows and tombstones
    max_ts: int
    tombstones: int = 0
    sketch: SketchSpan | None = None


def build_segment(
    rows: SegmentRows,
    *,
    metric: str,
    n_trees: int,
    seed: int,
    workdir: Path,
    calibrate_above: int | None = None,
    threads: int | None = None,
    sketch_up_to: int | None = None,
) -> BuiltSegment:
    """Build a segment file in `workdir` (rows or tombstones must be non-empty).

    Args:
        calibrate_above: a segment of more rows than this (the collection's exact
            threshold) records in its header how it is searched at each recall
            target (see `calibrate`); None never calibrates.
        threads: threads building the trees (see `_build_annoy`); None: one a
            core this process may run on (at most one a tree).
        sketch_up_to: a segment of at most this many rows ends with a sketch of
            them (see `brainy.format.sketch`); None writes none.

    Memory: the index is built in its file (`on_disk_build`) from vectors streamed
    in chunks, so beyond the rows' ids and metadata a build holds about the size
    of the Annoy file resident (its pages, while Annoy builds the trees), not the
    vectors again on top.
    """
    n = len(rows.ids)
    vectors = _as_chunks(rows.vectors)
    if n != vectors.count or (n == 0 and not len(rows.tombstones)):
        raise ValueError(f"build_segment: {vectors.count} vectors for {n} ids")
    dim = vectors.dimension
    workdir.mkdir(parents=True, exist_ok=True)
    sketched = n > 0 and sketch_up_to is not None and n <= sketch_up_to
    stats = RowStats.empty(dim, n) if sketched else None
    ann_path = _build_annoy(vectors, metric, n_trees, seed, workdir, threads, stats) if n else None
    calibration = None
    if ann_path is not None and calibrate_above is not None and n > calibrate_above:
        calibration = _calibrate(ann_path, n, dim, metric, n_trees, seed)
    dead = rows.tombstones
    optional: dict[str, Any] = {}
    if calibration is not None:
        optional["calibration"] = calibration
    header = json.dumps(
        {
            "format": 3,
            # Unique per build: see upload_segment.
            "nonce": uuid.uuid4().hex,
            "dimension": dim,
            "metric": metric,
            "count": n,
            "annoy_bytes": ann_path.stat().st_size if ann_path else 0,
            "ids": list(rows.ids),
            "timestamps": rows.timestamps.astype(np.int64).tolist(),
            "writers": list(rows.writers),
            "metadata": list(rows.metadata),
            "tombstones": {
                "ids": list(dead.ids),
                "timestamps": np.asarray(dead.timestamps, dtype=np.int64).tolist(),
                "writers": list(dead.writers),
            },
            **optional,
        },
        separators=(",", ":"),
    ).encode()
    # Padded (JSON allows trailing blanks) so the Annoy file starts ALIGN-aligned:
    # a segment read in place has its vectors aligned as a copy's would be.
    header += b" " * (-(_PREFIX_LEN + len(header)) % ALIGN)
    fd, seg_name = tempfile.mkstemp(suffix=".seg", dir=workdir)
    seg_path = Path(seg_name)
    hasher = xxhash.xxh3_128()
    sketch = None
    with os.fdopen(fd, "wb") as out:
        out.write(MAGIC + b"\0" * 16)
        head = struct.pack("<Q", len(header)) + header
        out.write(head)
        hasher.update(head)
        if ann_path is not None:
            with open(ann_path, "rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    hasher.update(chunk)
            if stats is not None:
                pad = b"\0" * (-out.tell() % ALIGN)
                out.write(pad)
                hasher.update(pad)
                at, extra = _ANNOY_LAYOUT[metric]
                meta = {
                    "metric": metric,
                    "header": [len(header), xxhash.xxh3_64_hexdigest(header)],
                    "vectors": [_PREFIX_LEN + len(header), extra + 4 * dim, at],
                }
                chunks = read_vectors(ann_path, metric, dim, np.arange(n)).chunks
                sketch = write_sketch(out, hasher, chunks, stats, meta)
            ann_path.unlink()
        out.seek(len(MAGIC))
        out.write(hasher.digest())
    ts = np.concatenate([rows.timestamps, np.asarray(dead.timestamps, dtype=np.int64)])
    return BuiltSegment(
        id=hasher.hexdigest(),
        path=seg_path,
        size=seg_path.stat().st_size,
        count=n,
        min_ts=int(ts.min()),
        max_ts=int(ts.max()),
        tombstones=len(dead),
        sketch=sketch,
    )


def build_collection_segment(
    schema: CollectionSchema, rows: SegmentRows, workdir: Path
) -> BuiltSegment:
    """`build_segment` as a collection's schema says: its metric, trees and seed,
    calibrated when larger than its exact threshold (smaller ones are scanned),
    sketched up to `SKETCHED_ROWS` rows (or the exact threshold, if more)."""
    return build_segment(
        rows,
        metric=schema.metric,
        n_trees=schema.n_trees,
        seed=schema.seed,
        workdir=workdir,
        calibrate_above=schema.exact_threshold,
        sketch_up_to=max(schema.exact_threshold, SKETCHED_ROWS),
    )


def _as_chunks(vectors: np.ndarray | VectorChunks) -> VectorChunks:
    if isinstance(vectors, VectorChunks):
        return vectors
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    return VectorChunks(dim, int(vectors.shape[0]), (vectors,))


def _build_annoy(
    vectors: VectorChunks,
    metric: str,
    n_trees: int,
    seed: int,
    workdir: Path,
    threads: int | None = None,
    stats: RowStats | None = None,
) -> Path:
    """Build the Annoy index of `vectors` in a file of `workdir` (gathering the
    rows' `stats` for a sketch on the way, if given).

    Annoy's Python `add_item` takes one vector at a time and reads it element by
    element (as slow as the build itself at 384 dimensions), so the item nodes are
    written into the file directly, a chunk at a time, in the layout
    `LoadedSegment.vectors` reads back: an `add_item` of the last item first sizes
    Annoy's on-disk node array for every item (the file, mapped shared, sees the
    writes), then `build` adds the trees after them. The trees are exactly those
    adding each item would give (see `_store_norms` for the one field that differs).

    Annoy builds trees in parallel threads (the GIL released), thread `t` drawing
    its splits from `seed + t`: the same rows, seed and thread count give the same
    trees, but their nodes are numbered in the order the threads allocate them,
    and a search breaks ties between equally promising nodes by number, so where
    `search_k` cuts it off two builds may return slightly different neighbours
    (and a calibration may differ by one doubling). One thread (`threads=1`) builds
    the index byte for byte as `add_item` and `build` would. A thread a core rather
    than a thread a tree: each thread holds ~27 bytes a row while it builds (its
    items' numbers and pointers), a sixth of the raw bytes (384-d) with 16 threads.
    """
    n, dim = vectors.count, vectors.dimension
    fd, ann_name = tempfile.mkstemp(suffix=".ann", dir=workdir)
    os.close(fd)
    ann_path = Path(ann_name)
    index = AnnoyIndex(dim, metric)
    index.set_seed(seed)
    try:
        index.on_disk_build(ann_name)
        index.add_item(n - 1, [0.0] * dim)
        last = _write_items(ann_path, vectors, metric, stats)
        # A cheap proof that Annoy reads what was written under it.
        if np.asarray(index.get_item_vector(n - 1), "<f4").tobytes() != last.tobytes():
            raise RuntimeError(f"{ann_path}: Annoy does not see the items written to its file")
        # Few trees for a tiny segment: it is searched exactly anyway.
        trees = n_trees if n > 64 else 1
        index.build(trees, n_jobs=min(trees, threads or len(os.sched_getaffinity(0))))
        index.unload()
        if metric == "angular":
            _store_norms(ann_path, n, dim)
    except BaseException:
        index.unload()
        ann_path.unlink(missing_ok=True)
        raise
    return ann_path


def _calibrate(
    ann_path: Path, n: int, dim: int, metric: str, n_trees: int, seed: int
) -> dict[str, Any]:
    """Calibrate the built index at `ann_path` (see `brainy.format.calibration`),
    its vectors read out of the file by plain reads (`IndexRows`)."""
    index = AnnoyIndex(dim, metric)
    index.load(str(ann_path))
    try:
        return calibrate(index, IndexRows(ann_path, metric, n, dim), metric, n_trees, seed)  # type: ignore[arg-type]
    finally:
        index.unload()


class IndexRows:
    """The vectors of an Annoy file as the rows of an n × dimension float32 matrix
    that reads what it is indexed with (a slice, or increasing row numbers) by
    `read_rows`. The calibration scans every row while the index is mapped too: a
    second mapping would make each page count twice in this process's memory (a
    1M × 384 partition's build, 1.5 GB over its bound)."""

    def __init__(self, ann_path: Path, metric: str, count: int, dimension: int) -> None:
        self.ann_path, self.metric = ann_path, metric
        self.shape = (count, dimension)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        rows = np.arange(self.shape[0])[index]
        out = np.empty((rows.size, self.shape[1]), dtype=np.float32)
        read_vectors(self.ann_path, self.metric, self.shape[1], rows).read_into(out)
        return out


def _node_size(metric: str, dimension: int) -> int:
    return _ANNOY_LAYOUT[metric][0] + 4 * dimension


def _write_items(
    ann_path: Path, vectors: VectorChunks, metric: str, stats: RowStats | None = None
) -> np.ndarray:
    """Write every vector as an Annoy item node (n_descendants 1, the other fields
    0, the vector) at the start of `ann_path`, adding them to `stats` if given;
    returns the last vector written."""
    offset = _ANNOY_LAYOUT[metric][0] // 4
    per = max(1, CHUNK_BYTES // _node_size(metric, vectors.dimension))
    nodes = np.zeros((per, offset + vectors.dimension), dtype="<i4")
    nodes[:, 0] = 1
    values = nodes.view("<f4")[:, offset:]
    written = size = 0
    with open(ann_path, "r+b") as out:
        for chunk in vectors.chunks:
            for lo in range(0, len(chunk), per):
                size = len(chunk[lo : lo + per])
                values[:size] = chunk[lo : lo + per]
                out.write(nodes[:size].data)
                if stats is not None:
                    stats.add(values[:size], written)
                written += size
    if written != vectors.count:
        raise ValueError(f"build_segment: {written} vectors for {vectors.count} ids")
    return values[size - 1].copy()


def _store_norms(ann_path: Path, count: int, dimension: int) -> None:
    """Fill in the squared norm an angular item node caches (beside its children).

    `add_item` computes it; without it Annoy computes it again for every distance
    (a search a third slower). It is written after the build, which computes the
    same value where the cache is 0, so the trees are exactly those of `add_item`;
    only this float may differ in its last bits (numpy's sum, not Annoy's).
    """
    node = _node_size("angular", dimension)
    per = max(1, CHUNK_BYTES // node)
    nodes = np.empty((per, node // 4), dtype="<f4")
    with open(ann_path, "r+b") as f:
        for first in range(0, count, per):
            chunk = nodes[: min(per, count - first)]
            f.seek(first * node)
            _read_fully(f, chunk.data, ann_path)
            values = chunk[:, 3:]
            chunk[:, 1] = np.einsum("ij,ij->i", values, values)
            f.seek(first * node)
            f.write(chunk.data)


def _read_fully(f: BinaryIO, into: memoryview, path: Path) -> None:
    if f.readinto(into) != into.nbytes:
        raise CorruptSegment(f"{path}: shorter than its rows")


def read_rows(
    path: Path, rows: np.ndarray, dimension: int, *, head: int = 0
) -> Iterator[np.ndarray]:
    """The float32 vectors at `rows` (increasing) of a file of fixed-size records
    (`head` bytes, then the vector), a chunk at a time.

    Read with plain reads into one reusable buffer rather than through a mapping:
    a mapped page once touched counts in the process's resident memory until it is
    unmapped, so reading a large segment through its map would hold all of it; the
    page cache these reads go through is the kernel's to reclaim.
    """
    stride = head + 4 * dimension
    rows = np.asarray(rows, dtype=np.int64)
    if not rows.size:
        return
    per = max(1, CHUNK_BYTES // stride)
    records = np.empty((per, stride // 4), dtype="<f4")
    # One read per window of `per` records that holds a selected row.
    cuts = np.flatnonzero(np.diff(rows // per)) + 1
    with open(path, "rb") as f:
        for group in np.split(rows, cuts):
            first = int(group[0])
            span = records[: int(group[-1]) - first + 1]
            f.seek(first * stride)
            _read_fully(f, span.data, path)
            yield span[group - first, head // 4 :]


def read_vectors(ann_path: Path, metric: str, dimension: int, rows: np.ndarray) -> VectorChunks:
    """The vectors of `rows` (increasing) of a segment's Annoy file, to stream into a
    build (see `read_rows`)."""
    offset, _ = _ANNOY_LAYOUT[metric]
    return VectorChunks(dimension, len(rows), read_rows(ann_path, rows, dimension, head=offset))


def upload_segment(
    store: ObjectStore, collection: str, built: BuiltSegment, copy: str | None = None
) -> str:
    """Upload in full before anything references it; returns the key.

    Every build carries a nonce, so its key is new: an orphan left by a crashed
    attempt is never referenced again, and garbage collection may delete it once
    it is older than the manifest's GC fence. A put-if-absent that finds the key
    taken can only be this upload's own retry whose first response was lost.
    `copy` names a fresh copy under another key: a commit whose upload has fallen
    behind the GC fence re-uploads it there (see `table.manifest`).
    """
    key = segment_key(collection, built.id, copy)
    with contextlib.suppress(PreconditionFailed):
        store.upload(key, built.path, if_absent=True)
    return key


class Writers(Sequence[str]):
    """The writer of each row, held as a code per row into a table of names.

    A segment's rows come from a few writers; a name per row would be a string
    object each (~60 bytes), more than the rest of a slim header together.
    Reads like the list of names it stands for.
    """

    __slots__ = ("codes", "names")

    def __init__(self, codes: np.ndarray, names: Sequence[str]) -> None:
        self.codes = codes
        self.names = tuple(names)

    @classmethod
    def of(cls, writers: Iterable[str]) -> Writers:
        if isinstance(writers, Writers):
            return writers
        writers = writers if isinstance(writers, Sequence) else list(writers)
        names = list(dict.fromkeys(writers))
        dtype = np.min_scalar_type(max(len(names) - 1, 0))
        if len(names) <= 1:  # the usual case: one writer per batch segment
            return cls(np.zeros(len(writers), dtype=dtype), names)
        code = {name: i for i, name in enumerate(names)}
        return cls(np.fromiter(map(code.__getitem__, writers), dtype, len(writers)), names)

    def take(self, rows: np.ndarray) -> Writers:
        """The writers of `rows`."""
        return Writers(self.codes[rows], self.names)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return Writers(self.codes[i], self.names)
        return self.names[self.codes[i]]

    def __iter__(self) -> Iterator[str]:
        return map(self.names.__getitem__, self.codes.tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Writers({list(self)!r})"


@dataclass(frozen=True)
class SegmentHeader:
    """What a segment says about its rows, without the index.

    A slim header (`from_json(raw, metadata=False)`) has no metadata and its
    writers as `Writers`: what last-writer-wins needs, and no more.
    """

    dimension: int
    metric: str
    count: int
    ids: list[str]
    timestamps: np.ndarray
    writers: Sequence[str]
    metadata: list[Any]
    tombstones: Tombstones = field(default_factory=Tombstones)
    # How the segment is searched per recall target (see `calibrate`); absent
    # from segments built before calibration, and from slim headers.
    calibration: dict[str, Any] | None = None
    # The Annoy file's size; None in segments that did not record it (everything
    # after the header is the Annoy file there).
    annoy_bytes: int | None = None

    @classmethod
    def from_json(cls, raw: bytes, *, metadata: bool = True) -> SegmentHeader:
        # Without metadata, each row's metadata object is dropped as soon as it is
        # parsed (the hook sees every JSON object, innermost first; only the header
        # and its tombstones hold "ids"), not held until the whole header is.
        h = decode_json(raw) if metadata else json.loads(raw, object_hook=_tables_only)
        dead = h.get("tombstones") or {}
        header = cls(
            dimension=h["dimension"],
            metric=h["metric"],
            count=h["count"],
            ids=h["ids"],
            timestamps=np.asarray(h["timestamps"], dtype=np.int64),
            writers=h["writers"],
            metadata=h["metadata"] if metadata else [],
            tombstones=Tombstones(
                ids=dead.get("ids", []),
                timestamps=np.asarray(dead.get("timestamps", []), dtype=np.int64),
                writers=dead.get("writers", []),
            ),
            calibration=h.get("calibration") if metadata else None,
            annoy_bytes=h.get("annoy_bytes"),
        )
        return header if metadata else header.slim()

    def slim(self) -> SegmentHeader:
        """This header without metadata, its writers coded (see `Writers`)."""
        dead = self.tombstones
        return replace(
            self,
            writers=Writers.of(self.writers),
            metadata=[],
            tombstones=replace(dead, writers=Writers.of(dead.writers)),
        )


def _tables_only(obj: dict[str, Any]) -> dict[str, Any] | None:
    return obj if "ids" in obj else None


def read_segment_header(store: ObjectStore, key: str, *, metadata: bool = True) -> SegmentHeader:
    """Fetch only the header of a segment, by ranged GETs (one for most segments);
    without `metadata`, a slim one (see `SegmentHeader`)."""
    blob = store.get(key, byte_range=(0, _HEADER_PROBE - 1))
    data = blob.data
    _check_prefix(data[:_PREFIX_LEN], key)
    end = _PREFIX_LEN + _header_length(data)
    if end > len(data):
        # The whole header in one read: joining the rest to the probe, then slicing
        # the header out, would hold it three times over.
        raw = store.get(key, byte_range=(_PREFIX_LEN, end - 1)).data
    else:
        raw = data[_PREFIX_LEN:end]
    del data, blob
    try:
        return SegmentHeader.from_json(raw, metadata=metadata)
    except (ValueError, KeyError) as e:
        raise CorruptSegment(f"{key}: bad header ({e})") from None


def read_sketch(store: ObjectStore, key: str, span: SketchSpan) -> Sketch:
    """The sketch of the segment at `key`, by one ranged GET, checked against the
    checksum of its `span` (which the manifest records).

    Raises:
        CorruptSketch: it fails its checksum or does not decode.
    """
    blob = store.get(key, byte_range=(span.offset, span.offset + span.length - 1))
    return Sketch.decode(blob.data, span, key)


def read_sketched_header(store: ObjectStore, key: str, sketch: Sketch) -> SegmentHeader:
    """The header of the segment at `key`, by one ranged GET of exactly it, checked
    against the checksum its `sketch` records.

    Raises:
        CorruptSketch: it fails the check.
    """
    length, checksum = sketch.header
    data = store.get(key, byte_range=(0, _PREFIX_LEN + length - 1)).data
    raw = data[_PREFIX_LEN:]
    if (
        len(raw) != length
        or _header_length(data) != length
        or xxhash.xxh3_64_hexdigest(raw) != checksum
    ):
        raise CorruptSketch(f"{key}: header does not match the segment's sketch")
    return SegmentHeader.from_json(raw)


class LoadedSegment:
    """A segment in the local cache: the header in memory, the Annoy file mapped.

    The file is mapped here, once, and never opened by name again: a mapping
    outlives its file's name, so the cache may unlink an evicted segment while
    queries still search it.

    Attributes:
        vectors: the rows' vectors, read straight out of the mapped Annoy node array.
            Scans read them in place, not from a copy: each row sits at a fixed
            stride (a whole number of floats), which numpy hands BLAS as the
            matrix's leading dimension (measured on a 4,000 x 384 segment: the
            product as fast as on a contiguous copy, which would cost a second
            copy of every scanned segment in memory).
    """

    def __init__(
        self,
        segment_id: str,
        header: SegmentHeader,
        ann_path: Path,
        *,
        offset: int = 0,
        spill: Path | None = None,
        header_bytes: int | None = None,
    ) -> None:
        """
        Args:
            ann_path: the Annoy file, or (with `offset`) the file it starts in at
                `offset`: the segment object itself, read in place.
            spill: where the index of a segment read in place is copied out on its
                first use (Annoy loads a file of its own, unlinked once mapped);
                vectors need no copy.
            header_bytes: what the segment holds beside its Annoy file: its header
                (default: the size of its `.json` beside `ann_path`; read in
                place, its prefix and header, not a sketch after the Annoy file).
        """
        self.id = segment_id
        self.header = header
        self.ann_path = ann_path
        # A segment of tombstones only has no index, and no vectors.
        self._index: AnnoyIndex | None = None
        self._spill = spill
        self.vectors = np.zeros((0, header.dimension), dtype=np.float32)
        self._raw: np.ndarray | None = None
        if header.count:
            # Bounded: a sketch may follow the Annoy file in a segment read in place.
            shape = None if header.annoy_bytes is None else (header.annoy_bytes,)
            self._raw = raw = np.memmap(
                ann_path, dtype=np.uint8, mode="r", offset=offset, shape=shape
            )
            if not offset:
                self._index = self._annoy(ann_path)
            at, extra = _ANNOY_LAYOUT[header.metric]
            stride = extra + 4 * header.dimension
            self.vectors = np.ndarray(
                (header.count, header.dimension), "<f4", raw, at, strides=(stride, 4)
            )
        if header_bytes is None:
            header_bytes = ann_path.with_suffix(".json").stat().st_size
        # Bytes the cache holds for it: the index and the header.
        self.size = (self._raw.size if self._raw is not None else 0) + header_bytes
        self._lock = threading.Lock()

    def _annoy(self, path: Path) -> AnnoyIndex:
        index = AnnoyIndex(self.header.dimension, self.header.metric)
        index.load(str(path))
        return index

    @property
    def index(self) -> AnnoyIndex | None:
        """The Annoy index (None: a segment of tombstones only). A segment read in
        place copies it out of its mapping on first use: partitions a search scans
        never pay for it."""
        if self._index is None and self._raw is not None:
            with self._lock:
                if self._index is None:
                    assert self._spill is not None
                    tmp = self._spill.with_name(f"{self._spill.name}.{_unique()}.tmp")
                    try:
                        with open(tmp, "wb") as out:
                            for start in range(0, self._raw.size, CHUNK_BYTES):
                                out.write(self._raw[start : start + CHUNK_BYTES])
                        self._index = self._annoy(tmp)
                    finally:
                        # Mapped, it needs no name: none is left for the cache to
                        # account for (the segment's size counts it) or to orphan.
                        tmp.unlink(missing_ok=True)
        return self._index

    @property
    def count(self) -> int:
        return self.header.count

    @cached_property
    def norms(self) -> np.ndarray:
        vectors = self.vectors
        return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))


def load_segment(
    store: ObjectStore, key: str, segment_id: str, cache_dir: Path, *, in_place: bool = False
) -> LoadedSegment:
    """Download (if not cached), verify and open a segment.

    The object is streamed to a temp file, its digest checked against the id it
    is addressed by, then split into `<id>.json` (header) and `<id>.ann` (index).
    Several processes may share one cache folder (gunicorn workers): if another
    evicts the files between the check and the open, they are fetched again.

    With `in_place`, a segment is verified and mapped where it lies, nothing
    copied: a store's own file if it keeps objects as local files (a folder;
    measured on 1M rows, a first query's 77 partitions: copying them was most of
    its 1.2 s), else the object downloaded whole as `<id>.seg` (splitting it cost
    a copy of every byte). The file must outlive nothing but the mapping, which a
    deletion leaves intact.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    local = store.local_path(key) if in_place else None
    if local is not None:
        found = _in_place(local, segment_id, key, cache_dir)
        if found is not None:
            return found
    elif in_place:
        found = _downloaded_in_place(store, key, segment_id, cache_dir)
        if found is not None:
            return found
    ann_path = cache_dir / f"{segment_id}.ann"
    head_path = cache_dir / f"{segment_id}.json"
    for attempt in range(3):
        if not (ann_path.exists() and head_path.exists()):
            _fetch(store, key, segment_id, cache_dir, head_path, ann_path)
        try:
            header = SegmentHeader.from_json(head_path.read_bytes())
            return LoadedSegment(segment_id, header, ann_path)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _fetch(
    store: ObjectStore, key: str, segment_id: str, cache_dir: Path, head_path: Path, ann_path: Path
) -> None:
    fd, part_name = tempfile.mkstemp(suffix=".part", dir=cache_dir)
    os.close(fd)
    part = Path(part_name)
    try:
        store.download(key, part)
        _split_verified(part, segment_id, key, head_path, ann_path)
    finally:
        part.unlink(missing_ok=True)


def _downloaded_in_place(
    store: ObjectStore, key: str, segment_id: str, cache_dir: Path
) -> LoadedSegment | None:
    """`load_segment` in place of a remote store: the object downloaded whole,
    verified, cut short of its sketch (no use once the segment is here: a sixth of
    a sketched segment's bytes) and kept as `<id>.seg`, then mapped; a `<id>.seg`
    already there was verified by the process that put it there, as split files
    are. None for a segment written before headers were padded (read split, from
    a copy)."""
    path = cache_dir / f"{segment_id}.seg"
    for attempt in range(3):
        if not path.exists():
            part = cache_dir / f"{segment_id}.{_unique()}.part"
            try:
                store.download(key, part)
                if not _trim_verified(part, segment_id, key):
                    return None
                part.replace(path)
            finally:
                part.unlink(missing_ok=True)
        try:
            return _in_place(path, segment_id, key, cache_dir, verify=False)
        except NotFound:  # another process sharing the cache evicted it meanwhile
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _mapped(path: Path, key: str) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(key) from None
    except ValueError:  # an empty file cannot be mapped
        raise CorruptSegment(f"{key}: not a Brainy segment") from None


def _layout(
    view: memoryview, segment_id: str, key: str, verify: bool
) -> tuple[int, SegmentHeader, int] | None:
    """(where the Annoy file starts, the header, the Annoy file's size) of the
    segment object `view`, checked against its digest if `verify`; None for one
    written before headers were padded."""
    prefix = bytes(view[:_PREFIX_LEN])
    covered = _check_prefix(prefix, key)
    start = _PREFIX_LEN + _header_length(prefix)
    if start % ALIGN:
        return None
    if verify:
        hasher = xxhash.xxh3_128(covered)
        hasher.update(view[_PREFIX_LEN:])  # hashed through the mapping: no copy
        _check_digest(hasher, prefix, segment_id, key)
    header = SegmentHeader.from_json(bytes(view[_PREFIX_LEN:start]))
    return start, header, _annoy_bytes(header, len(view) - start) if header.count else 0


def _trim_verified(path: Path, segment_id: str, key: str) -> bool:
    """Check the segment object at `path` against its digest and cut the file where
    its Annoy file ends; False (untouched) for one written before headers were
    padded."""
    mapped = _mapped(path, key)
    try:
        with memoryview(mapped) as view:
            found = _layout(view, segment_id, key, verify=True)
    finally:
        mapped.close()
    if found is None:
        return False
    start, _, annoy = found
    os.truncate(path, start + annoy)
    return True


def _in_place(
    path: Path, segment_id: str, key: str, cache_dir: Path, *, verify: bool = True
) -> LoadedSegment | None:
    """The segment object at `path` mapped where it lies, checked against its
    digest unless `verify` is off; None for one written before headers were
    padded (read from an aligned copy)."""
    # Unmapped when dropped (an error's traceback may hold a view of it).
    view = memoryview(_mapped(path, key))
    found = _layout(view, segment_id, key, verify)
    if found is None:
        return None
    start, header, _ = found
    return LoadedSegment(
        segment_id,
        header,
        path,
        offset=start,
        spill=cache_dir / f"{segment_id}.ann",
        # Its prefix and header; not a sketch after the Annoy file, never read here.
        header_bytes=start,
    )


def _annoy_bytes(header: SegmentHeader, rest: int) -> int:
    """The size of a segment's Annoy file, `rest` bytes following its header."""
    return rest if header.annoy_bytes is None else header.annoy_bytes


def _verified_header(f: BinaryIO, segment_id: str, key: str) -> bytes:
    """The header of the segment object `f` (left positioned after it), once its
    whole content matches the digest it starts with and the id it is named by."""
    prefix = f.read(_PREFIX_LEN)
    hasher = xxhash.xxh3_128(_check_prefix(prefix, key))
    while chunk := f.read(1 << 20):
        hasher.update(chunk)
    _check_digest(hasher, prefix, segment_id, key)
    f.seek(_PREFIX_LEN)
    return f.read(_header_length(prefix))


def _check_prefix(prefix: bytes, key: str) -> bytes:
    """What of the prefix the digest covers (the header length), once it is one."""
    if len(prefix) < _PREFIX_LEN or not prefix.startswith(MAGIC):
        raise CorruptSegment(f"{key}: not a Brainy segment")
    return prefix[len(MAGIC) + 16 :]


def _check_digest(hasher: Any, prefix: bytes, segment_id: str, key: str) -> None:
    if hasher.digest() != prefix[len(MAGIC) : len(MAGIC) + 16] or hasher.hexdigest() != segment_id:
        raise CorruptSegment(f"{key}: checksum mismatch")


def _header_length(prefix: bytes) -> int:
    return struct.unpack_from("<Q", prefix, len(MAGIC) + 16)[0]


def _split_verified(part: Path, segment_id: str, key: str, head_path: Path, ann_path: Path) -> None:
    with open(part, "rb") as f:
        header = _verified_header(f, segment_id, key)
        annoy_bytes = decode_json(header).get("annoy_bytes")
        tmp_ann = ann_path.with_name(f"{ann_path.name}.{_unique()}.tmp")
        with open(tmp_ann, "wb") as out:
            if annoy_bytes is None:
                shutil.copyfileobj(f, out, 1 << 20)
            else:  # not the sketch after it
                for start in range(0, annoy_bytes, CHUNK_BYTES):
                    out.write(f.read(min(CHUNK_BYTES, annoy_bytes - start)))
    tmp_ann.replace(ann_path)
    tmp_head = head_path.with_name(f"{head_path.name}.{_unique()}.tmp")
    tmp_head.write_bytes(header)
    tmp_head.replace(head_path)


def _unique() -> str:
    return f"{os.getpid()}-{threading.get_ident()}"
