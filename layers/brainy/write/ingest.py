"""Ingest: validate a request into a batch and make it durable (DESIGN §5, §7).

Nothing is written unless the whole request is valid. The batch is written once,
by put-if-absent; a client's `Idempotency-Key` maps to one key, so a retried
request finds its batch already there and gets the same answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from brainy.core.config import CollectionSchema, Settings
from brainy.core.errors import IdempotencyConflict, InvalidInput, PayloadTooLarge, UnknownCollection
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
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput("body", f"malformed JSON ({e})") from None
        if not isinstance(payload, dict):
            raise InvalidInput("body", "expected a JSON object")
        if collection_param and "collection" not in payload:
            payload["collection"] = collection_param
        return payload
    records: list[Any] = []
    deletes: list[Any] = []
    collection = collection_param
    for lineno, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"line {lineno}", f"malformed JSON ({e})") from None
        if not isinstance(item, dict):
            raise InvalidInput(f"line {lineno}", "expected a JSON object")
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


def _check_id(value: Any, field: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"expected a non-empty string, got {value!r}")
    if len(value.encode()) > max_len:
        raise InvalidInput(field, f"longer than {max_len} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
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
    vec = vec.astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise InvalidInput(field, "a value overflows float32")
    if schema.metric == "angular" and not np.any(vec):
        raise InvalidInput(field, "a zero vector has no direction (metric angular)")
    return vec


def embed_text(schema: CollectionSchema, text: Any, field: str) -> np.ndarray:
    """A text through the collection's embedder; `field` names it in errors."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(field, "expected a non-empty string")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidInput(field, f"longer than {MAX_TEXT_LENGTH} characters")
    try:
        return get_embedder(schema.embedder, schema.dimension).embed([text])[0]
    except EmptyText as e:
        raise InvalidInput(field, str(e)) from None


@dataclass
class ValidRequest:
    schema: CollectionSchema
    ids: list[str]
    ops: list[str]
    vectors: np.ndarray
    metadata: list[dict | None]
    request_hash: str


def validate(
    payload: Mapping[str, Any],
    settings: Settings,
    schema_of: Callable[[str], CollectionSchema | None],
) -> ValidRequest:
    """Check every field of a request; raises `BrainyError` naming the first bad one."""
    unknown = sorted(set(payload) - _REQUEST_FIELDS)
    if unknown:
        raise InvalidInput(unknown[0], f"unknown field (expected {sorted(_REQUEST_FIELDS)})")
    name = payload.get("collection")
    if not isinstance(name, str) or not name:
        raise InvalidInput("collection", "required: the name of a collection")
    schema = schema_of(name)
    if schema is None:
        raise UnknownCollection(name)
    records = payload.get("records", [])
    deletes = payload.get("deletes", [])
    if not isinstance(records, list):
        raise InvalidInput("records", "expected a list of records")
    if not isinstance(deletes, list):
        raise InvalidInput("deletes", "expected a list of ids")
    if not records and not deletes:
        raise InvalidInput("records", "nothing to ingest: give records or deletes")
    if len(records) + len(deletes) > settings.max_records:
        raise PayloadTooLarge(
            "records", f"{len(records) + len(deletes)} records; at most {settings.max_records}"
        )

    ids: list[str] = []
    ops: list[str] = []
    metadata: list[dict | None] = []
    vectors: list[np.ndarray | None] = []
    texts: list[tuple[int, str, str]] = []
    for i, rec in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(rec, dict):
            raise InvalidInput(where, "expected an object with id and vector or text")
        extra = sorted(set(rec) - _RECORD_FIELDS)
        if extra:
            raise InvalidInput(
                f"{where}.{extra[0]}", f"unknown field (expected {sorted(_RECORD_FIELDS)})"
            )
        rid = _check_id(rec.get("id"), f"{where}.id", settings.max_id_length)
        has_vector, has_text = rec.get("vector") is not None, rec.get("text") is not None
        if has_vector == has_text:
            raise InvalidInput(where, "give exactly one of vector or text")
        if has_vector:
            vectors.append(check_vector(rec["vector"], f"{where}.vector", schema))
        else:
            texts.append((len(vectors), f"{where}.text", rec["text"]))
            vectors.append(None)
        meta = rec.get("metadata")
        if meta is not None:
            if not isinstance(meta, dict):
                raise InvalidInput(f"{where}.metadata", "expected a JSON object")
            size = len(json.dumps(meta, separators=(",", ":")).encode())
            if size > settings.max_metadata_size:
                raise InvalidInput(
                    f"{where}.metadata", f"{size} bytes; at most {settings.max_metadata_size}"
                )
        ids.append(rid)
        ops.append(UPSERT)
        metadata.append(meta)
    upserted = set(ids)
    for i, rid in enumerate(deletes):
        rid = _check_id(rid, f"deletes[{i}]", settings.max_id_length)
        if rid in upserted:
            raise InvalidInput(f"deletes[{i}]", f"id {rid!r} is also upserted in this request")
        ids.append(rid)
        ops.append(DELETE)
        metadata.append(None)

    for slot, field, text in texts:
        vectors[slot] = embed_text(schema, text, field)
    matrix = (
        np.stack(vectors).astype(np.float32)  # type: ignore[arg-type]
        if vectors
        else np.zeros((0, schema.dimension), dtype=np.float32)
    )
    digest = xxhash.xxh3_128()
    digest.update(json.dumps([name, ids, ops, metadata], sort_keys=True).encode())
    digest.update(matrix.tobytes())
    return ValidRequest(schema, ids, ops, matrix, metadata, digest.hexdigest())


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
) -> IngestOutcome:
    """Make the batch durable (put-if-absent) and only then report it accepted."""
    collection = request.schema.name
    batch = Batch(
        collection=collection,
        writer=writer,
        ids=request.ids,
        ops=request.ops,
        timestamps=clock.take(len(request.ids)),
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
