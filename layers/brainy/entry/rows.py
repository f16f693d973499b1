"""The rows of an upsert as a user gives them, in one shape for the embedded
database and the HTTP client: columns (ids, and vectors as a matrix or lists, or
texts, and metadata), or records (`[{"id", "vector" | "text", "metadata"}]`).

Checking what the rows hold is the ingest layer's (`brainy.write.ingest`): here
only the shape of the call is checked, and rows are cut into batches. No numpy at
import: the client stays light.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from brainy.core.errors import BrainyError, InvalidInput

E = TypeVar("E", bound=BrainyError)

# Records per batch when the caller does not say: the CLI's.
DEFAULT_BATCH_SIZE = 2000


def _listed(value: Any) -> list[Any]:
    """A sequence (list, tuple, numpy array of ids ...) as a list."""
    if hasattr(value, "tolist"):
        return list(value.tolist())
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError
    return list(value)


@dataclass
class Rows:
    """An upsert's rows. Exactly one of `vectors`, `texts` and `records` is set.

    Attributes:
        ids: the record ids (from the records, for the records form).
        vectors: a 2-D numpy array (kept as it is: never a list per row) or a list
            of lists.
        texts: texts to embed with the collection's embedder.
        metadata: one object (or None) per row, or None for none.
        records: the records form, as given.
    """

    ids: list[Any]
    vectors: Any = None
    texts: list[Any] | None = None
    metadata: list[Any] | None = None
    records: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_matrix(self) -> bool:
        return getattr(self.vectors, "ndim", None) == 2

    def records_between(self, lo: int, hi: int) -> list[Any]:
        """Rows [lo, hi) as ingest request records (vectors as JSON lists)."""
        if self.records is not None:
            return [_plain_record(r) for r in self.records[lo:hi]]
        if self.texts is not None:
            values, field = self.texts[lo:hi], "text"
        else:
            chunk = self.vectors[lo:hi]
            values, field = (chunk.tolist() if hasattr(chunk, "tolist") else chunk), "vector"
        out = []
        for i, value in enumerate(values):
            record: dict[str, Any] = {"id": self.ids[lo + i], field: value}
            if self.metadata is not None and self.metadata[lo + i] is not None:
                record["metadata"] = self.metadata[lo + i]
            out.append(record)
        return out


def _plain_record(record: Any) -> Any:
    """A record with a numpy vector made a JSON list (anything else as given: the
    ingest layer names what is wrong with it)."""
    if isinstance(record, Mapping) and hasattr(record.get("vector"), "tolist"):
        return {**record, "vector": record["vector"].tolist()}
    return record


def rows_of(ids: Any, vectors: Any = None, texts: Any = None, metadata: Any = None) -> Rows:
    """The rows of `upsert(ids, vectors=None, texts=None, metadata=None)`.

    Raises:
        InvalidInput: naming the argument whose shape is wrong.
    """
    if vectors is None and texts is None and metadata is None:
        try:
            records = _listed(ids)
        except TypeError:
            raise InvalidInput("ids", "expected a list of ids, or of records") from None
        if records and all(isinstance(r, Mapping) for r in records):
            return Rows([r.get("id") for r in records], records=records)
        raise InvalidInput(
            "vectors", "give vectors or texts with the ids, or records {id, vector|text, metadata}"
        )
    try:
        id_list = _listed(ids)
    except TypeError:
        raise InvalidInput("ids", f"expected a list of ids, got {type(ids).__name__}") from None
    if (vectors is None) == (texts is None):
        raise InvalidInput("vectors", "give exactly one of vectors or texts")
    rows = Rows(id_list)
    if vectors is not None:
        if getattr(vectors, "ndim", 2) != 2:
            raise InvalidInput("vectors", f"expected a 2-D matrix (a vector a row), got "
                               f"{vectors.ndim} dimensions")  # fmt: skip
        if not hasattr(vectors, "ndim"):
            try:
                vectors = _listed(vectors)
            except TypeError:
                raise InvalidInput("vectors", "expected a matrix or a list of vectors") from None
        rows.vectors = vectors
        given, name = len(vectors), "vectors"
    else:
        try:
            rows.texts = _listed(texts)
        except TypeError:
            raise InvalidInput("texts", "expected a list of texts") from None
        given, name = len(rows.texts), "texts"
    if given != len(id_list):
        raise InvalidInput(name, f"{given} {name} for {len(id_list)} ids")
    if metadata is not None:
        try:
            rows.metadata = _listed(metadata)
        except TypeError:
            raise InvalidInput(
                "metadata", "expected a list of objects (or None), one a row"
            ) from None
        if len(rows.metadata) != len(id_list):
            raise InvalidInput("metadata", f"{len(rows.metadata)} metadata for {len(id_list)} ids")
    return rows


def id_list(ids: Any) -> list[Any]:
    """The ids of `delete(ids)`."""
    try:
        return _listed(ids)
    except TypeError:
        raise InvalidInput("ids", f"expected a list of ids, got {type(ids).__name__}") from None


def cut_ids(ids: Sequence[Any]) -> list[Any]:
    """The ids batches are cut at (see `batch_bounds`): a row whose
    id is not a string never repeats (the ingest layer refuses it)."""
    return [rid if isinstance(rid, str) else (i,) for i, rid in enumerate(ids)]


_ROW_FIELD = re.compile(r"^(records|deletes|vectors)\[(\d+)\](.*)$")


def shifted(error: E, first: int) -> E:
    """`error` of a batch starting at row `first`, its field renamed to the row of the
    whole call (`records[3].vector` of the batch at 2000 → `records[2003].vector`)."""
    m = _ROW_FIELD.match(error.field)
    if m is None or first == 0:
        return error
    return renamed(error, f"{m.group(1)}[{int(m.group(2)) + first}]{m.group(3)}")


def renamed(error: E, field: str) -> E:
    """A copy of `error` (same type and attributes) naming `field` instead."""
    moved = type(error).__new__(type(error))
    moved.__dict__.update(error.__dict__)
    BrainyError.__init__(moved, field, error.reason)
    return moved


class BatchCuts:
    """Where input is cut into batches: after `size` records, and early where an id
    repeats, so that a later line (an update, or a delete) applies after the earlier
    one, as it does in the file: records of one batch carry no order among themselves."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[Any] = set()

    def starts_batch(self, rid: Any, where: str | int) -> bool:
        """Whether the record with id `rid` (at `where`) starts a new batch."""
        hashable = isinstance(rid, str)
        cut = len(self.seen) >= self.size or (hashable and rid in self.seen)
        if cut:
            self.seen = set()
        self.seen.add(rid if hashable else (where,))
        return cut


def batch_bounds(
    n: int, batch_size: int, ids: Sequence[Any] | None = None
) -> list[tuple[int, int]]:
    """Rows [lo, hi) of each batch of `n` rows: at most `batch_size` each, cut early
    where an id of `ids` repeats (see `BatchCuts`)."""
    bounds = list(range(0, n, batch_size))
    if ids is not None and len(set(ids)) != n:
        cuts = BatchCuts(batch_size)
        bounds = [0, *(i for i, rid in enumerate(ids) if cuts.starts_batch(rid, i))]
    return list(zip(bounds, [*bounds[1:], n], strict=True))


def batches(n: int, batch_size: int, ids: Sequence[Any]) -> Iterator[tuple[int, int]]:
    """Rows [lo, hi) of each batch of an upsert or delete."""
    if batch_size < 1:
        raise InvalidInput("batch_size", f"expected a positive integer, got {batch_size!r}")
    yield from batch_bounds(n, batch_size, cut_ids(ids))
