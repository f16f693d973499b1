"""What maintenance works with, passed in explicitly: the store, the settings, the
collections' schemas, the indexer's entry point and the table's caches.

Maintenance never sees the instance (`service.app`) that owns these: it is given
them, so it depends only on the layers below it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from brainy.core.config import CollectionSchema, Settings
from brainy.core.errors import UnknownCollection
from brainy.storage import ObjectStore
from brainy.table.deletions import Masks
from brainy.table.headers import HeaderCache
from brainy.table.manifest import Manifests, VersionCache
from brainy.write.indexer import IndexResult

# A long step reports how far it is: (step, units done, units in all). The CLI
# draws a bar from it on a terminal; everything else passes None.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Maintenance:
    """The collaborators of sweep, compaction, garbage collection and repair.

    Attributes:
        store: the bucket.
        settings: retention, grace periods, thresholds, the cache folder.
        schema_of: a collection's schema, or None when it is not declared.
        index: applies one batch key (the indexer's own entry point, the code an
            object-created event reaches).
        writer_id: who commits (recorded in manifests and leases).
        manifests_of: the manifest log of a collection, with the configured
            grace period and clock margin.
        masks: deletion files, cached.
        headers: segment headers, cached.
        versions: manifest versions, decoded once (garbage collection rereads the
            retention window every pass).
    """

    store: ObjectStore
    settings: Settings
    schema_of: Callable[[str], CollectionSchema | None]
    index: Callable[[str], IndexResult]
    writer_id: str
    manifests_of: Callable[[str], Manifests]
    masks: Masks
    headers: HeaderCache
    versions: VersionCache

    def require_schema(self, name: str) -> CollectionSchema:
        schema = self.schema_of(name)
        if schema is None:
            raise UnknownCollection(name)
        return schema
