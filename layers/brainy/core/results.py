"""What a search answers: typed hits, best first, and the manifest version searched.

Kept apart from the search path (and free of numpy) so the HTTP client returns the
same types as the embedded database without importing the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, overload


@dataclass(frozen=True)
class Hit:
    """One result: the record's id, its score (higher is nearer for every metric:
    cosine similarity, inner product, or negated L2 distance) and its metadata."""

    id: str
    score: float
    metadata: Any

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "metadata": self.metadata}


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query, best first, and the manifest version they come from.

    It behaves as a list of `Hit` (`len`, iteration, indexing)::

        result = collection.search(vector=[0.1, 0.2, 0.3], k=3)
        for hit in result:
            print(hit.id, hit.score)
        print(result.version, result[0].id, result.ids)
    """

    hits: list[Hit]
    version: int

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    @overload
    def __getitem__(self, index: int) -> Hit: ...
    @overload
    def __getitem__(self, index: slice) -> list[Hit]: ...
    def __getitem__(self, index: int | slice) -> Hit | list[Hit]:
        return self.hits[index]

    @property
    def ids(self) -> list[str]:
        return [hit.id for hit in self.hits]

    def to_dict(self) -> dict[str, Any]:
        """The body the search function answers (without `took_ms`)."""
        return {"results": [hit.to_dict() for hit in self.hits], "version": self.version}


@dataclass(frozen=True)
class WriteResult:
    """What an upsert or delete made durable.

    Attributes:
        batches: the batch objects written (one per batch of at most `batch_size`
            records), in order.
        accepted: records upserted.
        deleted: ids deleted.
        version: the manifest version that made them searchable, when they were
            indexed before returning (embedded mode); None when an indexer
            applies them later (pass it as a search's `min_version` to wait).
    """

    batches: list[str]
    accepted: int
    deleted: int
    version: int | None = None
