"""The object-store interface every backend implements.

Public methods live here, once: they refuse writes on a read-only store before
any request leaves the process, count requests by kind, and retry transient
failures with capped exponential backoff and full jitter. Backends implement the
underscored primitives and translate their own errors into the types below.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class StorageError(Exception):
    """Base class of every error a store raises."""


class NotFound(StorageError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write or delete lost: the object exists, or its ETag moved."""


class NotModified(StorageError):
    """A conditional GET found the object unchanged (its ETag still matches)."""


class Transient(StorageError):
    """A failure worth retrying: 5xx, throttling, a concurrent conflict, a reset."""


class ReadOnlyStore(StorageError):
    """A write was attempted on a store opened read-only; nothing was sent."""


class ConditionalWritesUnsupported(StorageError):
    """The store ignores conditional writes; running on it would lose data."""


@dataclass(frozen=True)
class Blob:
    """An object's bytes and the ETag they were read at."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    etag: str
    modified: float = 0.0  # epoch seconds of the last write, as the store reports it


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, for `Transient` errors only."""

    attempts: int = 6
    base_delay: float = 0.05
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


def retry_transient(fn: Callable[[], T], policy: RetryPolicy) -> T:
    """Call `fn`, retrying it on `Transient` up to `policy.attempts` times in all."""
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Transient:
            if attempt == policy.attempts - 1:
                raise
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


# The request kinds counted per store, also the label values of the metrics.
REQUEST_KINDS = ("get", "head", "put", "delete", "list", "download", "upload")

# S3 reports modification times in whole seconds (HTTP dates), truncated: an object
# stamped `modified` was written at some time in [modified, modified + this).
MODIFIED_RESOLUTION = 1.0


