"""Indexing benchmark (issue 6 §2.8): time and peak memory of a cold indexer.

A collection of N vectors is set up with `bench.compaction`'s builders: N level-0
segments of `--segment-rows` (`--partitions 0`), or the same compacted into P
partitions (`--partitions P`). A write instance then ingests B batches of R
records each: ~30% re-upserts of ids in the collection, ~10% deletes of ids in
the collection, the rest new ids. A child process — a fresh `Brainy` of role
indexer on the same store, as a cold function instance would be — applies them
in order through `index_key` and reports:

* the first batch's time: cold, it loads the live index (every segment's header);
* the mean, p50 and max of the warm batches;
* `build_segment`'s throughput on the batches' segments (vectors/s);
* its peak resident memory (`VmHWM`, which starts afresh at exec), against the
  raw float32 bytes of one batch and of the collection's largest partition
  (issue 6: under 2× the largest partition being built), and its resident
  memory after the cold batch per id of the collection: the live index must
  know every id's newest copy, so that part grows with ids, not vector bytes.

Run: `python -m bench.indexing [--n N] [--partitions P ...] [--batches B] [--records R]`;
figures go to `bench/results/indexing.json` (one entry per label and configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

import bench.compaction as compaction
from bench.compaction import (
    COLLECTION,
    RESULTS,
    bench_env,
    build_level0,
    commit_level0,
    run_child,
    save_result,
    status_kb,
    table,
)
from brainy.service.app import Brainy
from brainy.table.manifest import SegmentRef


@dataclass(frozen=True)
class Config:
    n: int = 1_000_000
    dim: int = 384
    partitions: int = 0  # 0: level-0 segments as built; P: compacted into P partitions
    segment_rows: int = 10_000
    batches: int = 20
    records: int = 1_000
    reupserts: float = 0.3  # share of a batch's records that re-upsert an existing id
    deletes: float = 0.1  # share that delete an existing id
    n_trees: int = 16
    metric: str = "angular"
    data: str = "gaussian"  # gaussian | pypi
    seed: int = 7

    def collection(self) -> compaction.Config:
        """The collection's configuration in `bench.compaction`'s terms."""
        return compaction.Config(
            n=self.n,
            dim=self.dim,
            partitions=max(self.partitions, 1),
            segment_rows=self.segment_rows,
            n_trees=self.n_trees,
            metric=self.metric,
            data=self.data,
            seed=self.seed,
        )


def prepare(config: Config, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The collection's store, built once per configuration under `workdir` and
    kept: level-0 segments committed as one version, compacted if asked."""
    level0 = config.collection()
    pristine = workdir / level0.level0_name / "store"
    setup_file = workdir / level0.level0_name / "setup.json"
    if not setup_file.exists():
        shutil.rmtree(pristine.parent, ignore_errors=True)
        pristine.mkdir(parents=True)
        with tempfile.TemporaryDirectory(dir=workdir) as scratch:
            setup_file.write_text(json.dumps(build_level0(level0, pristine, Path(scratch))))
    prepared = workdir / f"{level0.level0_name}-indexing-p{config.partitions}"
    done = prepared / "setup.json"
    if not done.exists():
        shutil.rmtree(prepared, ignore_errors=True)
        setup = json.loads(setup_file.read_text())
        refs = [SegmentRef.from_dict(d) for d in setup.pop("refs")]
        store_dir = prepared / "store"
        # Segments and deletion files are immutable and every write makes a new
        # file, so a hard-linked copy is an independent collection.
        shutil.copytree(pristine, store_dir, copy_function=os.link)
        commit_level0(level0, store_dir, prepared / "cache", refs)
        if config.partitions:
            setup["compaction"] = run_child("compaction", str(store_dir), str(prepared))
        shutil.rmtree(prepared / "cache", ignore_errors=True)
        done.write_text(json.dumps(setup))
    return prepared / "store", json.loads(done.read_text())


