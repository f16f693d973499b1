"""Batches: the immutable, checksummed objects writers put in `<collection>/wal/`.

A batch is written once, by put-if-absent, and never changed. Its encoding is
`MAGIC | xxh3-128 digest of the body | body`, the body being a length-prefixed
JSON header (ids, operations, metadata), then the records' int64 timestamps,
then the float32 vectors of the upserts, in record order (all little-endian).

Batches are durable in users' buckets, so every format ever written stays
readable: format 1 carried the timestamps as a JSON list in the header (a
third of the header, and the one column that costs a Python int per record both
ways); format 2, written since, carries them as a binary column.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import xxhash

MAGIC = b"BRAINYB1"
FORMAT = 2
_READABLE = (1, 2)
UPSERT = "u"
DELETE = "d"
WAL = "wal"
BATCH_SUFFIX = ".batch"


class CorruptBatch(ValueError):
    """A batch object fails its checksum or cannot be decoded."""


@dataclass
class Batch:
    """Records of one write: upserts carry a vector, deletes do not.

    `timestamps` are integer microseconds, strictly increasing within a writer,
    so (timestamp, writer) orders every record Brainy has ever seen.
    """

    collection: str
    writer: str
    ids: list[str]
    ops: list[str]
    timestamps: np.ndarray  # int64, one per record
    vectors: np.ndarray  # float32, one row per upsert, in record order
    metadata: list[dict | None]  # one per record (None for deletes)
    request_hash: str = ""

    @property
    def upserts(self) -> int:
        return self.ops.count(UPSERT)

    @property
    def deletes(self) -> int:
        return len(self.ops) - self.upserts

    def encode(self) -> bytes:
        vectors = np.ascontiguousarray(self.vectors, dtype="<f4")
        timestamps = np.ascontiguousarray(self.timestamps, dtype="<i8")
        header = json.dumps(
            {
                "format": FORMAT,
                "collection": self.collection,
                "writer": self.writer,
                "ids": self.ids,
                "ops": "".join(self.ops),
                "metadata": self.metadata,
                "dimension": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
                "request_hash": self.request_hash,
            },
            separators=(",", ":"),
        ).encode()
        # The body's parts are hashed where they are and joined once: the vectors
        # (most of a batch) are copied only into the object itself.
        parts = [struct.pack("<Q", len(header)), header, timestamps.data, vectors.data]
        hasher = xxhash.xxh3_128()
        for part in parts:
            hasher.update(part)
        return b"".join([MAGIC, hasher.digest(), *parts])

    @classmethod
    def decode(cls, data: bytes, key: str = "") -> Batch:
        if len(data) < len(MAGIC) + 24 or not data.startswith(MAGIC):
            raise CorruptBatch(f"{key}: not a Brainy batch (bad magic or truncated)")
        # Views, not slices: the vectors are most of a batch, and stay where they are
        # (a read-only array over `data`).
        view = memoryview(data)
        digest, body = view[len(MAGIC) : len(MAGIC) + 16], view[len(MAGIC) + 16 :]
        if xxhash.xxh3_128_digest(body) != digest:
            raise CorruptBatch(f"{key}: checksum mismatch")
        try:
            (hlen,) = struct.unpack_from("<Q", body)
            header = json.loads(bytes(body[8 : 8 + hlen]))
            version = header.get("format")
            if version not in _READABLE:
                raise ValueError(f"format {version!r}; this release reads {_READABLE}")
            ops = list(header["ops"])
            dim = int(header["dimension"])
            rest = body[8 + hlen :]
            if version == 1:
                timestamps = np.asarray(header["timestamps"], dtype=np.int64)
            else:
                timestamps = np.frombuffer(rest, dtype="<i8", count=len(ops))
                rest = rest[8 * len(ops) :]
            vectors = np.frombuffer(rest, dtype="<f4")
            vectors = vectors.reshape(ops.count(UPSERT), dim) if dim else vectors.reshape(0, 0)
            batch = cls(
                collection=header["collection"],
                writer=header["writer"],
                ids=list(header["ids"]),
                ops=ops,
                timestamps=timestamps.astype(np.int64, copy=False),
                vectors=vectors.astype(np.float32, copy=False),
                metadata=list(header["metadata"]),
                request_hash=header.get("request_hash", ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
            raise CorruptBatch(f"{key}: cannot decode ({e})") from None
        if not (len(batch.ids) == len(batch.ops) == len(batch.timestamps) == len(batch.metadata)):
            raise CorruptBatch(f"{key}: column lengths disagree")
        return batch


def batch_key(collection: str, writer: str, batch_id: str, when: float | None = None) -> str:
    """`<collection>/wal/<yyyy>/<mm>/<dd>/<writer>/<batch-id>.batch`."""
    day = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    return f"{collection}/{WAL}/{day:%Y/%m/%d}/{writer}/{batch_id}{BATCH_SUFFIX}"


def keyed_batch_key(collection: str, idempotency_key: str) -> str:
    """The key a client's `Idempotency-Key` maps to, whichever instance and day the
    request (or its retry) lands on: `<collection>/wal/keyed/<hash>.batch`."""
    digest = xxhash.xxh3_128_hexdigest(f"{collection}\x00{idempotency_key}".encode())
    return f"{collection}/{WAL}/keyed/{digest}{BATCH_SUFFIX}"


def new_batch_id() -> str:
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"


def collection_of_batch(key: str) -> str | None:
    """The collection a batch key belongs to, or None if the key is not a batch."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[1] == WAL and key.endswith(BATCH_SUFFIX):
        return parts[0]
    return None


class WriterClock:
    """Strictly increasing microsecond timestamps for one writer, even within a
    microsecond and across threads, so one writer's writes apply in its order."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> np.ndarray:
        with self._lock:
            start = max(time.time_ns() // 1000, self._last + 1)
            self._last = start + n - 1
        return np.arange(start, start + n, dtype=np.int64)