class ObjectStore(ABC):
    """A flat key space of immutable-or-CAS objects: the only shared state of Brainy.

    Args:
        read_only: refuse every write before it is sent.
        retry: the backoff policy for transient failures.
    """

    scheme: str = ""
    # Where the store's keys live inside a bucket, for stores that have one: lets an
    # event naming (bucket, full key) be mapped back to a store key.
    bucket: str | None = None
    prefix: str = ""

    def __init__(self, *, read_only: bool = False, retry: RetryPolicy | None = None) -> None:
        self.read_only = read_only
        self.retry = retry or RetryPolicy()
        self.requests: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._observers: list[Callable[[str], None]] = []

    # ----------------------------------------------------------------- public API

    @property
    def local_clock(self) -> bool:
        """Whether the store's modification times come from this machine's clock
        (a local folder, memory): then no skew between the two is possible."""
        return self.scheme in ("memory", "file")

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL this store was opened from (`file:///...`, `s3://...`)."""

    def get(
        self,
        key: str,
        *,
        if_none_match: str | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> Blob:
        """Read an object.

        Args:
            key: the object key.
            if_none_match: an ETag; raise `NotModified` when the object still has it.
            byte_range: `(start, end)` inclusive byte offsets, as HTTP ranges.

        Raises:
            NotFound, NotModified, StorageError.
        """
        return self._call("get", lambda: self._get(key, if_none_match, byte_range))

    def head(self, key: str) -> ObjectInfo:
        """Size and ETag of an object. Raises `NotFound`."""
        return self._call("head", lambda: self._head(key))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write an object whole and return its new ETag.

        Args:
            if_absent: create only; raise `PreconditionFailed` if the key exists.
            if_match: replace only while the object has this ETag.
        """
        if if_absent and if_match is not None:
            raise ValueError("put: if_absent and if_match are exclusive")
        self._check_writable("put", key)
        return self._call("put", lambda: self._put(key, data, if_absent, if_match))

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete an object. A missing object is not an error unless `if_match` is set."""
        self._check_writable("delete", key)
        self._call("delete", lambda: self._delete(key, if_match))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""
        self._count("list")
        yield from self._list(prefix)

    def download(self, key: str, path: Path) -> None:
        """Stream an object into a local file (written in full, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
        try:
            self._call("download", lambda: self._download(key, tmp))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        """Where the object lies as a local file, for a store that keeps its objects
        so (a folder), so that an immutable one can be read in place rather than
        copied; None for any other store. Counted as an `open` request: the file
        may still be missing (the caller's open then raises `NotFound`)."""
        path = self._local_path(key)
        if path is not None:
            self._count("open")
        return path

    def _local_path(self, key: str) -> Path | None:
        return None

    def upload(self, key: str, path: Path, *, if_absent: bool = False) -> str:
        """Stream a local file into an object; returns its ETag."""
        self._check_writable("upload", key)
        return self._call("upload", lambda: self._upload(key, Path(path), if_absent))

    def check_conditional_writes(self, probe_key: str) -> None:
        """Prove that put-if-absent is honoured, or raise `ConditionalWritesUnsupported`.

        Some S3-compatible stores ignore `If-None-Match`; on them a commit could
        silently overwrite another, so Brainy refuses to run there.

        Args:
            probe_key: where to probe. A unique suffix is added: probes that run at
                once (two cold starts of one function share an instance id) must
                not delete each other's object, or one would see its put-if-absent
                succeed and take an honest store for a broken one.
        """
        probe_key = _unique(probe_key)
        self.put(probe_key, b"probe", if_absent=False)
        try:
            self.put(probe_key, b"probe-2", if_absent=True)
        except PreconditionFailed:
            return
        finally:
            self.delete(probe_key)
        raise ConditionalWritesUnsupported(
            f"{self.url} accepted a put-if-absent over an existing object ({probe_key}); "
            "conditional writes are required"
        )

    def measure_clock_skew(self, probe_key: str) -> float:
        """Seconds by which the local clock is ahead of the store's (negative: behind).

        Writes a small object, reads back when the store says it was written, and
        deletes it. The store's time is the interval its timestamp stands for,
        `[modified, modified + MODIFIED_RESOLUTION)`; the local time is the interval
        from just before the put to its answer. The skew is the gap between the two
        intervals, 0 when they overlap: so a store that keeps time by the local
        clock (a folder, memory) measures 0.

        Args:
            probe_key: where to write the probe; a unique suffix is added.

        Raises:
            ReadOnlyStore: on a read-only store.
            StorageError: when the store fails.
        """
        probe_key = _unique(probe_key)
        before = time.time()
        self.put(probe_key, b"clock")
        after = time.time()
        try:
            written = self.head(probe_key).modified
        finally:
            self.delete(probe_key)
        if before > written + MODIFIED_RESOLUTION:
            return before - (written + MODIFIED_RESOLUTION)
        if written > after:
            return after - written
        return 0.0

    def key_from_event(self, bucket: str, key: str) -> str | None:
        """The store key an event's (bucket, object name) refers to, or None when the
        object lies outside this store (another bucket, or outside the prefix)."""
        if self.bucket and bucket and bucket != self.bucket:
            return None
        if self.prefix:
            head = self.prefix.rstrip("/") + "/"
            return key[len(head) :] if key.startswith(head) else None
        return key

    def add_observer(self, fn: Callable[[str], None]) -> None:
        """Call `fn(kind)` for every request this store sends (metrics hook)."""
        self._observers.append(fn)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and sockets."""

    # ------------------------------------------------------------ backend hooks

    @abstractmethod
    def _get(
        self, key: str, if_none_match: str | None, byte_range: tuple[int, int] | None
    ) -> Blob: ...

    @abstractmethod
    def _head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _put(self, key: str, data: bytes, if_absent: bool, if_match: str | None) -> str: ...

    @abstractmethod
    def _delete(self, key: str, if_match: str | None) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def _download(self, key: str, path: Path) -> None:
        path.write_bytes(self._get(key, None, None).data)

    def _upload(self, key: str, path: Path, if_absent: bool) -> str:
        return self._put(key, path.read_bytes(), if_absent, None)

    # ----------------------------------------------------------------- helpers

    def _check_writable(self, op: str, key: str) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"{op} {key!r} refused: the store {self.url} is read-only")

    def _count(self, kind: str) -> None:
        with self._count_lock:
            self.requests[kind] += 1
        for fn in self._observers:
            fn(kind)

    def _call(self, kind: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            self._count(kind)
            return fn()

        return retry_transient(attempt, self.retry)

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"<{type(self).__name__} {self.url} {mode}>"


def _unique(key: str) -> str:
    """`key` made unique to this call, for probe objects that must never collide."""
    return f"{key}-{uuid.uuid4().hex}"


def join_key(*parts: str) -> str:
    """Join key parts with single slashes."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))