def ingest_batches(config: Config, store_dir: Path, cache_dir: Path) -> list[dict[str, Any]]:
    """Write the batches through a write instance; their keys and record counts."""
    app = Brainy.from_env("ingest", bench_env(store_dir, cache_dir, "ingest"))
    rng = np.random.default_rng(config.seed + 1)
    existing = rng.permutation(config.n)  # re-upserted and deleted ids, none twice
    taken = 0
    fresh = config.n
    out = []
    for _ in range(config.batches):
        n_old = round(config.records * config.reupserts)
        n_del = round(config.records * config.deletes)
        n_new = config.records - n_old - n_del
        old = existing[taken : taken + n_old + n_del]
        taken += old.size
        ids = [f"v{i:07d}" for i in old[:n_old]] + [
            f"v{i:07d}" for i in range(fresh, fresh + n_new)
        ]
        fresh += n_new
        vectors = rng.standard_normal((len(ids), config.dim), dtype=np.float32).tolist()
        records = [
            {"id": rid, "vector": vec, "metadata": {"n": j}}
            for j, (rid, vec) in enumerate(zip(ids, vectors, strict=True))
        ]
        deletes = [f"v{i:07d}" for i in old[n_old:]]
        outcome = app.ingest({"collection": COLLECTION, "records": records, "deletes": deletes})
        out.append({"key": outcome.batch, "upserts": outcome.accepted, "deletes": outcome.deleted})
    return out


