"""Ingest: validate a request into a batch and make it durable (DESIGN §5, §7).

Nothing is written unless the whole request is valid. The batch is written once,
by put-if-absent; a client's `Idempotency-Key` maps to one key, so a retried
request finds its batch already there and gets the same answer.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from brainy.core.config import CollectionSchema, Settings
from brainy.core.errors import (
    IdempotencyConflict,
    InvalidInput,
    PayloadTooLarge,
    UnknownCollection,
    parse_json_object,
)
from brainy.format.batch import (
    DELETE,
    UPSERT,
    Batch,
    WriterClock,
    batch_key,
    keyed_batch_key,
    new_batch_id,
)
from brainy.storage import ObjectStore, PreconditionFailed
from brainy.write.embedders import EmptyText, get_embedder

_REQUEST_FIELDS = {"collection", "records", "deletes"}
_RECORD_FIELDS = {"id", "vector", "text", "metadata"}
MAX_TEXT_LENGTH = 100_000


@dataclass(frozen=True)
class IngestOutcome:
    batch: str
    accepted: int
    deleted: int
    created: bool  # False when an idempotent retry found its batch already written

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "accepted": self.accepted, "deleted": self.deleted}


def parse_body(body: bytes, content_type: str, collection_param: str | None) -> dict[str, Any]:
    """A request body as `{"collection", "records", "deletes"}`: a JSON object, or
    NDJSON with one record per line (a line `{"delete": "id"}` deletes; the
    collection comes from `?collection=` or each line's `collection`)."""
    is_ndjson = "ndjson" in content_type or "jsonl" in content_type
    if not is_ndjson:
        payload = parse_json_object(body)
        if collection_param and "collection" not in payload:
            payload["collection"] = collection_param
        return payload
    records: list[Any] = []
    deletes: list[Any] = []
    collection = collection_param
    for lineno, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        item = parse_json_object(line, f"line {lineno}")
        if "collection" in item:
            name = item.pop("collection")
            if collection is not None and name != collection:
                raise InvalidInput(
                    f"line {lineno}.collection", f"{name!r} differs from {collection!r}"
                )
            collection = name
        if "delete" in item:
            deletes.append(item["delete"])
        else:
            records.append(item)
    return {"collection": collection, "records": records, "deletes": deletes}


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_id(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"expected a non-empty string, got {value!r}")
    if len(value) * 4 > max_len and len(value.encode()) > max_len:
        raise InvalidInput(field, f"longer than {max_len} bytes")
    if _CONTROL.search(value):
        raise InvalidInput(field, "contains control characters")
    return value


def check_vector(value: Any, field: str, schema: CollectionSchema) -> np.ndarray:
    if not isinstance(value, list):
        raise InvalidInput(field, f"expected a list of {schema.dimension} numbers")
    if len(value) != schema.dimension:
        raise InvalidInput(
            field, f"expected {schema.dimension} numbers (the collection's dimension), "
            f"got {len(value)}"
        )  # fmt: skip
    try:
        vec = np.asarray(value)
    except (TypeError, ValueError):
        vec = np.asarray(value, dtype=object)
    if vec.ndim != 1 or vec.dtype.kind not in "iuf":
        # Only a bad vector is walked in Python, to name the offending element.
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise InvalidInput(f"{field}[{i}]", f"expected a number, got {x!r}")
        vec = np.asarray(value, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(vec))
    if bad.size:
        raise InvalidInput(f"{field}[{int(bad[0])}]", "NaN and Infinity are not allowed")
    with np.errstate(over="ignore"):
        vec = vec.astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise InvalidInput(field, "a value overflows float32")
    if schema.metric == "angular" and not np.any(vec):
        raise InvalidInput(field, "a zero vector has no direction (metric angular)")
    return vec


def check_matrix(
    matrix: np.ndarray, field: Callable[[int], str], schema: CollectionSchema
) -> np.ndarray:
    """The rows of `matrix` as float32 vectors, checked as `check_vector` checks one,
    in one vectorised pass; `field(i)` names row i in errors.

    Raises:
        InvalidInput: `check_vector`'s error for the first bad row.
    """
    dim = schema.dimension
    if matrix.ndim != 2 or matrix.shape[1] != dim or matrix.dtype.kind not in "iuf":
        if matrix.ndim == 2 and len(matrix):
            check_vector(matrix[0].tolist(), field(0), schema)
        raise InvalidInput(field(0), f"expected rows of {dim} numbers, got {matrix.dtype}")
    with np.errstate(over="ignore"):
        vectors = matrix.astype(np.float32, copy=False)
    # A NaN or an infinity (given, or a float32 overflow) makes a row's squared norm
    # non-finite, a zero vector makes it 0: one product finds every suspect row, and
    # only suspects are checked one by one (a huge or tiny but valid row passes).
    squares = np.einsum("ij,ij->i", vectors, vectors)
    with np.errstate(over="ignore"):
        suspect = ~np.isfinite(squares)
        if schema.metric == "angular":
            suspect |= squares == 0
    for row in np.flatnonzero(suspect).tolist():
        check_vector(matrix[row].tolist(), field(row), schema)
    return vectors


def check_vectors(
    values: Sequence[Any], field: Callable[[int], str], schema: CollectionSchema
) -> np.ndarray:
    """Vectors given as JSON lists, converted to one float32 matrix at once and
    checked by `check_matrix`; `field(i)` names `values[i]` in errors."""
    if not values:
        return np.zeros((0, schema.dimension), dtype=np.float32)
    matrix = None
    # A list of lists of numbers converts in one call. A vector of booleans would
    # convert too (to 0 and 1) where another row holds a float: one starting with a
    # boolean is left to `check_vector`, as is anything that is not a list.
    if all(type(v) is list and v and type(v[0]) is not bool for v in values):
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            matrix = np.array(values)
    if (
        matrix is None
        or matrix.shape != (len(values), schema.dimension)
        or matrix.dtype.kind not in "iuf"
    ):
        # Only a bad request is walked row by row, to name the offending vector.
        return np.stack([check_vector(v, field(i), schema) for i, v in enumerate(values)])
    return check_matrix(matrix, field, schema)


# Embeds a collection's texts (one float32 row each): `EmbeddingCache.embed` on an
# instance, `embed_uncached` where there is none.
EmbedFn = Callable[[CollectionSchema, list[str]], np.ndarray]


def embed_uncached(
    schema: CollectionSchema, texts: list[str], settings: Settings | None = None
) -> np.ndarray:
    """Texts through the collection's embedder, configured by `settings` (default:
    the built-in defaults), with no cache."""
    return get_embedder(schema.embedder, schema.dimension, settings).embed(texts)


def embed_texts(
    schema: CollectionSchema,
    texts: Sequence[Any],
    fields: Sequence[str],
    embed: EmbedFn | None = None,
) -> np.ndarray:
    """Texts through the collection's embedder in one call (a model embeds a batch
    far faster than its texts one by one); `fields[i]` names `texts[i]` in errors.

    Raises:
        InvalidInput: a text that is not a non-empty string, too long, or (hash
            embedder) without a word.
    """
    for text, field in zip(texts, fields, strict=True):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(field, "expected a non-empty string")
        if len(text) > MAX_TEXT_LENGTH:
            raise InvalidInput(field, f"longer than {MAX_TEXT_LENGTH} characters")
    try:
        return (embed or embed_uncached)(schema, list(texts))
    except EmptyText as e:
        raise InvalidInput(fields[e.index], str(e)) from None


def embed_text(
    schema: CollectionSchema, text: Any, field: str, embed: EmbedFn | None = None
) -> np.ndarray:
    """A text through the collection's embedder; `field` names it in errors."""
    return embed_texts(schema, [text], [field], embed)[0]


@dataclass
class ValidRequest:
    schema: CollectionSchema
    ids: list[str]
    ops: list[str]
    vectors: np.ndarray
    metadata: list[dict | None]
    request_hash: str

    @classmethod
    def of(
        cls,
        schema: CollectionSchema,
        ids: list[str],
        ops: list[str],
        vectors: np.ndarray,
        metadata: list[dict | None],
    ) -> ValidRequest:
        """A checked request, with the hash that tells a retry of it from another."""
        digest = xxhash.xxh3_128()
        digest.update(json.dumps([schema.name, ids, ops, metadata], sort_keys=True).encode())
        digest.update(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(schema, ids, ops, vectors, metadata, digest.hexdigest())


def _collection_schema(
    name: Any, schema_of: Callable[[str], CollectionSchema | None]
) -> CollectionSchema:
    if not isinstance(name, str) or not name:
        raise InvalidInput("collection", "required: the name of a collection")
    schema = schema_of(name)
    if schema is None:
        raise UnknownCollection(name)
    return schema


def _check_count(count: int, settings: Settings) -> None:
    if count > settings.max_records:
        raise PayloadTooLarge("records", f"{count} records; at most {settings.max_records}")


def validate(
    payload: Mapping[str, Any],
    settings: Settings,
    schema_of: Callable[[str], CollectionSchema | None],
    embed: EmbedFn | None = None,
) -> ValidRequest:
    """Check every field of a request; raises `BrainyError` naming the first bad one
    (in record order: a record's id, then its vector or text, then its metadata).
    Texts are embedded together, by `embed` (default: `embed_uncached` with
    `settings`)."""
    unknown = sorted(set(payload) - _REQUEST_FIELDS)
    if unknown:
        raise InvalidInput(unknown[0], f"unknown field (expected {sorted(_REQUEST_FIELDS)})")
    schema = _collection_schema(payload.get("collection"), schema_of)
    records = payload.get("records", [])
    deletes = payload.get("deletes", [])
    if not isinstance(records, list):
        raise InvalidInput("records", "expected a list of records")
    if not isinstance(deletes, list):
        raise InvalidInput("deletes", "expected a list of ids")
    if not records and not deletes:
        raise InvalidInput("records", "nothing to ingest: give records or deletes")
    _check_count(len(records) + len(deletes), settings)

    ids: list[str] = []
    metadata: list[dict | None] = []
    given: list[Any] = []  # the vectors given, converted and checked together below
    given_at: list[int] = []  # the record each came from
    texts: list[tuple[int, str, str]] = []

    def vector_field(j: int) -> str:
        return f"records[{given_at[j]}].vector"

    try:
        for i, rec in enumerate(records):
            ids.append(_check_record(rec, f"records[{i}]", settings))
            if rec.get("vector") is not None:
                given.append(rec["vector"])
                given_at.append(i)
            else:
                texts.append((i, f"records[{i}].text", rec["text"]))
            metadata.append(_check_metadata(rec.get("metadata"), f"records[{i}]", settings))
    except InvalidInput:
        # A bad vector in an earlier record (or this one) is the first error.
        check_vectors(given, vector_field, schema)
        raise
    checked = check_vectors(given, vector_field, schema)
    upserted = set(ids)
    for i, rid in enumerate(deletes):
        rid = _check_id(rid, f"deletes[{i}]", settings.max_id_length)
        if rid in upserted:
            raise InvalidInput(f"deletes[{i}]", f"id {rid!r} is also upserted in this request")
        ids.append(rid)
        metadata.append(None)

    if texts:
        matrix = np.empty((len(records), schema.dimension), dtype=np.float32)
        matrix[given_at] = checked
        slots, fields, values = zip(*texts, strict=True)
        if embed is None:
            embed = functools.partial(embed_uncached, settings=settings)
        matrix[list(slots)] = embed_texts(schema, values, fields, embed)
    else:
        matrix = checked
    ops = [UPSERT] * len(records) + [DELETE] * len(deletes)
    return ValidRequest.of(schema, ids, ops, matrix, metadata)


def _check_record(rec: Any, where: str, settings: Settings) -> str:
    """A record's shape and id (its vector is checked with the others); returns the id."""
    if not isinstance(rec, dict):
        raise InvalidInput(where, "expected an object with id and vector or text")
    extra = sorted(set(rec) - _RECORD_FIELDS)
    if extra:
        raise InvalidInput(
            f"{where}.{extra[0]}", f"unknown field (expected {sorted(_RECORD_FIELDS)})"
        )
    rid = _check_id(rec.get("id"), f"{where}.id", settings.max_id_length)
    if (rec.get("vector") is None) == (rec.get("text") is None):
        raise InvalidInput(where, "give exactly one of vector or text")
    return rid


def _check_metadata(meta: Any, where: str, settings: Settings) -> dict | None:
    if meta is not None:
        if not isinstance(meta, dict):
            raise InvalidInput(f"{where}.metadata", "expected a JSON object")
        size = len(json.dumps(meta, separators=(",", ":")).encode())
        if size > settings.max_metadata_size:
            raise InvalidInput(
                f"{where}.metadata", f"{size} bytes; at most {settings.max_metadata_size}"
            )
    return meta


def validate_vectors(
    collection: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    settings: Settings,
    schema_of: Callable[[str], CollectionSchema | None],
    metadata: Sequence[dict | None] | None = None,
) -> ValidRequest:
    """Upserts given as columns, as `brainy ingest X.npy` reads them: ids, a
    matrix with a vector a row (any numeric dtype), and optionally a metadata
    object (or None) a row. Checked as `validate` checks the same records, naming
    `records[i].id` / `.vector` / `.metadata`, with the matrix converted and
    checked in one vectorised pass."""
    schema = _collection_schema(collection, schema_of)
    if not len(ids):
        raise InvalidInput("records", "nothing to ingest: give records or deletes")
    if len(ids) != len(vectors):
        raise InvalidInput("records", f"{len(ids)} ids for {len(vectors)} vectors")
    if metadata is not None and len(metadata) != len(ids):
        raise InvalidInput("metadata", f"{len(metadata)} metadata objects for {len(ids)} ids")
    _check_count(len(ids), settings)
    checked = check_ids(ids, lambda i: f"records[{i}].id", settings.max_id_length)
    matrix = check_matrix(vectors, lambda i: f"records[{i}].vector", schema)
    if metadata is None:
        metas: list[dict | None] = [None] * len(ids)
    else:
        metas = [_check_metadata(m, f"records[{i}]", settings) for i, m in enumerate(metadata)]
    return ValidRequest.of(schema, checked, [UPSERT] * len(ids), matrix, metas)


def check_ids(ids: Sequence[Any], field: Callable[[int], str], max_len: int) -> list[str]:
    """`ids` checked as `_check_id` checks one, over their concatenation where they
    are all short strings (the usual case); `field(i)` names `ids[i]` in errors."""
    ids = list(ids)
    if not ids:
        return ids
    try:
        joined = "".join(ids)
    except TypeError:  # not all strings
        joined = None
    lengths = list(map(len, ids)) if joined is not None else [0]
    if joined is None or min(lengths) == 0 or max(lengths) * 4 > max_len or _CONTROL.search(joined):
        # Only then is each id checked in turn, to name the first bad one.
        for i, rid in enumerate(ids):
            _check_id(rid, field(i), max_len)
    return ids


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable() or not value.isascii():
        raise InvalidInput("Idempotency-Key", "expected 1-255 printable ASCII characters")
    return value


def write_batch(
    store: ObjectStore,
    request: ValidRequest,
    writer: str,
    clock: WriterClock,
    idempotency_key: str | None = None,
    timestamps: Sequence[int] | None = None,
) -> IngestOutcome:
    """Make the batch durable (put-if-absent) and only then report it accepted.

    Args:
        timestamps: one per record (in `request.ids` order), in microseconds: a
            source's own clock, so last-writer-wins orders its records by when the
            source saw them. Default: the writer's clock.
    """
    collection = request.schema.name
    if timestamps is None:
        stamps = clock.take(len(request.ids))
    else:
        stamps = np.asarray(timestamps, dtype=np.int64)
        if stamps.shape != (len(request.ids),):
            raise InvalidInput("timestamps", f"expected {len(request.ids)}, got {stamps.size}")
    batch = Batch(
        collection=collection,
        writer=writer,
        ids=request.ids,
        ops=request.ops,
        timestamps=stamps,
        vectors=request.vectors,
        metadata=request.metadata,
        request_hash=request.request_hash,
    )
    if idempotency_key is None:
        key = batch_key(collection, writer, new_batch_id())
    else:
        key = keyed_batch_key(collection, idempotency_key)
    accepted, deleted = batch.upserts, batch.deletes
    try:
        store.put(key, batch.encode(), if_absent=True)
    except PreconditionFailed:
        # Either a retry of a keyed request, or our own put whose response was lost
        # and whose retry found it there: the same request body means the same batch.
        existing = Batch.decode(store.get(key).data, key)
        if existing.request_hash != request.request_hash:
            if idempotency_key is None:
                raise
            raise IdempotencyConflict(
                "Idempotency-Key", "already used for a different request body"
            ) from None
        return IngestOutcome(key, existing.upserts, existing.deletes, created=False)
    return IngestOutcome(key, accepted, deleted, created=True)
