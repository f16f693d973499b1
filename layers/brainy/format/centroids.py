"""Centroids objects: the partition centroids of a semantic collection (DESIGN §6),
immutable and checksummed.

Trained once, at a collection's first compaction, and referenced by every
manifest version after it (`Manifest.centroids`); never rewritten (rows were
routed by them, so changing them would mean rewriting every partition).

Encoding: `MAGIC | xxh3-128 of the body | body`, the body being
`partitions (u32) | dimension (u32) | the matrix as little-endian float32`, then
(format 2, `BRAINYC2`) `reduced dimension r (u32) | the dimension x r projection
basis as float32` and a JSON object with the probe calibration measured when the
centroids were trained: `{"nprobe": {"0.9": 12, "0.95": 20, ...}, "sample": m}`,
the partitions a query must probe for its true neighbours to lie in them at each
recall level (see `brainy.format.calibration.calibrate_probes`). Format 1 objects
(no basis, no calibration) are still read.

The basis (top principal directions of the rows' second moment, see
`brainy.format.partitioning.train_basis`) lets a search scan a partition in r
dimensions and re-rank only its best candidates in full (`brainy.read.search`).
"""

from __future__ import annotations

import contextlib
import json
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from brainy.format.partitioning import basis_dimensions
from brainy.storage import ObjectStore, PreconditionFailed

MAGIC = b"BRAINYC2"
_MAGIC_V1 = b"BRAINYC1"
_HEAD = struct.Struct("<II")
_REDUCED = struct.Struct("<I")


@dataclass(frozen=True)
class Centroids:
    """A semantic collection's centroids and what was measured with them.

    Attributes:
        matrix: partitions x dimension float32.
        calibration: `{"nprobe": {level: probes}, "sample": m}`; empty for
            centroids written before calibration.
    """

    matrix: np.ndarray
    calibration: dict[str, Any] = field(default_factory=dict)
    basis: np.ndarray | None = None  # dimension x r float32, or None

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def probes_for(self, level: float) -> int | None:
        """The calibrated probes of the lowest recorded level at or above `level`
        (None: no calibration, or `level` above every recorded one)."""
        recorded = sorted((float(k), int(v)) for k, v in self.calibration.get("nprobe", {}).items())
        for at, probes in recorded:
            if at >= level - 1e-9:
                return min(probes, len(self))
        return None


class CorruptCentroids(ValueError):
    """A centroids object fails its checksum or cannot be decoded."""


def centroids_key(collection: str) -> str:
    """A fresh key: a centroids object written for a compaction that lost its
    commit is an orphan no later version names, for GC to collect."""
    return f"{collection}/meta/centroids/{uuid.uuid4().hex}.f32"


def encode_centroids(centroids: Centroids) -> bytes:
    matrix = np.ascontiguousarray(centroids.matrix, dtype="<f4")
    if matrix.ndim != 2 or not matrix.size:
        raise ValueError(f"centroids must be a non-empty matrix, got shape {matrix.shape}")
    basis = centroids.basis
    if basis is None:
        basis = np.zeros((matrix.shape[1], 0), dtype="<f4")
    basis = np.ascontiguousarray(basis, dtype="<f4")
    if basis.ndim != 2 or basis.shape[0] != matrix.shape[1]:
        raise ValueError(f"basis must be {matrix.shape[1]} x r, got shape {basis.shape}")
    extra = json.dumps(centroids.calibration, separators=(",", ":")).encode()
    body = (
        _HEAD.pack(*matrix.shape)
        + matrix.tobytes()
        + _REDUCED.pack(basis.shape[1])
        + basis.tobytes()
        + extra
    )
    return MAGIC + xxhash.xxh3_128_digest(body) + body


def decode_centroids(data: bytes, key: str = "") -> Centroids:
    """The centroids and their calibration (format 1: none)."""
    magic = data[: len(MAGIC)]
    if len(data) < len(MAGIC) + 16 + _HEAD.size or magic not in (MAGIC, _MAGIC_V1):
        raise CorruptCentroids(f"{key}: not a Brainy centroids object")
    digest, body = data[len(MAGIC) : len(MAGIC) + 16], data[len(MAGIC) + 16 :]
    if xxhash.xxh3_128_digest(body) != digest:
        raise CorruptCentroids(f"{key}: checksum mismatch")
    rows, dimension = _HEAD.unpack_from(body)
    size = 4 * rows * dimension
    payload, extra = body[_HEAD.size : _HEAD.size + size], body[_HEAD.size + size :]
    if not rows or not dimension or len(payload) != size or (magic == _MAGIC_V1 and extra):
        raise CorruptCentroids(
            f"{key}: {len(body) - _HEAD.size} bytes for {rows} x {dimension} floats"
        )
    basis = None
    if magic == MAGIC:
        if len(extra) < _REDUCED.size:
            raise CorruptCentroids(f"{key}: truncated after the centroids")
        (reduced,) = _REDUCED.unpack_from(extra)
        end = _REDUCED.size + 4 * dimension * reduced
        if len(extra) < end:
            raise CorruptCentroids(f"{key}: truncated basis of {dimension} x {reduced}")
        raw = np.frombuffer(extra[_REDUCED.size : end], dtype="<f4")
        # Directions come strongest first: a basis wider than a scan reads now
        # (centroids trained before, when it kept a quarter) is cut to its head.
        basis = raw.reshape(dimension, reduced)[:, : basis_dimensions(dimension) or reduced]
        basis = np.ascontiguousarray(basis, dtype=np.float32) if reduced else None
        extra = extra[end:]
    try:
        calibration = json.loads(extra) if extra else {}
    except ValueError as e:
        raise CorruptCentroids(f"{key}: bad calibration ({e})") from None
    matrix = np.frombuffer(payload, dtype="<f4").reshape(rows, dimension).astype(np.float32)
    return Centroids(matrix, calibration, basis)


def write_centroids(store: ObjectStore, collection: str, centroids: Centroids) -> str:
    """Write `centroids` under a fresh key (put-if-absent); returns the key."""
    key = centroids_key(collection)
    # A fresh key is taken only by this put's own retry after a lost response.
    with contextlib.suppress(PreconditionFailed):
        store.put(key, encode_centroids(centroids), if_absent=True)
    return key


def read_centroids(store: ObjectStore, key: str) -> Centroids:
    """The centroids at `key`. Raises `NotFound` or `CorruptCentroids`."""
    return decode_centroids(store.get(key).data, key)