def child(store_dir: Path, cache_dir: Path, keys_file: Path) -> None:
    """Runs in the child process: a cold indexer applies the batches in order."""
    import brainy.write.indexer as indexer_module

    build = indexer_module.build_collection_segment
    built = {"seconds": 0.0, "vectors": 0}

    def timed_build(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = build(*args, **kwargs)
        built["seconds"] += time.perf_counter() - began
        built["vectors"] += result.count
        return result

    indexer_module.build_collection_segment = timed_build
    keys = json.loads(keys_file.read_text())
    rss_start = status_kb("VmRSS")
    app = Brainy.from_env("indexer", bench_env(store_dir, cache_dir, "indexer"))
    seconds, rss, statuses = [], [], []
    for key in keys:
        began = time.perf_counter()
        result = app.index_key(key)
        seconds.append(time.perf_counter() - began)
        rss.append(status_kb("VmRSS"))
        statuses.append(result.status)
        if len(seconds) == 1:
            hwm_cold = status_kb("VmHWM")
    live = len(app.indexer.live_index(COLLECTION)._newest)
    print(
        json.dumps(
            {
                "statuses": sorted(set(statuses)),
                "seconds": [round(s, 4) for s in seconds],
                "rss_start_kb": rss_start,
                "rss_kb": rss,
                "vm_hwm_cold_kb": hwm_cold,
                "vm_hwm_kb": status_kb("VmHWM"),
                "live_ids": live,
                "build_seconds": round(built["seconds"], 3),
                "build_vectors": built["vectors"],
            }
        )
    )


def _run_child(store_dir: Path, tmp: Path, keys: list[str]) -> dict[str, Any]:
    keys_file = tmp / "keys.json"
    keys_file.write_text(json.dumps(keys))
    return run_child("indexing", str(store_dir), str(tmp))


def run(config: Config, workdir: Path, label: str) -> dict[str, Any]:
    prepared, setup = prepare(config, workdir)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store_dir = Path(tmp) / "store"
        shutil.copytree(prepared, store_dir, copy_function=os.link)
        batches = ingest_batches(config, store_dir, Path(tmp) / "cache-ingest")
        figures = _run_child(store_dir, Path(tmp), [b["key"] for b in batches])
        check = Brainy.from_env("cli", bench_env(store_dir, Path(tmp) / "cache-check", "cli"))
        manifest = check.manifests(COLLECTION).latest()
        assert manifest is not None
        largest = max((ref.count for ref in manifest.segments), default=0)
    seconds = figures["seconds"]
    warm = np.asarray(seconds[1:] or [0.0])
    upserts = max(b["upserts"] for b in batches)
    peak = figures["vm_hwm_kb"] * 1024
    batch_raw = upserts * config.dim * 4
    largest_raw = largest * config.dim * 4
    cold_growth = (figures["rss_kb"][0] - figures["rss_start_kb"]) * 1024
    return {
        "label": label,
        "config": asdict(config),
        "collection_segments": setup.get("segments"),
        "statuses": figures["statuses"],
        "batch_seconds": seconds,
        "cold_seconds": seconds[0],
        "warm_mean_seconds": round(float(warm.mean()), 4),
        "warm_p50_seconds": round(float(np.median(warm)), 4),
        "warm_max_seconds": round(float(warm.max()), 4),
        "build_vectors_per_s": round(figures["build_vectors"] / figures["build_seconds"])
        if figures["build_seconds"]
        else 0,
        "rss_start_bytes": figures["rss_start_kb"] * 1024,
        "rss_after_cold_bytes": figures["rss_kb"][0] * 1024,
        "rss_end_bytes": figures["rss_kb"][-1] * 1024,
        "peak_cold_bytes": figures["vm_hwm_cold_kb"] * 1024,
        "peak_rss_bytes": peak,
        "live_ids": figures["live_ids"],
        "bytes_per_id": round(cold_growth / figures["live_ids"]) if figures["live_ids"] else 0,
        "batch_raw_bytes": batch_raw,
        "peak_over_batch": round(peak / batch_raw, 1) if batch_raw else None,
        "largest_partition_rows": largest,
        "largest_partition_raw_bytes": largest_raw,
        "peak_over_largest": round(peak / largest_raw, 3) if largest_raw else None,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


_MB = 2**20
_COLUMNS = (  # heading, width, the figure of one run
    ("label", 10, lambda r: r["label"]),
    ("n", 9, lambda r: r["config"]["n"]),
    ("P", 3, lambda r: r["config"]["partitions"]),
    ("cold s", 7, lambda r: r["cold_seconds"]),
    ("warm mean", 9, lambda r: r["warm_mean_seconds"]),
    ("p50", 6, lambda r: r["warm_p50_seconds"]),
    ("max", 6, lambda r: r["warm_max_seconds"]),
    ("build vec/s", 11, lambda r: r["build_vectors_per_s"]),
    ("start MB", 8, lambda r: round(r["rss_start_bytes"] / _MB)),
    ("cold MB", 7, lambda r: round(r["rss_after_cold_bytes"] / _MB)),
    ("peak MB", 7, lambda r: round(r["peak_rss_bytes"] / _MB)),
    ("B/id", 5, lambda r: r["bytes_per_id"]),
    ("batch MB", 8, lambda r: round(r["batch_raw_bytes"] / _MB, 1)),
    ("largest MB", 10, lambda r: round(r["largest_partition_raw_bytes"] / _MB)),
    ("peak/largest", 12, lambda r: r["peak_over_largest"]),
)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        tmp = Path(argv[2])
        child(Path(argv[1]), tmp / "cache", tmp / "keys.json")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--n", type=int, default=defaults.n, help="vectors in the collection")
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument(
        "--partitions",
        type=int,
        nargs="+",
        default=[0, 8],
        help="0: level-0 segments; P: compacted into P partitions (one run each)",
    )
    parser.add_argument("--segment-rows", type=int, default=defaults.segment_rows)
    parser.add_argument("--batches", type=int, default=defaults.batches)
    parser.add_argument("--records", type=int, default=defaults.records)
    parser.add_argument("--reupserts", type=float, default=defaults.reupserts)
    parser.add_argument("--deletes", type=float, default=defaults.deletes)
    parser.add_argument("--n-trees", type=int, default=defaults.n_trees)
    parser.add_argument("--metric", default=defaults.metric)
    parser.add_argument("--data", choices=("gaussian", "pypi"), default=defaults.data)
    parser.add_argument("--label", default="current", help="name of this run in the results")
    parser.add_argument(
        "--workdir",
        type=Path,
        # Shared with bench.compaction: the level-0 collection is built once for both.
        default=Path(tempfile.gettempdir()) / "brainy-bench-compaction",
        help="where collections are kept between runs",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    given = {f.name: getattr(args, f.name) for f in fields(Config)}
    for partitions in args.partitions:
        result = run(Config(**{**given, "partitions": partitions}), args.workdir, args.label)
        runs = save_result("indexing", result)
        print(table(_COLUMNS, [result]), flush=True)
    print(f"\nall runs in {RESULTS / 'indexing.json'}:\n{table(_COLUMNS, runs)}")


if __name__ == "__main__":
    main()
