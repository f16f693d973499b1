"""`memory://` — an in-process store for unit tests; conditional writes under a mutex."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

from brainy.storage.base import (
    Blob,
    NotFound,
    NotModified,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
)

# name → (objects, modification times, the lock that makes conditional ops atomic):
# every store opened on one name must share all three.
_SHARED: dict[str, tuple[dict[str, Blob], dict[str, float], threading.Lock]] = {}
_SHARED_LOCK = threading.Lock()


_ETAGS = itertools.count(1)


class MemoryStore(ObjectStore):
    """Objects in a dict. Stores opened with the same `memory://name` share it."""

    scheme = "memory"

    def __init__(self, name: str = "", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = name
        with _SHARED_LOCK:
            state = _SHARED.setdefault(name, ({}, {}, threading.Lock())) if name else None
        self._objects, self._modified, self._lock = state or ({}, {}, threading.Lock())

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    def _get(self, key, if_none_match, byte_range) -> Blob:
        with self._lock:
            blob = self._objects.get(key)
        if blob is None:
            raise NotFound(key)
        if if_none_match is not None and if_none_match == blob.etag:
            raise NotModified(key)
        if byte_range is not None:
            start, end = byte_range
            return Blob(blob.data[start : end + 1], blob.etag)
        return blob

    def _head(self, key) -> ObjectInfo:
        with self._lock:
            blob = self._objects.get(key)
        if blob is None:
            raise NotFound(key)
        return ObjectInfo(key, len(blob.data), blob.etag, self._modified.get(key, 0.0))

    def _put(self, key, data, if_absent, if_match) -> str:
        with self._lock:
            current = self._objects.get(key)
            if if_absent and current is not None:
                raise PreconditionFailed(f"{key} exists")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key} does not have ETag {if_match}")
            etag = f"m{next(_ETAGS)}"
            self._objects[key] = Blob(bytes(data), etag)
            self._modified[key] = time.time()
            return etag

    def _delete(self, key, if_match) -> None:
        with self._lock:
            current = self._objects.get(key)
            if if_match is not None:
                if current is None:
                    raise NotFound(key)
                if current.etag != if_match:
                    raise PreconditionFailed(f"{key} does not have ETag {if_match}")
            self._objects.pop(key, None)

    def _list(self, prefix) -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted((k, b) for k, b in self._objects.items() if k.startswith(prefix))
        for key, blob in items:
            yield ObjectInfo(key, len(blob.data), blob.etag, self._modified.get(key, 0.0))
