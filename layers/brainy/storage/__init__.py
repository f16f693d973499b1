"""One object-store interface, backends chosen by URL (see DESIGN §3)."""

from __future__ import annotations

from urllib.parse import urlparse

from brainy.storage.base import (
    Blob,
    ConditionalWritesUnsupported,
    NotFound,
    NotModified,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    ReadOnlyStore,
    RetryPolicy,
    StorageError,
    Transient,
    join_key,
)

__all__ = [
    "Blob",
    "ConditionalWritesUnsupported",
    "NotFound",
    "NotModified",
    "ObjectInfo",
    "ObjectStore",
    "PreconditionFailed",
    "ReadOnlyStore",
    "RetryPolicy",
    "StorageError",
    "Transient",
    "join_key",
    "open_store",
]


def open_store(
    url: str,
    *,
    read_only: bool = False,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> ObjectStore:
    """Open the store a URL names: `file:///path`, `memory://name`, `s3://bucket/prefix`,
    `gs://bucket/prefix`. A bare path is a local folder."""
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme in ("", "file"):
        from brainy.storage.local import LocalStore

        path = parsed.path if scheme == "file" else url
        if scheme == "file" and parsed.netloc:
            path = parsed.netloc + parsed.path
        return LocalStore(path, read_only=read_only)
    if scheme == "memory":
        from brainy.storage.memory import MemoryStore

        return MemoryStore(parsed.netloc + parsed.path, read_only=read_only)
    if scheme == "s3":
        from brainy.storage.s3 import S3Store

        return S3Store(
            parsed.netloc,
            parsed.path.strip("/"),
            read_only=read_only,
            endpoint_url=endpoint_url,
            region=region,
        )
    if scheme == "gs":
        from brainy.storage.gcs import GCSStore

        return GCSStore(parsed.netloc, parsed.path.strip("/"), read_only=read_only)
    raise ValueError(f"store URL {url!r}: unknown scheme {scheme!r} (file, memory, s3, gs)")
