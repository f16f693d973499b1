"""Cold-start benchmark (issue 7 §3): the first query of a fresh search instance
(empty cache) on a semantic collection, against warming the whole collection.

Data: `--rows` vectors of `--dim` dimensions drawn around `--partitions` random
centres (a mixture, so semantic partitions mean something), ingested and indexed
in-process, then `compact(force=True)` trains the centroids and routes every row
to its partition. The collection is measured on a local folder (`file://`) and,
unless `--no-s3`, on a moto S3 server started on a free loopback port (the same
objects copied there). For each store, each with a fresh read-only instance and
an empty cache:

* `first_query`: the first search's latency, the store requests it sent by kind
  and the bytes it read, as the search function runs (background warming on: the
  segments it probes are read from their sketches and downloaded behind it); the
  cache's loads apart (`loads`, `loaded_bytes`: segments it waited for, or that
  started downloading behind it before it returned);
* `background`: the time until every live segment is cached, from that query;
* `warm_query_p50_ms`, `warm_query_requests`: another query, repeated once cached;
* `first_query_whole_segments`: the same first query with background warming off,
  which downloads the probed segments whole before answering;
* `warmup`: `Brainy.warmup` (what `POST /warmup` calls) of the whole collection.

Run: `python -m bench.coldstart [--rows 100000] [--dim 384] [--partitions 64]
[--no-s3]`; figures go to `bench/results/coldstart.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.functions import moto_bucket
from bench.systems import brainy_app
from brainy.core.config import CollectionSchema
from brainy.maintenance.compaction import compact
from brainy.service.app import Brainy
from brainy.storage import ObjectStore, open_store
from brainy.table.manifest import Manifest, Manifests

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "docs"


def _build(url: str, work: Path, rows: int, dim: int, partitions: int) -> np.ndarray:
    """The collection, compacted into semantic partitions; returns some queries."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((partitions, dim)).astype(np.float32) * 3
    writer = brainy_app(url, work / "writer-cache")
    writer.create_collection(
        CollectionSchema(
            COLLECTION, dimension=dim, metric="angular", partitions=partitions, strategy="semantic"
        )
    )
    batch = 10_000
    for at in range(0, rows, batch):
        n = min(batch, rows - at)
        vectors = centres[rng.integers(0, partitions, n)] + rng.standard_normal((n, dim))
        records = [
            {"id": str(at + i), "vector": v}
            for i, v in enumerate(vectors.astype(np.float32).tolist())
        ]
        writer.index_key(writer.ingest({"collection": COLLECTION, "records": records}).batch)
    assert compact(writer.maintenance, COLLECTION, force=True).status == "compacted"
    writer.close()
    queries = centres[rng.integers(0, partitions, 20)] + rng.standard_normal((20, dim))
    return queries.astype(np.float32)


def _newest(url: str, collection: str) -> Manifest:
    store = open_store(url, read_only=True)
    manifest = Manifests(store, collection).latest()
    store.close()
    assert manifest is not None
    return manifest


def _cached_bytes(app: Brainy, manifest: Manifest) -> tuple[int, int]:
    refs = [ref for ref in manifest.segments if ref.live > 0 and app.searcher.cache.cached(ref)]
    return len(refs), sum(ref.bytes for ref in refs)


def _query(app: Brainy, vector: np.ndarray, collection: str) -> float:
    started = time.perf_counter()
    app.search({"collection": collection, "vector": vector.tolist(), "k": 10})
    return time.perf_counter() - started


class _Traffic:
    """Requests by kind and bytes read (GETs and downloads) through a store: those
    of the querying threads apart from those of the cache's download threads
    (segments a query waited for, or fetched behind its answer)."""

    def __init__(self, store: ObjectStore) -> None:
        self.requests: Counter[str] = Counter()
        self.loads: Counter[str] = Counter()
        self.bytes = self.loaded_bytes = 0
        self._lock = threading.Lock()
        store.add_observer(self._count)
        get, download = store.get, store.download

        def counted_get(key: str, **kw: Any) -> Any:
            blob = get(key, **kw)
            self._add(len(blob.data))
            return blob

        def counted_download(key: str, path: Path) -> None:
            download(key, path)
            self._add(Path(path).stat().st_size)

        store.get = counted_get  # type: ignore[method-assign]
        store.download = counted_download  # type: ignore[method-assign]

    def _count(self, kind: str) -> None:
        (self.loads if _loading() else self.requests).update([kind])

    def _add(self, n: int) -> None:
        with self._lock:
            if _loading():
                self.loaded_bytes += n
            else:
                self.bytes += n

    def take(self) -> dict[str, Any]:
        """What went by since the last `take`, as of now (loads under way count as
        requests, their bytes once they land)."""
        with self._lock:
            out = {
                "requests": dict(self.requests),
                "bytes": self.bytes,
                "loads": dict(self.loads),
                "loaded_bytes": self.loaded_bytes,
            }
            self.requests.clear()
            self.loads.clear()
            self.bytes = self.loaded_bytes = 0
        return out


