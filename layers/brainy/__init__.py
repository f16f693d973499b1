"""Brainy: serverless vector search on one object-storage bucket.

    import brainy

    db = brainy.connect("file://./data")            # embedded, on any store URL
    docs = db.create_collection("docs", dimension=384)
    client = brainy.Client("https://brainy.example.com", token="...")  # deployed

The names below are imported on first use: `import brainy` stays cheap for a
function's cold start.
"""

import os

# `typing` alone would cost more than the rest of this module: the type checkers'
# convention without importing it.
TYPE_CHECKING = False

# Concurrent queries already fill the cores; BLAS threads on top of them only fight
# for them (measured: two client threads on 1M rows, 2 cores, 88 QPS with one BLAS
# thread, 40 with two). This must be set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Public name -> the module that defines it.
_EXPORTS = {
    "connect": "brainy.entry.api",
    "Database": "brainy.entry.api",
    "Collection": "brainy.entry.api",
    "Client": "brainy.entry.client",
    "RemoteCollection": "brainy.entry.client",
    "RemoteError": "brainy.entry.client",
    "Hit": "brainy.core.results",
    "SearchResult": "brainy.core.results",
    "WriteResult": "brainy.core.results",
    "BrainyError": "brainy.core.errors",
    "InvalidInput": "brainy.core.errors",
    "UnknownCollection": "brainy.core.errors",
    "PayloadTooLarge": "brainy.core.errors",
    "IdempotencyConflict": "brainy.core.errors",
    "Forbidden": "brainy.core.errors",
    "VersionNotVisible": "brainy.core.errors",
    "VersionNotRetained": "brainy.core.errors",
    "ClockSkewed": "brainy.core.errors",
    "ConfigError": "brainy.core.config",
    "SchemaFrozen": "brainy.core.config",
    "StorageError": "brainy.storage",
}

__all__ = [
    "BrainyError",
    "Client",
    "ClockSkewed",
    "Collection",
    "ConfigError",
    "Database",
    "Forbidden",
    "Hit",
    "IdempotencyConflict",
    "InvalidInput",
    "PayloadTooLarge",
    "RemoteCollection",
    "RemoteError",
    "SchemaFrozen",
    "SearchResult",
    "StorageError",
    "UnknownCollection",
    "VersionNotRetained",
    "VersionNotVisible",
    "WriteResult",
    "connect",
]

if TYPE_CHECKING:
    from brainy.core.config import ConfigError, SchemaFrozen
    from brainy.core.errors import (
        BrainyError,
        ClockSkewed,
        Forbidden,
        IdempotencyConflict,
        InvalidInput,
        PayloadTooLarge,
        UnknownCollection,
        VersionNotRetained,
        VersionNotVisible,
    )
    from brainy.core.results import Hit, SearchResult, WriteResult
    from brainy.entry.api import Collection, Database, connect
    from brainy.entry.client import Client, RemoteCollection, RemoteError
    from brainy.storage import StorageError


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'brainy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
