"""Partitioning benchmark (issue 7 §1): hash against semantic partitions on the same
data and queries, through `Brainy.search`.

Data: the real MiniLM embeddings of /work/shared/data/pypi-minilm.npz (30,000
base vectors; the first `--queries` of its 500 held-out queries), angular. For
each partition count, one collection per strategy is ingested and indexed with
the ingest and indexer code, then `compact(force=True)` merges it into its
partitions (the semantic one trains its centroids there). A fresh read-only
instance per setting then answers every query once to warm its cache, and again
timed: recall@10 against exact numpy search over the same vectors, p50 and p95
latency in-process, the segments a query searches and the share of the
collection's rows they hold. For the semantic collections the `nprobe` tunable
is swept by rewriting the shared configuration (a search tunable: no data is
rewritten). One hash partition (one segment, searched through Annoy: today's
default) is the baseline, beside exact numpy search. Also reported: the
compaction's wall time, and the requests and segments a fresh instance's first
query needs (cold start).

Run: `python -m bench.partitions [--partitions 16 64 ...] [--nprobe 1 2 4 ...]`;
figures go to `bench/results/partitions.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from brainy.core.config import CONFIG_KEY, CollectionSchema
from brainy.format.centroids import Centroids, read_centroids
from brainy.format.partitioning import probed_partitions
from brainy.maintenance.compaction import compact
from brainy.read.search import DEFAULT_RECALL_TARGET, probes
from brainy.service.app import Brainy
from brainy.storage import open_store
from brainy.table.manifest import Manifest, Manifests

RESULTS = Path(__file__).resolve().parent / "results"
PYPI = Path("/work/shared/data/pypi-minilm.npz")
K = 10


def _app(url: str, cache: Path, role: str = "cli") -> Brainy:
    env = {
        "BRAINY_STORE": url,
        "BRAINY_ROLE": role,
        "BRAINY_CACHE_DIR": str(cache),
        "BRAINY_REFRESH_INTERVAL": "3600",
    }
    if role == "search":
        env["BRAINY_MODE"] = "read-only"
    return Brainy.from_env(role, env)


def _load(queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not PYPI.exists():
        raise SystemExit(f"needs {PYPI}")
    data = np.load(PYPI)
    base = data["base"].astype(np.float32)
    query = data["query"][:queries].astype(np.float32)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    truth = np.argsort(-(query @ unit.T), axis=1)[:, :K]
    return base, query, truth


def _ingest(app: Brainy, name: str, base: np.ndarray, batch: int = 10_000) -> None:
    for at in range(0, len(base), batch):
        records = [
            {"id": str(i), "vector": base[i].tolist()}
            for i in range(at, min(at + batch, len(base)))
        ]
        app.index_key(app.ingest({"collection": name, "records": records}).batch)


def _set_nprobe(url: str, name: str, nprobe: int | None) -> None:
    store = open_store(url)
    config = json.loads(store.get(CONFIG_KEY).data)
    config["collections"][name]["nprobe"] = nprobe
    store.put(CONFIG_KEY, json.dumps(config).encode())


def _probing(manifest: Manifest, schema: CollectionSchema, store) -> tuple[Centroids | None, int]:
    """The centroids (None: hash partitions) and the partitions a default search
    probes (all, for hash partitions), read once."""
    if manifest.centroids is None:
        return None, len({r.partition for r in manifest.segments if r.level > 0})
    refs = [r for r in manifest.segments if r.live > 0]
    centroids = read_centroids(store, manifest.centroids)
    return centroids, probes(schema, centroids, refs, DEFAULT_RECALL_TARGET)[0]


def _scanned(
    manifest: Manifest,
    schema: CollectionSchema,
    centroids: Centroids | None,
    nprobe: int,
    query: np.ndarray,
) -> tuple[int, int]:
    """(segments searched, rows they hold) for `query`: what `Searcher.search` picks."""
    refs = [r for r in manifest.segments if r.live > 0]
    if centroids is not None:
        probed = set(probed_partitions(centroids.matrix, query, schema.metric, nprobe).tolist())
        refs = [r for r in refs if r.level == 0 or r.partition in probed]
    return len(refs), sum(r.live for r in refs)


def _measure(url: str, name: str, cache: Path, queries: np.ndarray, truth: np.ndarray) -> dict:
    reader = _app(url, cache, "search")
    try:
        schema = reader.require_schema(name)
        store = reader.store
        sent = sum(store.requests.values())
        first = time.perf_counter()
        reader.search({"collection": name, "vector": queries[0].tolist(), "k": K})
        cold_ms = (time.perf_counter() - first) * 1000
        cold_requests = sum(store.requests.values()) - sent
        for q in queries:  # warm every segment a query may need
            reader.search({"collection": name, "vector": q.tolist(), "k": K})
        took, found = [], 0
        for q, best in zip(queries, truth, strict=True):
            began = time.perf_counter()
            hits = reader.search({"collection": name, "vector": q.tolist(), "k": K}).hits
            took.append(time.perf_counter() - began)
            found += len(set(best.tolist()) & {int(h.id) for h in hits})
        manifest = Manifests(store, name).latest()
        assert manifest is not None
        centroids, nprobe = _probing(manifest, schema, store)
        scans = [_scanned(manifest, schema, centroids, nprobe, q) for q in queries]
        total = manifest.live
        return {
            "nprobe": nprobe,
            "recall_at_10": round(found / (K * len(queries)), 4),
            "p50_ms": round(float(np.percentile(took, 50)) * 1000, 3),
            "p95_ms": round(float(np.percentile(took, 95)) * 1000, 3),
            "first_query_ms": round(cold_ms, 1),
            "first_query_requests": cold_requests,
            "segments_searched": round(float(np.mean([s for s, _ in scans])), 2),
            "rows_scanned_share": round(float(np.mean([r for _, r in scans])) / total, 4),
        }
    finally:
        reader.close()


def run(partitions: list[int], nprobes: list[int], queries: int, workdir: Path) -> list[dict]:
    base, query, truth = _load(queries)
    exact = []
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    for q in query:
        began = time.perf_counter()
        np.argpartition(-(unit @ q), K)[:K]
        exact.append(time.perf_counter() - began)
    rows: list[dict] = [
        {
            "strategy": "exact-numpy",
            "partitions": 0,
            "nprobe": 0,
            "recall_at_10": 1.0,
            "p50_ms": round(float(np.percentile(exact, 50)) * 1000, 3),
            "p95_ms": round(float(np.percentile(exact, 95)) * 1000, 3),
        }
    ]
    for count in partitions:
        # One partition is one segment whichever the strategy: today's default.
        for strategy in ("hash", "semantic") if count > 1 else ("hash",):
            name = f"{strategy}{count}"
            folder = workdir / name
            url = f"file://{folder / 'store'}"
            writer = _app(url, folder / "writer")
            writer.create_collection(
                CollectionSchema(
                    name, dimension=base.shape[1], partitions=count, strategy=strategy, seed=1
                )
            )
            _ingest(writer, name, base)
            began = time.perf_counter()
            report = compact(writer.maintenance, name, force=True)
            compaction_s = time.perf_counter() - began
            writer.close()
            assert report.status == "compacted", report
            default = CollectionSchema(name, dimension=1, partitions=count).probes(count)
            sweep = sorted({n for n in nprobes if n <= count} | {default})
            for nprobe in sweep if strategy == "semantic" else [None]:
                if strategy == "semantic":
                    _set_nprobe(url, name, nprobe)
                row = {
                    "strategy": strategy,
                    "partitions": count,
                    "default_nprobe": strategy == "semantic" and nprobe == default,
                    "compaction_s": round(compaction_s, 2),
                    **_measure(url, name, folder / f"reader-{nprobe}", query, truth),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def _table(rows: list[dict]) -> str:
    head = (
        "| strategy | partitions | nprobe | recall@10 | p50 ms | p95 ms | segments | rows scanned |"
    )
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        mark = " (default)" if r.get("default_nprobe") else ""
        lines.append(
            f"| {r['strategy']} | {r['partitions']} | {r['nprobe']}{mark} "
            f"| {r['recall_at_10']:.3f} "
            f"| {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r.get('segments_searched', '-')} "
            f"| {r.get('rows_scanned_share', 1.0):.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="brainy-bench-partitions-"))
    try:
        rows = run(args.partitions, args.nprobe, args.queries, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = {"data": str(PYPI), "k": K, "queries": args.queries, "rows": rows}
    (RESULTS / "partitions.json").write_text(json.dumps(out, indent=2) + "\n")
    print(_table(rows))
    print(f"\nfigures in {RESULTS / 'partitions.json'}")


if __name__ == "__main__":
    main()