def _loading() -> bool:
    return threading.current_thread().name.startswith("brainy-download")


def measure(
    url: str, work: Path, queries: np.ndarray, collection: str = COLLECTION
) -> dict[str, Any]:
    """A fresh instance's first query, warm query, warm-up and background warming on
    the collection at `url` (see the module's docstring)."""
    manifest = _newest(url, collection)
    live = [ref for ref in manifest.segments if ref.live > 0]
    out: dict[str, Any] = {
        "collection": {"segments": len(live), "bytes": sum(ref.bytes for ref in live)},
    }

    # As the search function runs (background warming on): the segments a first
    # query probes are read from their sketches, and downloaded behind the answer.
    # A cache that holds the whole collection, so that its warming ends.
    room = str(max(2 * 10**9, 2 * out["collection"]["bytes"]))
    reader = brainy_app(url, work / "cold", "search", BRAINY_CACHE_SIZE=room)
    traffic = _Traffic(reader.store)
    seconds = _query(reader, queries[0], collection)
    out["first_query"] = {"seconds": round(seconds, 4), **traffic.take()}
    started = time.perf_counter()
    while _cached_bytes(reader, manifest)[0] < len(live) and time.perf_counter() - started < 300:
        time.sleep(0.01)
    out["background"] = {
        "all_cached_seconds": round(seconds + time.perf_counter() - started, 3),
        "segments": _cached_bytes(reader, manifest)[0],
    }
    traffic.take()
    warm = [_query(reader, queries[1], collection) for _ in range(20)]
    out["warm_query_p50_ms"] = round(statistics.median(warm) * 1000, 3)
    after = traffic.take()
    out["warm_query_requests"] = sum(after["requests"].values()) + sum(after["loads"].values())
    reader.close()

    # Without background warming: the probed segments are downloaded whole first.
    reader = brainy_app(url, work / "whole", "search", BRAINY_BACKGROUND_WARM="false")
    traffic = _Traffic(reader.store)
    seconds = _query(reader, queries[0], collection)
    segments, _ = _cached_bytes(reader, manifest)
    out["first_query_whole_segments"] = {
        "seconds": round(seconds, 4),
        "segments": segments,
        **traffic.take(),
    }
    reader.close()

    reader = brainy_app(url, work / "warmup", "search", BRAINY_BACKGROUND_WARM="false")
    [report] = reader.warmup({"collection": collection})
    out["warmup"] = report.to_dict()
    reader.close()
    return out


def copy_store(src_url: str, dst_url: str, batches: bool = True) -> None:
    """Copy every object of one store into another (e.g. a local folder into S3);
    without the ingested batches (`<collection>/wal/`) when `batches` is false: a
    search never reads them."""
    src, dst = open_store(src_url, read_only=True), open_store(dst_url)
    for info in src.list(""):
        if batches or "/wal/" not in info.key:
            dst.put(info.key, src.get(info.key).data)
    src.close()
    dst.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="brainy-coldstart-"))
    results: dict[str, Any] = {
        "rows": args.rows,
        "dim": args.dim,
        "partitions": args.partitions,
    }
    try:
        url = (work / "store").resolve().as_uri()
        started = time.perf_counter()
        queries = _build(url, work, args.rows, args.dim, args.partitions)
        results["build_seconds"] = round(time.perf_counter() - started, 1)
        results["file"] = measure(url, work / "file", queries)
        print(json.dumps({"file": results["file"]}, indent=2))
        if not args.no_s3:
            with moto_bucket(work / "logs") as (s3_url, _):
                copy_store(url, s3_url)
                results["s3_moto"] = measure(s3_url, work / "s3", queries)
                print(json.dumps({"s3_moto": results["s3_moto"]}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coldstart.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
