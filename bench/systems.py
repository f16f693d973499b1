"""The systems `make bench` compares on the same data and queries, and how a curve
point is measured.

Each system is built once per data set (timed; its bytes on disk counted) and then
searched at several settings, each a point on the recall@10 / p50 latency curve:

* `brainy`: ingested through `Brainy.ingest` and indexed by `Brainy.index_key` (the
  ingest and indexer code, in batches of the largest size a request accepts), then
  `compact(force=True)` into semantic partitions; searched by a read-only instance
  through `Brainy.search`, in-process, at `recall_target` 0.90 / 0.95 / 0.99 and at
  several `nprobe` (set in the shared configuration, as a user would).
* `exact-numpy`: one matrix-vector product over the unit vectors and a partial sort.
* `annoy`: one Annoy index of every row (16 trees, the product's vectorised item
  writer), at several `search_k`.
* `lancedb-ivf-pq`, `lancedb-ivf-hnsw-sq`: a LanceDB table on local disk with that
  index (cosine), at several nprobes / ef / refine factors; only when the `bench`
  extra is installed.

A point answers every measured query once untimed (so caches are warm and lazy
loads done), then again timed one at a time: recall@10 against the exact answer,
p50 and p95 latency.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import Dataset, K, unit
from brainy.core.config import CONFIG_KEY, CollectionSchema, ConfigError
from brainy.format.centroids import read_centroids
from brainy.format.segment import VectorChunks, _build_annoy
from brainy.maintenance.compaction import compact
from brainy.service.app import Brainy
from brainy.storage import open_store
from brainy.table.manifest import Manifests

COLLECTION = "bench"
TARGETS = (0.9, 0.95, 0.99)
N_TREES = 16

# query vector (as the system takes it) -> row numbers of the best K, best first
Search = Callable[[Any], np.ndarray]


@dataclass
class Built:
    """What building a system on a data set cost."""

    seconds: float
    bytes: int
    detail: dict[str, Any] = field(default_factory=dict)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(
    search: Search, queries: list[Any], data: Dataset, warm: int | None = None
) -> dict[str, float]:
    """recall@10, p50 and p95 (ms) of `search` over `queries` (the first of `data`'s),
    after answering the first `warm` of them (None: all) untimed."""
    for query in queries[:warm]:
        search(query)
    found = np.full((len(queries), K), -1, dtype=np.int64)
    took = []
    for i, query in enumerate(queries):
        began = time.perf_counter()
        ids = search(query)
        took.append(time.perf_counter() - began)
        found[i, : len(ids)] = ids[:K]
    return {
        "recall_at_10": round(data.recall(found), 4),
        "p50_ms": round(statistics.median(took) * 1000, 3),
        "p95_ms": round(float(np.percentile(took, 95)) * 1000, 3),
        "queries": len(queries),
    }


class System:
    """Build once, then a search function per setting."""

    name = ""
    # Queries answered untimed before a point (None: every one): a system that loads
    # what a query needs on first use is measured warm.
    warm: int | None = 10

    def build(self, data: Dataset, folder: Path) -> Built:
        raise NotImplementedError

    def settings(self) -> list[dict[str, Any]]:
        return [{}]

    def queries(self, vectors: np.ndarray) -> list[Any]:
        """The queries as this system's search takes them (converted untimed)."""
        return list(np.asarray(vectors, dtype=np.float32))

    def search(self, setting: dict[str, Any]) -> Search:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `build` opened."""


class Exact(System):
    name = "exact-numpy"

    def build(self, data: Dataset, folder: Path) -> Built:
        began = time.perf_counter()
        self.base = np.ascontiguousarray(unit(data.base))
        return Built(time.perf_counter() - began, self.base.nbytes)

    def search(self, setting: dict[str, Any]) -> Search:
        def run(query: np.ndarray) -> np.ndarray:
            scores = self.base @ query
            top = np.argpartition(-scores, K)[:K]
            return top[np.argsort(-scores[top])]

        return run


class Annoy(System):
    name = "annoy"

    def __init__(self, search_k: tuple[int, ...]) -> None:
        self.search_ks = search_k

    def build(self, data: Dataset, folder: Path) -> Built:
        from annoy import AnnoyIndex

        folder.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        chunks = VectorChunks(data.dimension, len(data.base), _row_chunks(data.base))
        path = _build_annoy(chunks, "angular", N_TREES, 1, folder)
        self.index = AnnoyIndex(data.dimension, "angular")
        self.index.load(str(path))
        return Built(time.perf_counter() - began, path.stat().st_size, {"n_trees": N_TREES})

    def settings(self) -> list[dict[str, Any]]:
        return [{"search_k": k} for k in self.search_ks]

    def queries(self, vectors: np.ndarray) -> list[Any]:
        return np.asarray(vectors, dtype=np.float32).tolist()

    def search(self, setting: dict[str, Any]) -> Search:
        def run(query: list[float]) -> np.ndarray:
            return np.asarray(self.index.get_nns_by_vector(query, K, setting["search_k"]))

        return run

    def close(self) -> None:
        self.index.unload()


def _row_chunks(base: np.ndarray, rows: int = 65_536) -> Iterator[np.ndarray]:
    for start in range(0, len(base), rows):
        yield np.ascontiguousarray(base[start : start + rows], dtype=np.float32)


class Lance(System):
    """A LanceDB table with one vector index (`kind`: "ivf-pq" or "ivf-hnsw-sq")."""

    def __init__(self, kind: str, partitions: int, settings: list[dict[str, Any]]) -> None:
        self.kind = kind
        self.name = f"lancedb-{kind}"
        self.partitions = partitions
        self._settings = settings

    def _config(self) -> Any:
        from lancedb.index import HnswSq, IvfPq

        # Chosen for build time: k-means on 64 rows a partition, 20 iterations (with
        # the defaults, 256 and 50, IVF_PQ took ~3x longer to build on the real set).
        common = {"distance_type": "cosine", "num_partitions": self.partitions}
        fit = {"sample_rate": 64, "max_iterations": 20}
        if self.kind == "ivf-pq":
            return IvfPq(**common, **fit, num_sub_vectors=48)
        return HnswSq(**common, **fit, m=16, ef_construction=100)

    def build(self, data: Dataset, folder: Path) -> Built:
        import lancedb

        shutil.rmtree(folder, ignore_errors=True)
        began = time.perf_counter()
        self.table = lancedb.connect(folder).create_table(
            "bench", _arrow_batches(data.base), schema=_arrow_schema(data.dimension)
        )
        loaded = time.perf_counter() - began
        self.table.create_index("vector", config=self._config())
        seconds = time.perf_counter() - began
        detail = {"load_s": round(loaded, 2), "index": self.kind, "num_partitions": self.partitions}
        return Built(seconds, folder_bytes(folder), detail)

    def settings(self) -> list[dict[str, Any]]:
        return self._settings

    def search(self, setting: dict[str, Any]) -> Search:
        def run(query: np.ndarray) -> np.ndarray:
            builder = self.table.search(query).distance_type("cosine").limit(K)
            builder = builder.nprobes(setting["nprobes"])
            if "ef" in setting:
                builder = builder.ef(setting["ef"])
            if "refine_factor" in setting:
                builder = builder.refine_factor(setting["refine_factor"])
            return builder.select(["id", "_distance"]).to_arrow()["id"].to_numpy()

        return run


def _arrow_schema(dimension: int) -> Any:
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), dimension))])


def _arrow_batches(base: np.ndarray) -> Iterator[Any]:
    import pyarrow as pa

    for start in range(0, len(base), 65_536):
        chunk = np.ascontiguousarray(base[start : start + 65_536], dtype=np.float32)
        ids = pa.array(np.arange(start, start + len(chunk)), pa.int64())
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), chunk.shape[1])
        yield pa.record_batch([ids, vectors], schema=_arrow_schema(chunk.shape[1]))


def lancedb_available() -> bool:
    try:
        import lancedb  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ Brainy


def brainy_app(url: str, cache: Path, role: str = "cli", **env: str) -> Brainy:
    """A Brainy instance on `url` as a function would start it (search: read-only)."""
    full = {
        "BRAINY_STORE": url,
        "BRAINY_ROLE": role,
        "BRAINY_CACHE_DIR": str(cache),
        "BRAINY_REFRESH_INTERVAL": "3600",
        **({"BRAINY_MODE": "read-only"} if role == "search" else {}),
        **env,
    }
    return Brainy.from_env(role, {**os.environ, **full})


def partitions_for(rows: int) -> int | str:
    """The collection's partition count: `auto` where the product sizes it, else one
    partition per ~8,000 rows (the seed's 128 at 1M), at least 16."""
    try:
        CollectionSchema.from_dict(
            COLLECTION, {"dimension": 8, "partitions": "auto", "strategy": "semantic"}
        )
        return "auto"
    except ConfigError:
        return max(16, min(1024, rows // 8_000))


def set_nprobe(url: str, collection: str, nprobe: int | None) -> None:
    """Rewrite the shared configuration's `nprobe` of `collection` (None: the default)."""
    store = open_store(url)
    config = json.loads(store.get(CONFIG_KEY).data)
    config["collections"][collection]["nprobe"] = nprobe
    store.put(CONFIG_KEY, json.dumps(config).encode())
    store.close()


def ingest_rows(app: Brainy, collection: str, base: np.ndarray, batch: int) -> dict[str, float]:
    """Ingest `base` (ids are row numbers) through the ingest code, each batch indexed
    by the indexer as its event would; returns the seconds each took in all."""
    spent = {"ingest_s": 0.0, "index_s": 0.0}
    for start in range(0, len(base), batch):
        vectors = np.asarray(base[start : start + batch], dtype=np.float32)
        ids = [str(start + i) for i in range(len(vectors))]
        began = time.perf_counter()
        # Columns, as `brainy ingest X.npy` hands them to the ingest code.
        key = app.ingest_vectors(collection, ids, vectors).batch
        indexed = time.perf_counter()
        app.index_key(key)
        spent["ingest_s"] += indexed - began
        spent["index_s"] += time.perf_counter() - indexed
    return spent


class BrainySystem(System):
    name = "brainy"
    warm = None

    def __init__(self, nprobes: tuple[int, ...]) -> None:
        self.nprobes = nprobes
        self.reader: Brainy | None = None
        self.nprobe: int | None = None

    def build(self, data: Dataset, folder: Path) -> Built:
        shutil.rmtree(folder, ignore_errors=True)
        self.folder = folder
        self.url = (folder / "store").resolve().as_uri()
        writer = brainy_app(self.url, folder / "writer-cache")
        partitions = partitions_for(len(data.base))
        writer.create_collection(
            CollectionSchema.from_dict(
                COLLECTION,
                {"dimension": data.dimension, "partitions": partitions, "strategy": "semantic"},
            )
        )
        began = time.perf_counter()
        spent = ingest_rows(writer, COLLECTION, data.base, writer.settings.max_records)
        compacting = time.perf_counter()
        report = compact(writer.maintenance, COLLECTION, force=True)
        spent["compact_s"] = time.perf_counter() - compacting
        seconds = time.perf_counter() - began
        writer.close()
        if report.status != "compacted":
            raise RuntimeError(f"brainy: compaction of the bench collection: {report}")
        self.reader, self.nprobe = self.open_reader(), None
        manifest = Manifests(self.reader.store, COLLECTION).latest()
        assert manifest is not None
        self.schema = self.reader.require_schema(COLLECTION)
        centroids = read_centroids(self.reader.store, manifest.centroids)
        self.partitions = len(centroids)
        live = [ref for ref in manifest.segments if ref.live > 0]
        detail = {
            **{k: round(v, 2) for k, v in spent.items()},
            "vectors_per_s": round(len(data.base) / (spent["ingest_s"] + spent["index_s"])),
            "partitions": self.partitions,
            "calibrated_nprobe": centroids.calibration.get("nprobe"),
            "segments": len(live),
            "store_bytes": folder_bytes(folder / "store"),
        }
        return Built(seconds, sum(ref.bytes for ref in live), detail)

    def settings(self) -> list[dict[str, Any]]:
        nprobes = sorted({n for n in self.nprobes if n < self.partitions})
        # The default (probes calibrated per recall target: nprobe None) last: the
        # instance left open is then the default one, warm.
        return [{"recall_target": 0.95, "nprobe": n} for n in nprobes] + [
            {"recall_target": t, "nprobe": None} for t in TARGETS
        ]

    def queries(self, vectors: np.ndarray) -> list[Any]:
        return [
            {"collection": COLLECTION, "vector": v, "k": K}
            for v in np.asarray(vectors, dtype=np.float32).tolist()
        ]

    def search(self, setting: dict[str, Any]) -> Search:
        nprobe = setting["nprobe"]
        if self.reader is None or nprobe != self.nprobe:
            # An instance reads the shared configuration once, at its start: a fresh
            # one (on the same cache folder) sees the new nprobe, as a redeploy would.
            self.close()
            set_nprobe(self.url, COLLECTION, nprobe)
            self.reader, self.nprobe = self.open_reader(), nprobe
        reader, target = self.reader, setting["recall_target"]

        def run(payload: dict[str, Any]) -> np.ndarray:
            hits = reader.search({**payload, "recall_target": target}).hits
            return np.fromiter((int(h.id) for h in hits), dtype=np.int64, count=len(hits))

        return run

    def open_reader(self) -> Brainy:
        return brainy_app(self.url, self.folder / "reader-cache", "search")

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


@contextmanager
def opened(system: System) -> Iterator[System]:
    try:
        yield system
    finally:
        system.close()
