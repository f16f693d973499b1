"""The role table covers every key the code writes, and grants each role what the
design gives it: search reads only, ingest writes only batches."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from roles import PREFIXES, ROLES, allowed

from brainy.core.config import CONFIG_KEY, INSTANCES_PREFIX
from brainy.format.batch import batch_key, keyed_batch_key
from brainy.format.centroids import centroids_key
from brainy.format.deletes import deletion_key
from brainy.format.segment import segment_key
from brainy.maintenance.compaction import lineage_key
from brainy.maintenance.leases import LOCKS_PREFIX
from brainy.service.app import PROBES_PREFIX
from brainy.table.manifest import Manifests
from brainy.write.embedding_cache import PREFIX as EMBEDDINGS_PREFIX
from brainy.write.quarantine import quarantine_key

BATCH = batch_key("docs", "writer-1", "b1")
KEYED = keyed_batch_key("docs", "retry-me")
MANIFESTS = Manifests(None, "docs")  # type: ignore[arg-type]
# Every kind of key the code makes, with the table's name for its pattern.
KEYS = {
    "config": CONFIG_KEY,
    "instances": f"{INSTANCES_PREFIX}search-1.json",
    "probes": f"{PROBES_PREFIX}clock-ingest-1-0123abcd",
    "locks": f"{LOCKS_PREFIX}compact-docs",
    "wal": BATCH,
    "keyed": KEYED,
    "manifests": MANIFESTS.key(7),
    "latest": MANIFESTS.latest_key,
    "segments": segment_key("docs", "s1"),
    "deletes": deletion_key("docs", "s1"),
    "centroids": centroids_key("docs"),
    "lineage": lineage_key("docs", "s1"),
    "quarantine": quarantine_key(BATCH),
    "embeddings": f"{EMBEDDINGS_PREFIX}minilm/384/batches/0123abcd",
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_every_key_the_code_makes_has_a_pattern(kind: str) -> None:
    assert any(fnmatchcase(KEYS[kind], p) for p in PREFIXES.values()), KEYS[kind]


def test_search_reads_what_a_query_needs_and_writes_nothing() -> None:
    for kind in ("config", "instances", "manifests", "latest", "segments", "deletes", "centroids"):
        assert allowed("search", "read", KEYS[kind]), kind
    assert ROLES["search"]["write"] == ROLES["search"]["delete"] == []
    assert not allowed("search", "read", KEYS["wal"])


def test_ingest_writes_batches_and_reads_no_index() -> None:
    assert allowed("ingest", "write", KEYS["wal"]) and allowed("ingest", "write", KEYS["keyed"])
    assert allowed("ingest", "read", KEYS["keyed"]), "a retried Idempotency-Key reads its batch"
    for kind in ("manifests", "latest", "segments", "deletes", "centroids", "locks", "config"):
        assert not allowed("ingest", "write", KEYS[kind]), kind
    for kind in ("manifests", "segments", "deletes", "centroids", "wal"):
        assert not allowed("ingest", "read", KEYS[kind]), kind
    # The embedding cache (cache_embeddings): a retried batch's texts read back, new
    # ones written once (put-if-absent), never deleted.
    assert allowed("ingest", "read", KEYS["embeddings"])
    assert allowed("ingest", "write", KEYS["embeddings"])
    # Only its start-up probes (conditional-write check, clock skew) are deleted.
    assert ROLES["ingest"]["delete"] == ["probes"]


def test_indexer_commits_and_quarantines_but_never_collects() -> None:
    for kind in ("segments", "deletes", "manifests", "latest", "quarantine", "probes"):
        assert allowed("indexer", "write", KEYS[kind]), kind
    assert allowed("indexer", "delete", KEYS["wal"]), "a corrupt batch moves to quarantine"
    for kind in ("manifests", "segments", "deletes", "config"):
        assert not allowed("indexer", "delete", KEYS[kind]), kind


def test_compactor_merges_under_a_lease_and_collects_garbage() -> None:
    for kind in ("locks", "segments", "deletes", "manifests", "centroids", "lineage", "quarantine"):
        assert allowed("compactor", "write", KEYS[kind]), kind
    for kind in ("locks", "wal", "manifests", "segments", "deletes", "lineage"):
        assert allowed("compactor", "delete", KEYS[kind]), kind
    assert not allowed("compactor", "write", KEYS["config"])
    assert not allowed("compactor", "write", KEYS["wal"])


def test_every_writer_may_probe_the_store_at_start_up() -> None:
    for role, access in ROLES.items():
        if access["write"]:
            assert all(allowed(role, op, KEYS["probes"]) for op in ("read", "write", "delete"))
