"""Helpers shared by the layer's tests: instances on a store, a last-writer-wins
model, and the live state of a collection as a user would see it."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.service.app import Brainy
from brainy.storage import open_store
from brainy.table.lww import Copy, winner


def make_app(url: str, tmp_path: Path, role: str = "cli", **env: str) -> Brainy:
    """A Brainy instance on `url`, with its own cache folder and no refresh delay."""
    cache = tmp_path / f"cache-{role}-{len(list(tmp_path.glob('cache-*')))}"
    full_env = {
        "BRAINY_STORE": url,
        "BRAINY_ROLE": role,
        "BRAINY_CACHE_DIR": str(cache),
        "BRAINY_REFRESH_INTERVAL": "0",
        **env,
    }
    return Brainy.from_env(role, full_env)


def declare(app: Brainy, name: str = "docs", dimension: int = 8, **kw: Any) -> CollectionSchema:
    schema = CollectionSchema(name, dimension=dimension, **kw)
    app.create_collection(schema)
    return schema


def live_state(url: str, collection: str) -> dict[str, tuple[tuple[float, ...], Any]]:
    """id → (vector, metadata) of every live row of the newest manifest, read back
    from the segments themselves; fails if an id is live twice."""
    from brainy.format.segment import load_segment
    from brainy.table.deletions import Masks
    from brainy.table.manifest import Manifests

    store = open_store(url, read_only=True)
    manifest = Manifests(store, collection).latest()
    if manifest is None:
        return {}
    out: dict[str, tuple[tuple[float, ...], Any]] = {}
    seen: Counter[str] = Counter()
    masks = Masks(store)
    with tempfile.TemporaryDirectory(prefix="brainy-live-") as tmp:
        for ref in manifest.segments:
            seg = load_segment(store, ref.key, ref.id, Path(tmp))
            masked = set(masks.rows(ref).tolist())
            for row, rid in enumerate(seg.header.ids):
                if row in masked:
                    continue
                seen[rid] += 1
                vec = tuple(round(float(x), 5) for x in seg.vectors[row])
                out[rid] = (vec, seg.header.metadata[row])
    twice = [rid for rid, n in seen.items() if n > 1]
    assert not twice, f"ids live more than once: {twice[:5]}"
    return out


class LWWModel:
    """The reference: each id keeps the record with the greatest (timestamp, writer),
    the engine's own rule (`brainy.table.lww.winner`) over every record ever written."""

    def __init__(self) -> None:
        self.best: dict[str, tuple[tuple[int, str], str, Any, Any]] = {}

    def apply_batch(self, batch: Any) -> None:
        upsert_row = 0
        for i, rid in enumerate(batch.ids):
            order = (int(batch.timestamps[i]), batch.writer)
            if batch.ops[i] == "u":
                vec = tuple(round(float(x), 5) for x in batch.vectors[upsert_row])
                upsert_row += 1
                record = (order, "u", vec, batch.metadata[i])
            else:
                record = (order, "d", None, None)
            current = self.best.get(rid)
            candidates = [Copy(order, "new", 0)] + ([Copy(current[0], "old", 0)] if current else [])
            if winner(candidates).segment == "new":
                self.best[rid] = record

    def live(self) -> dict[str, tuple[tuple[float, ...], Any]]:
        return {rid: (r[2], r[3]) for rid, r in self.best.items() if r[1] == "u"}


def random_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim)).astype(np.float32)


def index_keys_in_process(
    url: str, cache_dir: str, keys: list[str], start: Any = None
) -> list[int]:
    """Child-process body: index `keys` with an instance of its own; returns the
    versions its commits produced (for `multiprocessing`, so module level)."""
    app = Brainy.from_env(
        "indexer",
        {
            **__import__("os").environ,
            "BRAINY_STORE": url,
            "BRAINY_ROLE": "indexer",
            "BRAINY_CACHE_DIR": cache_dir,
            "BRAINY_REFRESH_INTERVAL": "0",
        },
    )
    if start is not None:
        start.wait()
    return [app.index_key(key).version or 0 for key in keys]


def model_of(store: Any, keys: list[str]) -> dict[str, tuple[tuple[float, ...], Any]]:
    """The live set last-writer-wins says the batches at `keys` leave."""
    from brainy.format.batch import Batch

    model = LWWModel()
    for key in keys:
        model.apply_batch(Batch.decode(store.get(key).data, key))
    return model.live()


def superseded(store: Any, keys: list[str]) -> set[str]:
    """The batches among `keys` whose every record a newer one (in `keys`) beats:
    indexing them commits nothing, whatever the order."""
    from brainy.format.batch import Batch

    batches = {key: Batch.decode(store.get(key).data, key) for key in keys}
    model = LWWModel()
    for batch in batches.values():
        model.apply_batch(batch)
    return {
        key
        for key, b in batches.items()
        if all(
            model.best[rid][0] > (int(ts), b.writer)
            for rid, ts in zip(b.ids, b.timestamps.tolist(), strict=True)
        )
    }


def level0_sources(manifest: Any) -> set[str]:
    """The batches whose level-0 segments `manifest` lists (applied since the last
    compaction)."""
    return {ref.source for ref in manifest.segments if ref.source}


def semantic_collection(url: str, tmp_path: Path, dimension: int = 16, partitions: int = 8):
    """A compacted semantic collection `docs` (nprobe 1) of 2,000 clustered rows with
    ids "0".."1999", plus a level-0 batch written after the compaction and a delete
    (so a deletion file): every kind of object a search reads. Returns the vectors
    (rows "3" and "1900" deleted)."""
    from brainy.maintenance.compaction import compact

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((partitions, dimension)).astype(np.float32) * 5
    labels = rng.integers(0, partitions, 2_000)
    vectors = (centres[labels] + rng.standard_normal((2_000, dimension))).astype(np.float32)
    writer = make_app(url, tmp_path)
    declare(writer, dimension=dimension, partitions=partitions, strategy="semantic", nprobe=1)
    for at in range(0, 1_800, 600):
        records = [{"id": str(i), "vector": vectors[i].tolist()} for i in range(at, at + 600)]
        writer.index_key(writer.ingest({"collection": "docs", "records": records}).batch)
    assert compact(writer.maintenance, "docs", force=True).status == "compacted"
    records = [{"id": str(i), "vector": vectors[i].tolist()} for i in range(1_800, 2_000)]
    writer.index_key(writer.ingest({"collection": "docs", "records": records}).batch)
    writer.index_key(writer.ingest({"collection": "docs", "deletes": ["3", "1900"]}).batch)
    writer.close()
    return vectors


def recording_reader(url: str, tmp_path: Path, **env: str):
    """A fresh read-only search instance (its own empty cache, no manifest refresh
    between requests) whose store records every request: `(app, FaultyStore)`."""
    from brainy.core.config import load_settings
    from faults import FaultyStore

    inner = open_store(url, read_only=True)
    full_env = {
        "BRAINY_STORE": url,
        "BRAINY_ROLE": "search",
        "BRAINY_MODE": "read-only",
        "BRAINY_CACHE_DIR": str(tmp_path / f"reader-{len(list(tmp_path.glob('reader-*')))}"),
        "BRAINY_REFRESH_INTERVAL": "3600",
        **env,
    }
    settings, _ = load_settings(full_env, role="search", store=inner)
    store = FaultyStore(inner, read_only=True)
    return Brainy(settings, store), store
