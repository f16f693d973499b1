"""`gs://bucket/prefix` — Google Cloud Storage via google-cloud-storage.

The ETag of an object is its *generation* as a decimal string: GCS mints a new
one on every write, so unlike an S3 ETag it never comes back after a change.
Conditional writes are generation preconditions: put-if-absent is
`ifGenerationMatch=0`, compare-and-swap and conditional delete are
`ifGenerationMatch=<generation>`, a conditional GET is `ifGenerationNotMatch`.

The library's own retries are switched off (`retry=None`): `RetryPolicy` in the
base class is the one retry loop, so every attempt is counted and a 412 comes
through as `PreconditionFailed` instead of being retried or swallowed.

With `STORAGE_EMULATOR_HOST` set the client talks to an emulator anonymously.
fake-gcs-server (1.54) honours preconditions only on single-request uploads: it
ignores them on DELETE, on resumable uploads (used above 8 MiB) and on GETs. On
an emulator the store therefore also checks those conditions itself just before
sending the request. That check is not atomic, so it only keeps tests honest; the
request still carries the precondition, which real GCS enforces atomically.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
from collections.abc import Iterator
from typing import IO, Any

import requests
import urllib3
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from brainy.storage.base import (
    Blob,
    NotFound,
    NotModified,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    RetryPolicy,
    StorageError,
    Transient,
    retry_transient,
)

EMULATOR_PROJECT = "brainy-local"
# Above this size google-cloud-storage switches from one request to a resumable
# upload (its `_MAX_MULTIPART_SIZE`).
SINGLE_REQUEST_MAX = 8 * 1024 * 1024
TIMEOUT = (10.0, 60.0)  # connect, read (seconds)

CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    ConnectionError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException,
    urllib3.exceptions.HTTPError,
    auth_exc.TransportError,
    DataCorruption,  # a checksum mismatch in transit: fetch it again
)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def translate_error(err: Exception, op: str, where: str) -> StorageError:
    """Turn a google-cloud-storage error into one of Brainy's storage errors.

    Args:
        err: the exception the library raised.
        op: the operation that failed ("get", "put", "download", ...).
        where: the object it was about, e.g. `gs://bucket/key`.

    Returns:
        `NotFound` (404), `PreconditionFailed` (412), `NotModified` (304),
        `Transient` (408, 429, 5xx, connection failures, corrupt transfers) or
        `StorageError`.
    """
    status: int | None = None
    if isinstance(err, gexc.GoogleAPICallError):
        status = err.code
    elif isinstance(err, InvalidResponse):
        status = getattr(err.response, "status_code", None)
    if status is not None:
        detail = f"{op} {where}: HTTP {status} {err}"
        if status == 404:
            return NotFound(detail)
        if status == 412:
            return PreconditionFailed(detail)
        if status == 304:
            return NotModified(detail)
        if status in TRANSIENT_STATUS or (status >= 500 and status != 501):
            return Transient(detail)
        return StorageError(detail)
    if isinstance(err, CONNECTION_ERRORS):
        return Transient(f"{op} {where}: {type(err).__name__}: {err}")
    return StorageError(f"{op} {where}: {type(err).__name__}: {err}")


def _generation(etag: str) -> int | None:
    """The generation an ETag of this store names, or None if it cannot be one."""
    return int(etag) if etag.isdigit() else None


def _info(key: str, blob: storage.Blob) -> ObjectInfo:
    modified = blob.updated.timestamp() if blob.updated is not None else 0.0
    return ObjectInfo(key, int(blob.size or 0), str(blob.generation), modified)


class GCSStore(ObjectStore):
    """Objects in one GCS bucket, under an optional key prefix.

    Args:
        bucket: the bucket name.
        prefix: a key prefix every object of this store lives under ("" for none).
        read_only: refuse every write before it is sent.
        retry: the backoff policy for transient failures.
        client: a ready `google.cloud.storage.Client`; by default one is made
            from the environment (anonymous, project "brainy-local", when
            `STORAGE_EMULATOR_HOST` names an emulator).
    """

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        read_only: bool = False,
        retry: RetryPolicy | None = None,
        client: storage.Client | None = None,
    ) -> None:
        super().__init__(read_only=read_only, retry=retry)
        if not bucket:
            raise ValueError("GCS store: the bucket name is empty (expected gs://bucket/prefix)")
        self.emulated = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
        if client is None:
            if self.emulated:
                project = os.environ.get("GOOGLE_CLOUD_PROJECT") or EMULATOR_PROJECT
                client = storage.Client(project=project, credentials=AnonymousCredentials())
            else:
                client = storage.Client()
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._bucket = client.bucket(bucket)

    @property
    def url(self) -> str:
        if self.prefix:
            return f"gs://{self.bucket}/{self.prefix}"
        return f"gs://{self.bucket}"

    def close(self) -> None:
        """Close the client's HTTP session."""
        self.client.close()

    # ------------------------------------------------------------------ helpers

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except (gexc.GoogleAPICallError, InvalidResponse, *CONNECTION_ERRORS) as err:
            raise translate_error(err, op, f"gs://{self.bucket}/{self._name(key)}") from err

    def _check_on_emulator(self, key: str, generation: int) -> None:
        """Refuse a write the emulator would wrongly let through (see the module doc)."""
        current = self._bucket.get_blob(self._name(key), retry=None, timeout=TIMEOUT)
        if generation == 0 and current is not None:
            raise PreconditionFailed(f"gs://{self.bucket}/{self._name(key)} exists")
        if generation != 0 and current is None:
            raise NotFound(f"gs://{self.bucket}/{self._name(key)}")
        if generation != 0 and current is not None and current.generation != generation:
            raise PreconditionFailed(
                f"gs://{self.bucket}/{self._name(key)} is not at generation {generation}"
            )

    def _write(
        self, key: str, stream: IO[bytes], size: int, if_absent: bool, if_match: str | None
    ) -> str:
        generation: int | None = None
        if if_absent:
            generation = 0
        elif if_match is not None:
            generation = _generation(if_match)
            if generation is None:
                raise PreconditionFailed(f"{self.url}/{key} cannot have ETag {if_match!r}")
        blob = self._bucket.blob(self._name(key))
        with self._errors("put", key):
            if self.emulated and generation is not None and size > SINGLE_REQUEST_MAX:
                try:
                    self._check_on_emulator(key, generation)
                except NotFound as err:
                    raise PreconditionFailed(str(err)) from err
            blob.upload_from_file(
                stream,
                size=size,
                content_type="application/octet-stream",
                if_generation_match=generation,
                retry=None,
                timeout=TIMEOUT,
            )
        return str(blob.generation)

    # ----------------------------------------------------------------- primitives

    def _get(self, key, if_none_match, byte_range) -> Blob:
        not_match = _generation(if_none_match) if if_none_match is not None else None
        start, end = byte_range if byte_range is not None else (None, None)
        blob = self._bucket.blob(self._name(key))
        with self._errors("get", key):
            data = blob.download_as_bytes(
                start=start,
                end=end,
                if_generation_not_match=not_match,
                retry=None,
                timeout=TIMEOUT,
            )
        etag = str(blob.generation)
        if if_none_match is not None and etag == if_none_match:
            # Real GCS already answered 304; an emulator may have ignored the condition.
            raise NotModified(f"get gs://{self.bucket}/{self._name(key)}: generation {etag}")
        return Blob(data, etag)

    def _head(self, key) -> ObjectInfo:
        with self._errors("head", key):
            blob = self._bucket.get_blob(self._name(key), retry=None, timeout=TIMEOUT)
        if blob is None:
            raise NotFound(f"head gs://{self.bucket}/{self._name(key)}")
        return _info(key, blob)

    def _put(self, key, data, if_absent, if_match) -> str:
        return self._write(key, io.BytesIO(data), len(data), if_absent, if_match)

    def _delete(self, key, if_match) -> None:
        blob = self._bucket.blob(self._name(key))
        if if_match is None:
            with contextlib.suppress(NotFound), self._errors("delete", key):
                blob.delete(retry=None, timeout=TIMEOUT)
            return
        generation = _generation(if_match)
        with self._errors("delete", key):
            if generation is None:
                self._head(key)  # a missing object is NotFound, as with any stale ETag
                raise PreconditionFailed(f"{self.url}/{key} cannot have ETag {if_match!r}")
            if self.emulated:
                self._check_on_emulator(key, generation)
            blob.delete(if_generation_match=generation, retry=None, timeout=TIMEOUT)

    def _list(self, prefix) -> Iterator[ObjectInfo]:
        # Paged by hand so that each page is retried on its own, and every request
        # after the first (which the base class counted) is counted too.
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        sent = 0

        def fetch() -> tuple[list[Any], str | None]:
            nonlocal sent
            if sent:
                self._count("list")
            sent += 1
            with self._errors("list", prefix):
                pages = self.client.list_blobs(
                    self._bucket,
                    prefix=self._name(prefix),
                    page_token=token,
                    retry=None,
                    timeout=TIMEOUT,
                )
                page = next(pages.pages)
                return list(page), pages.next_page_token

        while True:
            blobs, token = retry_transient(fetch, self.retry)
            for blob in blobs:
                yield _info(blob.name[strip:], blob)
            if not token:
                return

    def _download(self, key, path) -> None:
        blob = self._bucket.blob(self._name(key))
        with self._errors("download", key):
            blob.download_to_filename(str(path), retry=None, timeout=TIMEOUT)

    def _upload(self, key, path, if_absent) -> str:
        with open(path, "rb") as f:
            return self._write(key, f, os.fstat(f.fileno()).st_size, if_absent, None)
