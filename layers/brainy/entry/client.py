"""`brainy.Client`: the deployed functions (ingest, search, compactor) over HTTP,
with the embedded `Collection`'s methods and types.

Writes are `POST /ingest` requests of at most `batch_size` records, each with its
own `Idempotency-Key` (derived from one key per call), so a retried request maps
to the batch it already wrote and cannot duplicate it. Requests answered 429 or
5xx, and connections that fail, are retried with capped, jittered exponential
backoff, waiting at least what a `Retry-After` header asks. An error answer's
JSON (`{"error": {"code", "field", "reason"}}`) is raised as the exception type
the embedded database raises for it (`InvalidInput`, `UnknownCollection`,
`Forbidden`, ...), its field naming rows of the whole call.

Only the standard library, `brainy.core` and `brainy.entry.rows` are imported (no
numpy, no storage backends): a client stays light.

    >>> client = brainy.Client("https://brainy.example.com", token="...")
    >>> docs = client.collection("docs")
    >>> docs.upsert(["a"], [[0.1, 0.2, 0.3]])
    >>> docs.search(vector=[0.1, 0.2, 0.3], k=5).ids
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

from brainy.core import errors
from brainy.core.errors import BrainyError, PayloadTooLarge
from brainy.core.results import Hit, SearchResult, WriteResult
from brainy.entry.rows import (
    DEFAULT_BATCH_SIZE,
    batches,
    id_list,
    renamed,
    rows_of,
    shifted,
)

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
# A Retry-After beyond this is not waited for in full (a client call should not
# hang for an hour because a proxy said so).
MAX_RETRY_AFTER = 60.0


class RemoteError(BrainyError):
    """An answer with no Brainy error type (a bug's 500, a proxy's page, an
    unreachable server), or a server that stayed unavailable through the retries.

    Attributes:
        status: the HTTP status (0: no answer at all).
        code: the error code of the answer's JSON, if it had one.
    """

    def __init__(self, field: str, reason: str, status: int = 0, code: str = "remote") -> None:
        super().__init__(field, reason)
        self.status = status
        self.code = code


# The error types of `brainy.core.errors` by the code their answers carry.
_TYPES: dict[str, type[BrainyError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, BrainyError) and cls is not BrainyError
}


def error_from_answer(status: int, body: bytes) -> Exception:
    """The exception an error answer stands for: the type embedded mode raises."""
    try:
        error = json.loads(body)["error"]
        code, field, reason = str(error["code"]), str(error["field"]), str(error["reason"])
    except (ValueError, KeyError, TypeError):
        text = body[:500].decode(errors="replace")
        return RemoteError("server", f"HTTP {status}: {text}", status)
    cls = _TYPES.get(code)
    if cls is not None:
        # Built as the server's was, whatever the type's own constructor takes.
        exc = cls.__new__(cls)
        BrainyError.__init__(exc, field, reason)
        return exc
    # The layer's other error types, imported only when one is raised (they pull
    # in the configuration and storage modules a client otherwise never needs).
    if code == "config":
        from brainy.core.config import ConfigError

        return ConfigError(f"{field}: {reason}")
    if code == "storage":
        from brainy.storage import StorageError

        return StorageError(reason)
    if code == "contention":
        from brainy.table.manifest import CommitFailed

        return CommitFailed(reason)
    return RemoteError(field, reason, status, code)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


Transport = Callable[[str, bytes, Mapping[str, str], float], Answer]


def urllib_transport(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
    """POST `body` to `url`; any HTTP status comes back as an `Answer`."""
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Answer(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return Answer(e.code, dict(e.headers or {}), e.read())


def retry_after(value: str | None) -> float:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0


class Client:
    """The deployed functions of one Brainy deployment.

    Args:
        base_url: where all functions answer (`{base_url}/ingest`,
            `{base_url}/search`, `{base_url}/compact`), e.g. behind one gateway.
        token: sent as `Authorization: Bearer <token>` (e.g. an identity token
            for Cloud Run, or a gateway's key).
        ingest_url, search_url, compactor_url: each function's own base URL
            (one function a service, as deployed), instead of or over `base_url`.
        timeout: seconds per request.
        retries: attempts after the first for 429, 5xx and failed connections.
        backoff: the first retry's delay in seconds, doubled each attempt (with
            full jitter) up to `max_backoff`; at least `Retry-After`.
        transport: sends one POST (a seam for tests); default: urllib.
        sleep: waits between attempts (a seam for tests).

    Example:
        >>> client = brainy.Client(ingest_url="https://ingest-xyz.run.app",
        ...                        search_url="https://search-xyz.run.app", token=token)
        >>> result = client.collection("docs").search(text="object storage", k=3)
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        ingest_url: str | None = None,
        search_url: str | None = None,
        compactor_url: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        transport: Transport = urllib_transport,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not any((base_url, ingest_url, search_url, compactor_url)):
            raise errors.InvalidInput("base_url", "give base_url, or the functions' own URLs")
        self.urls = {
            "ingest": (ingest_url or base_url or "").rstrip("/"),
            "search": (search_url or base_url or "").rstrip("/"),
            "compact": (compactor_url or base_url or "").rstrip("/"),
        }
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.transport = transport
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"Client({self.urls})"

    def collection(self, name: str) -> RemoteCollection:
        """A collection of the deployment (its existence is checked by the first call)."""
        return RemoteCollection(self, name)

    def post(self, function: str, body: Any, headers: Mapping[str, str] | None = None) -> Any:
        """POST `body` as JSON to `function` (`"ingest"`, `"search"`, `"compact"`)
        and return the answer's JSON, retrying what may succeed later.

        Raises:
            BrainyError: the server's error, as the embedded database's type.
            RemoteError: no usable answer after the retries.
        """
        base = self.urls[function]
        if not base:
            raise errors.InvalidInput(f"{function}_url", "this client has no URL for it")
        url = f"{base}/{function}"
        data = json.dumps(body, separators=(",", ":")).encode()
        sent = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})
        attempt = 0
        while True:
            try:
                answer = self.transport(url, data, sent, self.timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                if attempt >= self.retries:
                    reason = getattr(e, "reason", e)
                    raise RemoteError("url", f"POST {url}: {reason}") from None
                self.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if 200 <= answer.status < 300:
                return json.loads(answer.body) if answer.body else {}
            if answer.status in RETRIED_STATUSES and attempt < self.retries:
                self.sleep(self._delay(attempt, _header(answer.headers, "Retry-After")))
                attempt += 1
                continue
            raise error_from_answer(answer.status, answer.body)

    def _delay(self, attempt: int, header: str | None) -> float:
        jittered = random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
        return max(jittered, min(retry_after(header), MAX_RETRY_AFTER))

    def close(self) -> None:
        """Nothing to release (each request opens its own connection)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


class RemoteCollection:
    """A collection through the deployed functions: the embedded `Collection`'s
    upsert, delete, search and search_batch, plus compact (with a compactor URL).

    Writes are durable when they return, and searchable once an indexer has
    applied their batches (`WriteResult.version` is None: the deployment's
    indexer runs on the batches' events).
    """

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"RemoteCollection({self.name!r})"

    def upsert(
        self,
        ids: Any,
        vectors: Any = None,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        idempotency_key: str | None = None,
    ) -> WriteResult:
        """Insert or replace records, as `Collection.upsert` (same arguments, same
        errors), in `POST /ingest` requests of at most `batch_size` records.

        A batch the server refuses as too large is sent again as two halves. The
        batches before one refused for bad input are durable (the error names
        the row of the whole call); retrying the call rewrites them harmlessly.

        Args:
            idempotency_key: makes the whole call safe to repeat (e.g. after a
                crash): each batch's key is derived from it (default: a random
                key per call, which covers the client's own retries).

        Example:
            >>> docs.upsert(["a", "b"], np.random.rand(2, 384).astype("float32"))
        """
        rows = rows_of(ids, vectors, texts, metadata)

        def body(lo: int, hi: int) -> dict[str, Any]:
            return {"collection": self.name, "records": rows.records_between(lo, hi)}

        return self._write(len(rows), rows.ids, batch_size, idempotency_key, body)

    def delete(
        self,
        ids: Any,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        idempotency_key: str | None = None,
    ) -> WriteResult:
        """Delete records by id, as `Collection.delete`."""
        ids = id_list(ids)

        def body(lo: int, hi: int) -> dict[str, Any]:
            return {"collection": self.name, "deletes": ids[lo:hi]}

        return self._write(len(ids), ids, batch_size, idempotency_key, body)

    def _write(
        self,
        n: int,
        ids: Sequence[Any],
        batch_size: int,
        idempotency_key: str | None,
        body: Callable[[int, int], dict[str, Any]],
    ) -> WriteResult:
        if not n:
            raise errors.InvalidInput("ids", "nothing to write: no ids given")
        call = idempotency_key or uuid.uuid4().hex
        keys: list[str] = []
        counts = [0, 0]

        def send(lo: int, hi: int) -> None:
            try:
                answer = self.client.post(
                    "ingest", body(lo, hi), {"Idempotency-Key": f"{call}:{lo}-{hi}"}
                )
            except PayloadTooLarge:
                if hi - lo < 2:
                    raise
                mid = (lo + hi) // 2
                send(lo, mid)
                send(mid, hi)
                return
            except BrainyError as e:
                raise shifted(e, lo) from None
            keys.append(answer["batch"])
            counts[0] += int(answer.get("accepted", 0))
            counts[1] += int(answer.get("deleted", 0))

        for lo, hi in batches(n, batch_size, ids):
            send(lo, hi)
        return WriteResult(keys, counts[0], counts[1], None)

    def search(
        self,
        vector: Any = None,
        text: str | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        recall_target: float | None = None,
        min_version: int | None = None,
    ) -> SearchResult:
        """`POST /search`, as `Collection.search` (same arguments, types, errors)."""
        body: dict[str, Any] = {"collection": self.name, "k": k}
        if vector is not None:
            body["vector"] = vector.tolist() if hasattr(vector, "tolist") else vector
        for key, value in (
            ("text", text),
            ("filter", filter),
            ("recall_target", recall_target),
            ("min_version", min_version),
        ):
            if value is not None:
                body[key] = value
        answer = self.client.post("search", body)
        hits = [Hit(h["id"], float(h["score"]), h.get("metadata")) for h in answer["results"]]
        return SearchResult(hits, int(answer["version"]))

    def search_batch(
        self,
        vectors: Any,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        recall_target: float | None = None,
        min_version: int | None = None,
        *,
        concurrency: int = 4,
    ) -> list[SearchResult]:
        """`search` for every row of `vectors`, in order. The search function
        answers one query a request: the requests go `concurrency` at a time."""
        queries = vectors.tolist() if hasattr(vectors, "tolist") else list(vectors)

        def one(i: int) -> SearchResult:
            try:
                return self.search(queries[i], None, k, filter, recall_target, min_version)
            except BrainyError as e:
                raise shifted(_as_row(e), i) from None

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(one, range(len(queries))))

    def compact(self, *, force: bool = False) -> dict[str, Any]:
        """`POST /compact` to the compactor: its report for this collection."""
        answer = self.client.post("compact", {"collection": self.name, "force": force})
        return answer["collections"][0]


def _as_row(error: BrainyError) -> BrainyError:
    """A one-query error (`vector`, `vector[3]`) as row 0 of a batch (`vectors[0]`...),
    to be shifted to its row."""
    if error.field == "vector" or error.field.startswith("vector["):
        return renamed(error, "vectors[0]" + error.field[len("vector") :])
    return error
