"""Deletion files: the masked rows of one segment, immutable and checksummed.

A segment's rows are masked when a newer copy of their id (or a delete) commits.
The manifest does not list masked rows: a segment's ref points at its current
deletion file, and a commit that masks more rows of a segment writes one new
file holding all of them (Lance keeps one deletion file per fragment the same
way). Files are never rewritten, so readers cache them by key for good.

Encoding: `MAGIC | xxh3-128 of the body | body`, the body being
`kind (u8) | rows in the segment (u32) | rows masked (u32) | payload`, where the
payload is either the sorted row numbers as little-endian u32 (`ARRAY`) or a
bitmap of the segment's rows (`BITMAP`, numpy's packbits order), whichever is
smaller.
"""

from __future__ import annotations

import struct
import uuid

import numpy as np
import xxhash

MAGIC = b"BRAINYD1"
ARRAY = 0
BITMAP = 1
_BODY_HEAD = struct.Struct("<BII")


class CorruptDeletionFile(ValueError):
    """A deletion file fails its checksum or cannot be decoded."""


def deletion_key(collection: str, segment_id: str) -> str:
    """A fresh key for a new deletion file of `segment_id` (never reused: a file
    written for a commit that lost its race is an orphan no later commit names)."""
    return f"{collection}/deletes/{segment_id}/{uuid.uuid4().hex}.del"


def encode_mask(rows: np.ndarray, count: int) -> bytes:
    """Encode the sorted, unique row numbers `rows` of a segment of `count` rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows[0] < 0 or rows[-1] >= count or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"masked rows must be sorted, unique and in [0, {count})")
    array_bytes = 4 * rows.size
    bitmap_bytes = (count + 7) // 8
    if array_bytes <= bitmap_bytes:
        kind, payload = ARRAY, rows.astype("<u4").tobytes()
    else:
        bits = np.zeros(count, dtype=bool)
        bits[rows] = True
        kind, payload = BITMAP, np.packbits(bits).tobytes()
    body = _BODY_HEAD.pack(kind, count, rows.size) + payload
    return MAGIC + xxhash.xxh3_128_digest(body) + body


def decode_mask(data: bytes, key: str = "") -> tuple[np.ndarray, int]:
    """(sorted masked row numbers as int64, rows in the segment)."""
    if len(data) < len(MAGIC) + 16 + _BODY_HEAD.size or not data.startswith(MAGIC):
        raise CorruptDeletionFile(f"{key}: not a Brainy deletion file")
    digest, body = data[len(MAGIC) : len(MAGIC) + 16], data[len(MAGIC) + 16 :]
    if xxhash.xxh3_128_digest(body) != digest:
        raise CorruptDeletionFile(f"{key}: checksum mismatch")
    kind, count, masked = _BODY_HEAD.unpack_from(body)
    payload = body[_BODY_HEAD.size :]
    if kind == ARRAY and len(payload) == 4 * masked:
        rows = np.frombuffer(payload, dtype="<u4").astype(np.int64)
    elif kind == BITMAP and len(payload) == (count + 7) // 8:
        rows = np.flatnonzero(np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:count])
    else:
        raise CorruptDeletionFile(f"{key}: bad payload (kind {kind}, {len(payload)} bytes)")
    if rows.size != masked or (rows.size and rows[-1] >= count):
        raise CorruptDeletionFile(f"{key}: {rows.size} rows decoded, header says {masked}")
    return rows, count
