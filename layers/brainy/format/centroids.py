"""Centroids objects: the partition centroids of a semantic collection (DESIGN §6),
immutable and checksummed.

Trained once, at a collection's first compaction, and referenced by every
manifest version after it (`Manifest.centroids`); never rewritten (rows were
routed by them, so changing them would mean rewriting every partition).

Encoding: `MAGIC | xxh3-128 of the body | body`, the body being
`partitions (u32) | dimension (u32) | the matrix as little-endian float32`.
"""

from __future__ import annotations

import contextlib
import struct
import uuid

import numpy as np
import xxhash

from brainy.storage import ObjectStore, PreconditionFailed

MAGIC = b"BRAINYC1"
_HEAD = struct.Struct("<II")


class CorruptCentroids(ValueError):
    """A centroids object fails its checksum or cannot be decoded."""


def centroids_key(collection: str) -> str:
    """A fresh key: a centroids object written for a compaction that lost its
    commit is an orphan no later version names, for GC to collect."""
    return f"{collection}/meta/centroids/{uuid.uuid4().hex}.f32"


def encode_centroids(centroids: np.ndarray) -> bytes:
    matrix = np.ascontiguousarray(centroids, dtype="<f4")
    if matrix.ndim != 2 or not matrix.size:
        raise ValueError(f"centroids must be a non-empty matrix, got shape {matrix.shape}")
    body = _HEAD.pack(*matrix.shape) + matrix.tobytes()
    return MAGIC + xxhash.xxh3_128_digest(body) + body


def decode_centroids(data: bytes, key: str = "") -> np.ndarray:
    """partitions x dimension float32 centroids."""
    if len(data) < len(MAGIC) + 16 + _HEAD.size or not data.startswith(MAGIC):
        raise CorruptCentroids(f"{key}: not a Brainy centroids object")
    digest, body = data[len(MAGIC) : len(MAGIC) + 16], data[len(MAGIC) + 16 :]
    if xxhash.xxh3_128_digest(body) != digest:
        raise CorruptCentroids(f"{key}: checksum mismatch")
    rows, dimension = _HEAD.unpack_from(body)
    payload = body[_HEAD.size :]
    if not rows or not dimension or len(payload) != 4 * rows * dimension:
        raise CorruptCentroids(f"{key}: {len(payload)} bytes for {rows} x {dimension} floats")
    return np.frombuffer(payload, dtype="<f4").reshape(rows, dimension).astype(np.float32)


def write_centroids(store: ObjectStore, collection: str, centroids: np.ndarray) -> str:
    """Write `centroids` under a fresh key (put-if-absent); returns the key."""
    key = centroids_key(collection)
    # A fresh key is taken only by this put's own retry after a lost response.
    with contextlib.suppress(PreconditionFailed):
        store.put(key, encode_centroids(centroids), if_absent=True)
    return key


def read_centroids(store: ObjectStore, key: str) -> np.ndarray:
    """The centroids at `key`. Raises `NotFound` or `CorruptCentroids`."""
    return decode_centroids(store.get(key).data, key)
