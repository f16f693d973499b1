"""`file:///path` — a local folder, the embedded default.

Put-if-absent links a fully written and fsynced temp file into place
(`link()` fails if the name exists), so a reader never sees a partial object
and two writers cannot both create one key. Compare-and-swap and conditional
delete hold an `flock` on a per-key lock file, which serialises them across
processes on one host. The ETag is (inode, mtime, size): every write makes a
new file, so an ETag never comes back after the object changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import xxhash

from brainy.storage.base import (
    Blob,
    NotFound,
    NotModified,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StorageError,
)

_INTERNAL = ".brainy-store"  # temp files and lock files, never listed


def stat_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalStore(ObjectStore):
    """Objects as files under `root`; keys map to relative paths."""

    scheme = "file"

    def __init__(self, root: str | Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.root = Path(root).resolve()
        self._tmp = self.root / _INTERNAL / "tmp"
        self._locks = self.root / _INTERNAL / "locks"
        if not self.read_only:
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._locks.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/") or "\x00" in key:
            raise StorageError(f"invalid object key {key!r}")
        if key.split("/", 1)[0] == _INTERNAL:
            raise StorageError(f"object key {key!r} is reserved")
        return self.root / key

    @contextlib.contextmanager
    def _open(self, key: str) -> Iterator[tuple[BinaryIO, str]]:
        try:
            with open(self._path(key), "rb") as f:
                yield f, stat_etag(os.fstat(f.fileno()))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None

    def _etag(self, key: str) -> str | None:
        try:
            return stat_etag(os.stat(self._path(key)))
        except FileNotFoundError:
            return None

    def _get(self, key, if_none_match, byte_range) -> Blob:
        with self._open(key) as (f, etag):
            if if_none_match is not None and if_none_match == etag:
                raise NotModified(key)
            if byte_range is None:
                return Blob(f.read(), etag)
            start, end = byte_range
            f.seek(start)
            return Blob(f.read(end - start + 1), etag)

    def _head(self, key) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        return ObjectInfo(key, st.st_size, stat_etag(st), st.st_mtime)

    def _write_temp(self, data: bytes | Path) -> Path:
        """A fully written temp file holding `data` (bytes, or a file's content,
        copied in chunks so a large upload is never held in memory)."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp / uuid.uuid4().hex
        with open(tmp, "wb") as f:
            if isinstance(data, Path):
                with open(data, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            else:
                f.write(data)
            f.flush()
            # A nanosecond mtime of our own: file-system clocks tick in jiffies,
            # and the ETag must not repeat when an inode number is reused.
            now = time.time_ns()
            os.utime(f.fileno(), ns=(now, now))
            os.fsync(f.fileno())
        return tmp

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        self._locks.mkdir(parents=True, exist_ok=True)
        lock_path = self._locks / xxhash.xxh3_64_hexdigest(key.encode())
        with open(lock_path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _put(self, key, data: bytes | Path, if_absent, if_match) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(data)
        try:
            if if_absent:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(f"{key} exists") from None
            elif if_match is not None:
                with self._key_lock(key):
                    current = self._etag(key)
                    if current is None:
                        raise PreconditionFailed(f"{key} is absent")
                    if current != if_match:
                        raise PreconditionFailed(f"{key} does not have ETag {if_match}")
                    os.replace(tmp, path)
            else:
                os.replace(tmp, path)
            return stat_etag(os.stat(path))
        finally:
            tmp.unlink(missing_ok=True)

    def _delete(self, key, if_match) -> None:
        path = self._path(key)
        if if_match is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        with self._key_lock(key):
            current = self._etag(key)
            if current is None:
                raise NotFound(key)
            if current != if_match:
                raise PreconditionFailed(f"{key} does not have ETag {if_match}")
            path.unlink()

    def _list(self, prefix) -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix names, then filter by the remainder.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if not start.is_dir():
            return
        found: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != _INTERNAL]
                rel_dir = ""
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    found.append((key, Path(dirpath) / name))
        for key, path in sorted(found):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            yield ObjectInfo(key, st.st_size, stat_etag(st), st.st_mtime)

    def _download(self, key, path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            raise NotFound(key) from None

    def _local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _upload(self, key, path, if_absent) -> str:
        return self._put(key, Path(path), if_absent, None)
