"""Compaction benchmark (issue 6 §2.8): time and peak memory of compacting a collection.

A collection of N vectors is written as level-0 segments (built with
`build_segment`, uploaded, a share of their rows masked through deletion files,
committed in one manifest version) on a local-folder store. Then a child process
runs `compact(ctx, collection, force=True)` — merge every level-0 segment into
the collection's partitions — and reports its wall time and peak resident memory:
its own `VmHWM`, which starts afresh at exec (a child's `ru_maxrss` would carry
the parent's size from before the exec). The figure that matters is the peak
against the raw float32 bytes of the largest partition built (issue 6: under 2×).

Data: standard normal float32 vectors (seeded; `--data pypi` tiles the 30,000
real MiniLM embeddings of /work/shared/data/pypi-minilm.npz instead), ids
`v0000000`..., one small metadata dict per row (`{"n": i}`), one writer.

The level-0 collection is built once per configuration under `--workdir` and
reused (hard-linked into a fresh copy for each run), so runs before and after a
change compact the same data. Also reported: `build_segment` throughput, on one
segment of 100,000 vectors every run (and over the level-0 builds, once).

Run: `python -m bench.compaction [--n N] [--dim D] [--partitions P ...]
[--strategy hash|semantic] [--label L]`;
figures go to `bench/results/compaction.json` (one entry per label and configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core.config import CollectionSchema
from brainy.format.segment import SegmentRows, build_segment, upload_segment
from brainy.service.app import Brainy
from brainy.table.manifest import SegmentRef

RESULTS = Path(__file__).resolve().parent / "results"
COLLECTION = "bench"
PYPI = Path("/work/shared/data/pypi-minilm.npz")


@dataclass(frozen=True)
class Config:
    n: int = 1_000_000
    dim: int = 384
    partitions: int = 1
    strategy: str = "hash"  # hash | semantic (the first compaction trains centroids)
    segment_rows: int = 10_000
    masked: float = 0.01  # share of level-0 rows masked (superseded) before compaction
    n_trees: int = 16
    metric: str = "angular"
    data: str = "gaussian"  # gaussian | pypi
    seed: int = 7

    @property
    def level0_name(self) -> str:
        """Names the level-0 data (the same for every partition count)."""
        return (
            f"n{self.n}-d{self.dim}-s{self.segment_rows}-m{self.masked}"
            f"-t{self.n_trees}-{self.metric}-{self.data}-{self.seed}"
        )


def bench_env(store_dir: Path, cache_dir: Path, role: str) -> dict[str, str]:
    """The environment of a benchmark instance on the local folder `store_dir`."""
    return {
        "BRAINY_STORE": f"file://{store_dir}",
        "BRAINY_ROLE": role,
        "BRAINY_CACHE_DIR": str(cache_dir),
        "BRAINY_REFRESH_INTERVAL": "0",
        # Keep every tombstone and batch: the benchmarks measure merges and commits alone.
        "BRAINY_TOMBSTONE_GRACE": "1d",
    }


def _app(store_dir: Path, cache_dir: Path) -> Brainy:
    return Brainy.from_env("compactor", bench_env(store_dir, cache_dir, "compactor"))


def _vectors(config: Config, start: int, count: int) -> np.ndarray:
    if config.data == "pypi":
        base = np.load(PYPI)["base"].astype(np.float32)
        if base.shape[1] != config.dim:
            raise SystemExit(f"--data pypi holds {base.shape[1]}-d vectors, not --dim {config.dim}")
        rows = np.arange(start, start + count) % len(base)
        # Tiled copies are nudged apart: identical vectors would make a degenerate index.
        rng = np.random.default_rng(config.seed + start)
        return base[rows] + rng.normal(0, 1e-3, (count, base.shape[1])).astype(np.float32)
    rng = np.random.default_rng(config.seed + start)
    return rng.standard_normal((count, config.dim), dtype=np.float32)


def _schema(config: Config) -> CollectionSchema:
    return CollectionSchema(
        COLLECTION,
        dimension=config.dim,
        metric=config.metric,
        partitions=config.partitions,
        strategy=config.strategy,
        seed=config.seed,
        n_trees=config.n_trees,
    )


def build_level0(config: Config, store_dir: Path, scratch: Path) -> dict[str, Any]:
    """Write the level-0 segments (and deletion files) of the collection, committed
    nowhere yet; returns their refs and what building them took."""
    app = _app(store_dir, scratch / "cache")
    schema = _schema(config)
    masks = app.maintenance.masks
    rng = np.random.default_rng(config.seed)
    refs: list[SegmentRef] = []
    build_seconds = 0.0
    ts0 = 1_700_000_000_000_000
    for start in range(0, config.n, config.segment_rows):
        count = min(config.segment_rows, config.n - start)
        rows = SegmentRows(
            ids=[f"v{i:07d}" for i in range(start, start + count)],
            timestamps=np.arange(ts0 + start, ts0 + start + count, dtype=np.int64),
            writers=["bench"] * count,
            metadata=[{"n": i} for i in range(start, start + count)],
            vectors=_vectors(config, start, count),
        )
        began = time.perf_counter()
        built = build_segment(
            rows,
            metric=schema.metric,
            n_trees=schema.n_trees,
            seed=schema.seed,
            workdir=scratch / "build",
        )
        build_seconds += time.perf_counter() - began
        ref = SegmentRef.uploaded(built, upload_segment(app.store, COLLECTION, built))
        built.path.unlink()
        masked = np.flatnonzero(rng.random(count) < config.masked)
        if masked.size:
            ref = masks.mask(COLLECTION, ref, masked)
        refs.append(ref)
    return {
        "segments": len(refs),
        "rows": config.n,
        "masked": sum(r.masked for r in refs),
        "build_seconds": round(build_seconds, 2),
        "build_vectors_per_s": round(config.n / build_seconds),
        "refs": [ref.to_dict() for ref in refs],
    }


def commit_level0(config: Config, store_dir: Path, cache_dir: Path, refs: list[SegmentRef]) -> None:
    """Declare the collection with the run's partition count and commit the level-0
    segments in one version."""
    app = _app(store_dir, cache_dir)
    schema = _schema(config)
    app.create_collection(schema)
    app.manifests(COLLECTION).commit(
        lambda parent: replace(parent, segments=(*parent.segments, *refs)),
        schema=schema.frozen(),
        committed_by=app.writer_id,
    )


def build_throughput(config: Config, scratch: Path, rows: int = 100_000) -> dict[str, Any]:
    """`build_segment` of one segment of `rows` vectors (ids, metadata and all), timed."""
    rows = min(rows, config.n)
    segment = SegmentRows(
        ids=[f"v{i:07d}" for i in range(rows)],
        timestamps=np.arange(rows, dtype=np.int64),
        writers=["bench"] * rows,
        metadata=[{"n": i} for i in range(rows)],
        vectors=_vectors(config, 0, rows),
    )
    began = time.perf_counter()
    built = build_segment(
        segment, metric=config.metric, n_trees=config.n_trees, seed=config.seed, workdir=scratch
    )
    seconds = time.perf_counter() - began
    built.path.unlink()
    return {"rows": rows, "seconds": round(seconds, 2), "vectors_per_s": round(rows / seconds)}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(store_dir: Path, cache_dir: Path) -> None:
    """Runs in the child process: one forced compaction; prints its figures as JSON."""
    from brainy.maintenance.compaction import compact

    app = _app(store_dir, cache_dir)
    ctx = app.maintenance
    rss_before = status_kb("VmRSS")
    began = time.perf_counter()
    report = compact(ctx, COLLECTION, force=True)
    seconds = time.perf_counter() - began
    print(
        json.dumps(
            {
                "status": report.status,
                "seconds": round(seconds, 2),
                "rows_in": report.rows_in,
                "rows_out": report.rows_out,
                "outputs": report.outputs,
                "rss_before_kb": rss_before,
                "vm_hwm_kb": status_kb("VmHWM"),
            }
        )
    )


def run_child(module: str, *args: str) -> dict[str, Any]:
    """`python -m bench.<module> --child ARGS` in a process of its own (its peak
    memory is then its own); the JSON figures it prints last."""
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--child", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{module} child failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(config: Config, workdir: Path, label: str) -> dict[str, Any]:
    pristine = workdir / config.level0_name / "store"
    setup_file = workdir / config.level0_name / "setup.json"
    if not setup_file.exists():
        shutil.rmtree(pristine.parent, ignore_errors=True)
        pristine.mkdir(parents=True)
        with tempfile.TemporaryDirectory(dir=workdir) as scratch:
            setup = build_level0(config, pristine, Path(scratch))
        setup_file.write_text(json.dumps(setup))
        print(
            f"built {setup['segments']} level-0 segments of {config.n} rows: "
            f"{setup['build_vectors_per_s']:,} vectors/s through build_segment",
            flush=True,
        )
    setup = json.loads(setup_file.read_text())
    refs = [SegmentRef.from_dict(d) for d in setup.pop("refs")]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        build = build_throughput(config, Path(tmp))
        # Segments and deletion files are immutable and every write makes a new
        # file, so a hard-linked copy is a fresh, independent pre-compaction state.
        store_dir = Path(tmp) / "store"
        shutil.copytree(pristine, store_dir, copy_function=os.link)
        commit_level0(config, store_dir, Path(tmp) / "cache-setup", refs)
        figures = run_child("compaction", str(store_dir), str(tmp))
        manifest = _app(store_dir, Path(tmp) / "cache-check").manifests(COLLECTION).latest()
        assert manifest is not None
        largest = max((ref.count for ref in manifest.segments), default=0)
    raw = largest * config.dim * 4
    peak = figures["vm_hwm_kb"] * 1024
    return {
        "label": label,
        "config": asdict(config),
        "setup": setup,
        "build_segment": build,
        **figures,
        "largest_partition_rows": largest,
        "largest_partition_raw_bytes": raw,
        "peak_rss_bytes": peak,
        "peak_over_raw": round(peak / raw, 3) if raw else None,
        "rows_per_s": round(figures["rows_out"] / figures["seconds"]) if figures["seconds"] else 0,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def save_result(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Add `result` to bench/results/<name>.json, replacing a run with the same label
    and configuration; every run kept."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    key = (result["label"], json.dumps(result["config"], sort_keys=True))
    runs = [r for r in runs if (r["label"], json.dumps(r["config"], sort_keys=True)) != key]
    runs.append(result)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    return runs


_COLUMNS = (  # heading, width, the figure of one run
    ("label", 10, lambda r: r["label"]),
    ("n", 9, lambda r: r["config"]["n"]),
    ("dim", 4, lambda r: r["config"]["dim"]),
    ("P", 4, lambda r: r["config"]["partitions"]),
    ("strategy", 8, lambda r: r["config"].get("strategy", "hash")),
    ("build vec/s", 11, lambda r: r.get("build_segment", {}).get("vectors_per_s", "")),
    ("seconds", 8, lambda r: r["seconds"]),
    ("rows/s", 8, lambda r: r["rows_per_s"]),
    ("start MB", 8, lambda r: round(r["rss_before_kb"] / 1024)),
    ("peak RSS MB", 11, lambda r: round(r["peak_rss_bytes"] / 2**20)),
    ("largest part MB", 15, lambda r: round(r["largest_partition_raw_bytes"] / 2**20)),
    ("peak/raw", 8, lambda r: r["peak_over_raw"]),
)


Columns = tuple[tuple[str, int, Callable[[dict[str, Any]], Any]], ...]


def table(columns: Columns, runs: list[dict[str, Any]]) -> str:
    """Runs as a text table: one (heading, width, figure of a run) per column."""
    head = " ".join(f"{name:>{width}}" for name, width, _ in columns)
    rows = [" ".join(f"{get(r)!s:>{width}}" for _, width, get in columns) for r in runs]
    return "\n".join([head, "-" * len(head), *rows])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), Path(argv[2]) / "cache")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--n", type=int, default=defaults.n, help="vectors in the collection")
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument(
        "--partitions",
        type=int,
        nargs="+",
        default=[1, 8],
        help="partition counts to run (one compaction each)",
    )
    parser.add_argument("--strategy", choices=("hash", "semantic"), default=defaults.strategy)
    parser.add_argument("--segment-rows", type=int, default=defaults.segment_rows)
    parser.add_argument("--masked", type=float, default=defaults.masked)
    parser.add_argument("--n-trees", type=int, default=defaults.n_trees)
    parser.add_argument("--metric", default=defaults.metric)
    parser.add_argument("--data", choices=("gaussian", "pypi"), default=defaults.data)
    parser.add_argument("--label", default="current", help="name of this run in the results")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "brainy-bench-compaction",
        help="where level-0 collections are kept between runs",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    given = {f.name: getattr(args, f.name) for f in fields(Config)}
    for partitions in args.partitions:
        config = Config(**{**given, "partitions": partitions})
        result = run(config, args.workdir, args.label)
        runs = save_result("compaction", result)
        print(table(_COLUMNS, [result]), flush=True)
    print(f"\nall runs in {RESULTS / 'compaction.json'}:\n{table(_COLUMNS, runs)}")


if __name__ == "__main__":
    main()
