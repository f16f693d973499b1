"""A store wrapper that injects faults at the N-th primitive call.

`FaultyStore` sits *under* the public API of `ObjectStore`: it implements the
backend primitives (`_get`, `_put`, ...) by delegating to another store's, so the
base class still counts every request and retries `Transient` errors exactly as
it does for a real backend. A fault is planned by call number:

* ``crash-before``: raise `Crash` instead of making the call; the operation never
  happens. `Crash` is not a `StorageError`, so nothing retries it: it stands for
  the process dying at that point of its pipeline.
* ``crash-after``: make the call, then raise `Crash`. The write landed but its
  caller never learned so (a lost response, or a death between two writes).
* ``transient``: raise `Transient` once, before the call; the base class must
  retry it and nothing may change.
* ``lost-response``: make the call, then raise `Transient`: a 5xx or a reset
  after the store applied the request, so the retry meets its own earlier write
  (a put-if-absent then fails its precondition).

Every call is recorded as a `Call` so a test can first run a workload without
faults, count its calls, then crash it at each one in turn.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from brainy.storage import Blob, ObjectInfo, ObjectStore, RetryPolicy, StorageError, Transient
from brainy.storage.base import retry_transient

T = TypeVar("T")

Fault = Literal["crash-before", "crash-after", "transient", "lost-response"]
FAULTS: tuple[Fault, ...] = ("crash-before", "crash-after", "transient", "lost-response")
WRITE_OPS = frozenset({"put", "delete", "upload"})


class Crash(Exception):
    """The process died here. Deliberately not a `StorageError`: nothing may catch
    and retry it as if the store had failed."""


@dataclass(frozen=True)
class Call:
    """One primitive call as the wrapped store saw it."""

    n: int  # 1-based, in the order calls were made, retries included
    op: str  # get | head | put | delete | list | download | upload
    key: str  # the key, or the prefix for a list
    fault: Fault | None
    landed: bool  # the operation reached the inner store and completed

    @property
    def is_write(self) -> bool:
        return self.op in WRITE_OPS


class FaultyStore(ObjectStore):
    """Wraps `inner`, failing at the call numbers `plan` names.

    Args:
        inner: the store that really holds the objects.
        plan: call number → fault; empty for a clean run that only records.
        rule: `(n, op, key) → fault or None`, consulted for calls `plan` does not
            name: faults aimed at an object rather than at a moment.
        before: `(n, op, key) → None`, run just before each call reaches the inner
            store: a seam to interleave another process's step at an exact point.
        read_only: as for any store (refused by the base class before any call).

    Attributes:
        calls: every primitive call made, in order.
        written: key → the bytes of the last put that landed on it (uploads
            included), so a test can see objects a later step removed.
    """

    def __init__(
        self,
        inner: ObjectStore,
        plan: dict[int, Fault] | None = None,
        *,
        rule: Callable[[int, str, str], Fault | None] | None = None,
        before: Callable[[int, str, str], None] | None = None,
        read_only: bool = False,
    ) -> None:
        # No backoff: injected transients would only slow the sweep down.
        super().__init__(read_only=read_only, retry=RetryPolicy(attempts=6, base_delay=0.0))
        self.inner = inner
        self.plan: dict[int, Fault] = dict(plan or {})
        self.rule = rule
        self.before = before
        self.calls: list[Call] = []
        self.written: dict[str, bytes] = {}
        self.bucket = inner.bucket
        self.prefix = inner.prefix
        self.scheme = inner.scheme
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.inner.url

    def close(self) -> None:
        self.inner.close()

    @property
    def count(self) -> int:
        return len(self.calls)

    def fired(self) -> list[Call]:
        """The calls at which a planned fault was injected."""
        return [c for c in self.calls if c.fault is not None]

    # ------------------------------------------------------------ primitives

    def _get(self, key, if_none_match, byte_range) -> Blob:
        return self._run("get", key, lambda: self.inner._get(key, if_none_match, byte_range))

    def _head(self, key) -> ObjectInfo:
        return self._run("head", key, lambda: self.inner._head(key))

    def _put(self, key, data, if_absent, if_match) -> str:
        def put() -> str:
            etag = self.inner._put(key, data, if_absent, if_match)
            self.written[key] = bytes(data)
            return etag

        return self._run("put", key, put)

    def _delete(self, key, if_match) -> None:
        self._run("delete", key, lambda: self.inner._delete(key, if_match))

    def _list(self, prefix) -> Iterator[ObjectInfo]:
        # The base class leaves list retries to backends (S3 and GCS retry each page
        # themselves), so this one does too, with the whole listing as one page. A
        # crash "after" it means the caller saw nothing, like a response lost on
        # the wire.
        sent = 0

        def page() -> list[ObjectInfo]:
            nonlocal sent
            if sent:
                self._count("list")
            sent += 1
            return self._run("list", prefix, lambda: list(self.inner._list(prefix)))

        yield from retry_transient(page, self.retry)

    def _download(self, key: str, path: Path) -> None:
        self._run("download", key, lambda: self.inner._download(key, path))

    def _upload(self, key: str, path: Path, if_absent: bool) -> str:
        def upload() -> str:
            etag = self.inner._upload(key, path, if_absent)
            self.written[key] = path.read_bytes()
            return etag

        return self._run("upload", key, upload)

    # ----------------------------------------------------------------- faults

    def _run(self, op: str, key: str, fn: Callable[[], T]) -> T:
        with self._lock:
            n = len(self.calls) + 1
            fault = self.plan.get(n)
            if fault is None and self.rule is not None:
                fault = self.rule(n, op, key)
            # Reserve the slot now so concurrent callers get distinct numbers.
            self.calls.append(Call(n, op, key, fault, landed=False))
        if fault == "crash-before":
            raise Crash(f"crash before call {n}: {op} {key}")
        if fault == "transient":
            raise Transient(f"injected transient failure at call {n}: {op} {key}")
        if self.before is not None:
            self.before(n, op, key)
        try:
            result = fn()
        except StorageError:
            # An error answer is lost the same way as a success.
            self._after(n, op, key, fault)
            raise
        with self._lock:
            self.calls[n - 1] = Call(n, op, key, fault, landed=True)
        self._after(n, op, key, fault)
        return result

    @staticmethod
    def _after(n: int, op: str, key: str, fault: Fault | None) -> None:
        if fault == "crash-after":
            raise Crash(f"crash after call {n}: {op} {key}")
        if fault == "lost-response":
            raise Transient(f"injected lost response after call {n}: {op} {key}")


class ClockSkewedStore(FaultyStore):
    """Wraps `inner` as a store whose clock runs `offset` seconds away from this
    machine's: every modification time it reports is shifted by it (positive: the
    store's clock is ahead). `offset` may be changed as the test goes on.
    """

    def __init__(self, inner: ObjectStore, offset: float, **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.offset = offset

    def _head(self, key) -> ObjectInfo:
        return self._shifted(super()._head(key))

    def _list(self, prefix) -> Iterator[ObjectInfo]:
        for info in super()._list(prefix):
            yield self._shifted(info)

    def _shifted(self, info: ObjectInfo) -> ObjectInfo:
        return dataclasses.replace(info, modified=info.modified + self.offset)
