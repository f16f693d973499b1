"""The embedded Python API: `brainy.connect(url)` → `Database` → `Collection`.

A thin door onto the same `Brainy` instance and use cases the functions and the
CLI call: requests are validated by the ingest layer (the same errors, naming the
field and the row), written as durable batches, indexed with the indexer's code,
searched by the search path. Nothing here checks or computes what the layer does.

    >>> import brainy, numpy as np
    >>> with brainy.connect("file:///tmp/brainy-doc") as db:
    ...     docs = db.create_collection("docs", dimension=3)
    ...     written = docs.upsert(["a", "b"], np.eye(2, 3, dtype=np.float32))
    ...     print(docs.search(vector=[1, 0, 0], k=1)[0].id)
    a
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from brainy.core.config import (
    MODES,
    CollectionSchema,
    ConfigError,
    parse_layer,
)
from brainy.core.errors import (
    BrainyError,
    Forbidden,
    InvalidInput,
    UnknownCollection,
    VersionNotRetained,
    VersionNotVisible,
)
from brainy.core.results import SearchResult, WriteResult
from brainy.entry.rows import DEFAULT_BATCH_SIZE, Rows, batches, id_list, rows_of, shifted
from brainy.maintenance.verify import VerifyReport, verify
from brainy.service.app import Brainy
from brainy.storage import NotFound
from brainy.table.manifest import Manifest
from brainy.write.ingest import IngestOutcome, validate, validate_vectors

ROLE = "cli"


def connect(
    url: str | None = None,
    *,
    mode: str | None = None,
    env: Mapping[str, str] | None = None,
    **settings: Any,
) -> Database:
    """Open a database on a store URL, as one embedded Brainy instance.

    Args:
        url: `file:///path` (or `file://./relative`), `s3://bucket/prefix`,
            `gs://bucket/prefix` or `memory://`. Default: `$BRAINY_STORE`, else
            the CLI's local folder `file://./.brainy/data`.
        mode: `"read-write"` (default), `"read-only"` (searches only; the store
            refuses writes before any request) or `"write-only"` (writes batches;
            an indexer elsewhere applies them).
        env: the environment to configure from (default `os.environ`: the
            `BRAINY_*` variables apply as they do to the CLI).
        **settings: any key of the shared configuration (`cache_dir`,
            `cache_size="2GB"`, `refresh_interval`, `max_records`, `retention`,
            ...), validated by the configuration's own parsers; they win over
            every other layer.

    Raises:
        ConfigError: a setting is invalid; the message names its key.

    Example:
        >>> db = brainy.connect("file:///tmp/brainy-doc", cache_size="1GB")
        >>> db.collections()
        ['docs']
    """
    environment = dict(os.environ if env is None else env)
    if url is not None:  # else $BRAINY_STORE, $BRAINY_S3_BUCKET or the local default
        environment["BRAINY_STORE"] = url
    if mode is not None:
        if mode not in MODES:
            raise ConfigError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        environment["BRAINY_MODE"] = mode
    if "collections" in settings:
        raise ConfigError("collections: declare collections with Database.create_collection")
    overrides = parse_layer(settings, "settings")
    try:
        app = Brainy.from_env(ROLE, environment, overrides)
    except ConfigError:
        raise
    except ValueError as e:  # open_store's refusal of an unknown URL scheme
        raise InvalidInput("url", str(e)) from None
    return Database(app)


class Database:
    """The collections of one store, through one embedded Brainy instance.

    Use it as a context manager, or call `close()`, to stop its threads and close
    its store.
    """

    def __init__(self, app: Brainy) -> None:
        self.app = app
        # The newest manifest version this database indexed, per collection: its
        # searches wait for it (read your own writes despite the manifest cache).
        self.written: dict[str, int] = {}

    @property
    def url(self) -> str:
        return self.app.store.url

    @property
    def mode(self) -> str:
        return self.app.settings.mode

    def __repr__(self) -> str:
        return f"Database({self.url!r}, mode={self.mode!r})"

    def create_collection(
        self,
        name: str,
        *,
        dimension: int,
        metric: str = "angular",
        embedder: str = "hash",
        **tunables: Any,
    ) -> Collection:
        """Declare a collection (in `_brainy/config.json`, by compare-and-swap).

        Creating it again with the same schema is a no-op that returns it; a
        different schema is refused, naming the field that differs.

        Args:
            name: 1-63 characters from letters, digits, `_ . -`.
            dimension: the vectors' length.
            metric: `"angular"` (cosine), `"euclidean"` or `"dot"`.
            embedder: what embeds `texts` (`"hash"`).
            **tunables: the other schema fields: `partitions`, `strategy`
                (`"hash"` | `"semantic"`), `nprobe`, `seed`, `n_trees`,
                `search_k_factor`, `exact_threshold`.

        Raises:
            ConfigError: an invalid or conflicting field, named.
            Forbidden: a read-only database.

        Example:
            >>> docs = db.create_collection("docs", dimension=384, metric="angular")
        """
        spec = {"dimension": dimension, "metric": metric, "embedder": embedder, **tunables}
        schema = CollectionSchema.from_dict(name, spec)
        self.app.create_collection(schema)
        return Collection(self, schema)

    def collection(self, name: str, version: int | None = None) -> Collection:
        """An existing collection; with `version`, that retained manifest version of
        it (time travel: searches see the collection as it was; writes are refused).

        Raises:
            UnknownCollection: no collection of that name is declared.
            VersionNotRetained: `version` was never committed, or retention
                has deleted it.
        """
        schema = self.app.require_schema(name)
        if version is None:
            return Collection(self, schema)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInput("version", f"expected a positive integer, got {version!r}")
        manifests = self.app.manifests(name)
        try:
            manifest = manifests.load(version)
        except NotFound:
            retained = manifests.versions()
            have = f"{retained[0]} to {retained[-1]}" if retained else "none"
            raise VersionNotRetained(
                "version",
                f"version {version} of {name!r} is not retained (retained versions: {have})",
            ) from None
        return Collection(self, schema, manifest)

    def collections(self) -> list[str]:
        """The names of the declared collections, sorted."""
        return sorted(self.app.collections())

    def drop_collection(self, name: str, *, force: bool = False) -> None:
        """Remove a collection's declaration from the shared configuration.

        Safe beside running instances: nothing is deleted. The collection's
        objects (batches, segments, manifests) stay in the bucket, so an instance
        still searching or indexing it is never cut off mid-request; new
        instances no longer see it. Creating it again with the same schema brings
        its data back; with another schema is refused while its data is there
        (delete the `<name>/` prefix with the cloud's tools once no instance uses
        it).

        Args:
            force: drop a collection that holds data (refused otherwise).

        Raises:
            UnknownCollection: no such collection.
            InvalidInput: it holds data and `force` is not set (field `force`).
            Forbidden: a read-only database.
        """
        self.app.drop_collection(name, force=force)

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Collection:
    """One collection of a `Database`: upsert, delete, search, maintain.

    Opened at a past `version` (see `Database.collection`), it searches that
    manifest version and refuses writes.
    """

    def __init__(
        self, db: Database, schema: CollectionSchema, manifest: Manifest | None = None
    ) -> None:
        self.db = db
        self.schema = schema
        self._at = manifest

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def dimension(self) -> int:
        return self.schema.dimension

    @property
    def version(self) -> int | None:
        """The manifest version this collection is pinned to; None: the newest."""
        return self._at.version if self._at else None

    def __repr__(self) -> str:
        at = f", version={self.version}" if self._at else ""
        return f"Collection({self.name!r}, dimension={self.dimension}{at})"

    # ------------------------------------------------------------------ write

    def upsert(
        self,
        ids: Any,
        vectors: Any = None,
        texts: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        index: bool | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> WriteResult:
        """Insert or replace records; the last write of an id wins.

        Give `ids` with `vectors` (a 2-D numpy array, converted and checked as one
        matrix, or a list of lists) or `texts` (embedded with the collection's
        embedder), and optionally `metadata` (an object or None a row); or give
        `ids` as records `[{"id", "vector" | "text", "metadata"}]`.

        Every batch is checked before any is written, exactly as the ingest
        function checks a request: a bad row raises, naming it
        (`records[12].vector: expected 384 numbers ...`), and nothing is written.

        Args:
            index: index each batch before returning, so a search right after
                sees it (default: yes, unless the database is write-only, whose
                batches an indexer applies when their events arrive).
            batch_size: records per batch object (at most `max_records`).

        Returns:
            The batches written and, when indexed, the manifest version.

        Example:
            >>> docs.upsert(["a", "b"], np.random.rand(2, 384), metadata=[{"n": 1}, None])
            >>> docs.upsert([{"id": "c", "text": "hello", "metadata": {"lang": "en"}}])
        """
        rows = rows_of(ids, vectors, texts, metadata)
        return self._write(len(rows), rows.ids, batch_size, index, self._upsert_batch(rows))

    def delete(
        self, ids: Any, *, index: bool | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> WriteResult:
        """Delete records by id (an id never written is no error).

        Example:
            >>> docs.delete(["a"])
        """
        ids = id_list(ids)

        def batch(lo: int, hi: int) -> tuple[Callable[[], None], Callable[[], IngestOutcome]]:
            payload = {"collection": self.name, "deletes": ids[lo:hi]}
            return (
                lambda: validate(payload, self.db.app.settings, self.db.app.schema),
                lambda: self.db.app.ingest(payload),
            )

        return self._write(len(ids), ids, batch_size, index, batch)

    def _upsert_batch(
        self, rows: Rows
    ) -> Callable[[int, int], tuple[Callable[[], Any], Callable[[], IngestOutcome]]]:
        """(check, write) of rows [lo, hi): a matrix goes to `ingest_vectors` as one
        (never a list per row), anything else as an ingest request's records."""
        app = self.db.app

        def batch(lo: int, hi: int) -> tuple[Callable[[], Any], Callable[[], IngestOutcome]]:
            if rows.is_matrix:
                ids, vectors = rows.ids[lo:hi], rows.vectors[lo:hi]
                meta = None if rows.metadata is None else rows.metadata[lo:hi]
                return (
                    lambda: validate_vectors(
                        self.name, ids, vectors, app.settings, app.schema, meta
                    ),
                    lambda: app.ingest_vectors(self.name, ids, vectors, meta),
                )
            payload = {"collection": self.name, "records": rows.records_between(lo, hi)}
            return (
                lambda: validate(payload, app.settings, app.schema),
                lambda: app.ingest(payload),
            )

        return batch

    def _write(
        self,
        n: int,
        ids: Sequence[Any],
        batch_size: int,
        index: bool | None,
        batch: Callable[[int, int], tuple[Callable[[], Any], Callable[[], IngestOutcome]]],
    ) -> WriteResult:
        if self._at is not None:
            raise Forbidden(
                "version", f"{self.name!r} is opened at version {self.version}: it is read-only"
            )
        app = self.db.app
        if index is None:
            index = app.settings.mode == "read-write"
        elif index and app.settings.mode != "read-write":
            raise Forbidden("index", f"a {app.settings.mode} database cannot index")
        if not n:
            raise InvalidInput("ids", "nothing to write: no ids given")
        bounds = list(batches(n, batch_size, ids))
        # Every batch is checked before the first is written: a bad row anywhere
        # leaves the store untouched (as `brainy ingest` does with a file).
        for lo, hi in bounds:
            check, _ = batch(lo, hi)
            _located(check, lo)
        keys: list[str] = []
        accepted = deleted = 0
        version: int | None = None
        for lo, hi in bounds:
            _, write = batch(lo, hi)
            outcome = _located(write, lo)
            keys.append(outcome.batch)
            accepted, deleted = accepted + outcome.accepted, deleted + outcome.deleted
            if index:
                result = app.index_key(outcome.batch)
                if result.status not in ("applied", "already-applied"):
                    raise BrainyError(
                        outcome.batch, f"not indexed: {result.status} {result.detail}"
                    )
                version = result.version
        if version is not None:
            self.db.written[self.name] = max(version, self.db.written.get(self.name, 0))
        return WriteResult(keys, accepted, deleted, version)

    # ----------------------------------------------------------------- search

    def search(
        self,
        vector: Any = None,
        text: str | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        recall_target: float | None = None,
        min_version: int | None = None,
    ) -> SearchResult:
        """The `k` records nearest `vector` (or the embedding of `text`), best first.

        Args:
            vector: a list or 1-D numpy array of `dimension` numbers.
            text: instead of `vector`: embedded with the collection's embedder.
            filter: metadata equality, `{"field": value, ...}`.
            recall_target: in [0.5, 1.0] (default 0.95); 1.0 searches exactly.
            min_version: wait (bounded by `min_version_timeout`) until this
                manifest version is visible: read your own writes.

        Returns:
            A list-like `SearchResult` of `Hit(id, score, metadata)`, with the
            manifest `version` searched.

        Example:
            >>> for hit in docs.search(vector=q, k=5, filter={"lang": "en"}):
            ...     print(hit.id, hit.score, hit.metadata)
        """
        payload = self._query(k, filter, recall_target, min_version)
        if vector is not None:
            payload["vector"] = vector.tolist() if hasattr(vector, "tolist") else vector
        if text is not None:
            payload["text"] = text
        return self.db.app.search(payload, at=self._at)

    def search_batch(
        self,
        vectors: Any,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        recall_target: float | None = None,
        min_version: int | None = None,
    ) -> list[SearchResult]:
        """`search` for every row of `vectors` (a matrix, a query a row) in one call
        at one manifest version: each segment is fetched once and, where it is
        scanned exactly, scanned once for all queries (one matrix product).

        Example:
            >>> results = docs.search_batch(np.random.rand(100, 384), k=10)
            >>> [r.ids for r in results][:2]
        """
        matrix = np.asarray(vectors)
        payload = self._query(k, filter, recall_target, min_version)
        return self.db.app.search_batch(payload, matrix, at=self._at)

    def _query(
        self,
        k: int,
        filter: Mapping[str, Any] | None,
        recall_target: float | None,
        min_version: int | None,
    ) -> dict[str, Any]:
        if self._at is not None and isinstance(min_version, int) and min_version > self.version:
            raise VersionNotVisible(
                "min_version", f"{self.name!r} is opened at version {self.version}"
            )
        payload: dict[str, Any] = {"collection": self.name, "k": k}
        written = self.db.written.get(self.name)
        if self._at is None and written and (min_version is None or isinstance(min_version, int)):
            min_version = max(min_version or 0, written)
        for key, value in (
            ("filter", filter),
            ("recall_target", recall_target),
            ("min_version", min_version),
        ):
            if value is not None:
                payload[key] = value
        return payload

    # ------------------------------------------------------------ maintenance

    def status(self) -> dict[str, Any]:
        """The manifest version, segments and row counts (`brainy status --json`)."""
        if self._at is None:
            return self.db.app.status(self.name)
        return {"collection": self.name, "schema": self.schema.to_dict(), **self._at.stats()}

    def compact(self, *, force: bool = False) -> dict[str, Any]:
        """Sweep, merge segments under the collection's lease, collect garbage past
        retention, verify (`brainy compact`); returns the report.

        Args:
            force: merge below the policy's thresholds.
        """
        return self.db.app.maintain(self.name, force=force)[0]

    def verify(self, *, deep: bool = True) -> VerifyReport:
        """Check every object the newest manifest references (`brainy verify`);
        `report.ok` is True when nothing is wrong, else `report.problems` say what.

        Args:
            deep: download and hash every segment (False: headers only).
        """
        self.db.app.require_schema(self.name)
        return verify(self.db.app.store, self.name, deep=deep)


def _located(step: Callable[[], Any], first: int) -> Any:
    """Run one batch's step; its errors name rows of the whole call."""
    try:
        return step()
    except BrainyError as e:
        raise shifted(e, first) from None


__all__ = ["Collection", "Database", "UnknownCollection", "connect"]
