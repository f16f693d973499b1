"""`make bench`: Brainy beside exact search, Annoy and LanceDB, in one run (issue 7 §6).

On the real MiniLM vectors and on two generated sets (`bench/datasets.py`), every
system of `bench/systems.py` is built (timed, bytes on disk) and searched at several
settings: recall@10 against exact search, p50 and p95 latency. Then, on Brainy: QPS
with 1 and 2 client threads in-process at its default setting and the store
requests of a warm query; the cold first query of a fresh instance with an empty
cache on a local folder and on a moto S3 server (`bench/coldstart.py`); ingest →
searchable latency through the functions (`bench/functions.py`); and, when present
in this checkout, `bench/http.py` (HTTP clients against the search function) and
`bench/ingest.py` (ingest and index throughput).

Writes `bench/results/bench.json` (everything, with the machine and the git commit),
`bench/results/recall_latency.png` and `bench/results/summary.md`, and prints the
summary with the time each stage took. A stage that fails is recorded with its error
and the run goes on; the exit status is then 1.

Run: `python -m bench.run [--quick] [--rows 1000000] [--queries N]
[--datasets real gaussian mixture]
[--systems ...] [--skip qps cold functions http ingest] [--workdir DIR]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import coldstart, datasets, report
from bench import functions as fn_bench
from bench.systems import (
    COLLECTION,
    Annoy,
    BrainySystem,
    Exact,
    Lance,
    Search,
    System,
    lancedb_available,
    measure,
)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("brainy", "exact-numpy", "annoy", "lancedb-ivf-pq", "lancedb-ivf-hnsw-sq")
# Warm queries whose store requests are counted.
REQUEST_QUERIES = 50
EXTRA_STAGES = ("qps", "cold", "functions", "http", "ingest")


@dataclass(frozen=True)
class Plan:
    """How big each stage is: full size by default, `--quick` for ~2 minutes."""

    rows: int = 1_000_000
    real_queries: int = 500
    generated_queries: int = 200
    qps_seconds: float = 5.0
    http_rows: int = 30_000
    http_seconds: float = 10.0
    ingest_rows: int = 100_000
    functions_rows: int = 10_000
    functions_trials: int = 20

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            rows=20_000,
            real_queries=100,
            generated_queries=50,
            qps_seconds=1.0,
            http_rows=5_000,
            http_seconds=2.0,
            ingest_rows=10_000,
            functions_rows=2_000,
            functions_trials=5,
        )


class Stages:
    """Wall time of each named stage; a failing stage is recorded, not raised."""

    def __init__(self, checkpoint: Callable[[], None]) -> None:
        self.seconds: dict[str, float] = {}
        self.failed: list[str] = []
        self.checkpoint = checkpoint

    @contextmanager
    def __call__(self, name: str, into: dict[str, Any], key: str) -> Iterator[None]:
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        try:
            yield
        except Exception as e:  # a bench records what broke and measures the rest
            traceback.print_exc()
            into[key] = {"error": f"{type(e).__name__}: {e}"}
            self.failed.append(name)
        finally:
            self.seconds[name] = round(time.perf_counter() - began, 1)
            print(f"   {name}: {self.seconds[name]:.1f} s", flush=True)
            self.checkpoint()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "load_before": round(os.getloadavg()[0], 2),
    }


def git() -> dict[str, Any]:
    def out(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": out("rev-parse", "HEAD"), "dirty": bool(out("status", "--porcelain"))}


def load_datasets(names: list[str], source: Path | None, plan: Plan, workdir: Path) -> dict:
    """The data sets asked for; without the real file, none (each generated set needs it
    as its source), said so in the output."""
    if source is None:
        return {name: f"skipped: {datasets.SOURCE_CANDIDATES[0]} not found" for name in names}
    out: dict[str, Any] = {}
    for name in names:
        if name == "real":
            data = datasets.real(source)
            out[name] = datasets.Dataset(
                name, data.base, data.queries[: plan.real_queries], data.truth
            )
        else:
            data = datasets.generated(name, source, plan.rows, workdir)
            out[name] = datasets.Dataset(
                name, data.base, data.queries[: plan.generated_queries], data.truth
            )
    return out


def _pow2(x: float, low: int, high: int) -> int:
    return int(min(high, max(low, 2 ** round(np.log2(max(x, 1))))))


def systems_for(names: list[str], rows: int) -> list[System]:
    """Each system with settings scaled to the data set's size."""
    ks = {max(1_000, rows // d) for d in (50, 12, 5)} | ({rows // 2} if rows < 200_000 else set())
    pq = _pow2(rows / 1_000, 16, 1024)
    hnsw = _pow2(rows / 4_000, 4, 256)
    made: dict[str, Callable[[], System]] = {
        "brainy": lambda: BrainySystem(nprobes=(2, 4, 8, 16, 64)),
        "exact-numpy": Exact,
        "annoy": lambda: Annoy(tuple(sorted(ks))),
        "lancedb-ivf-pq": lambda: Lance(
            "ivf-pq",
            pq,
            [{"nprobes": max(1, pq // 64)}]
            + [
                {"nprobes": max(low, pq // d), "refine_factor": 10}
                for low, d in ((1, 64), (2, 16), (4, 8), (8, 4))
            ],
        ),
        "lancedb-ivf-hnsw-sq": lambda: Lance(
            "ivf-hnsw-sq",
            hnsw,
            [
                {"nprobes": max(low, hnsw // d), "ef": ef}
                for low, d, ef in ((1, 16, 40), (2, 8, 80), (4, 4, 160), (8, 2, 200))
            ],
        ),
    }
    return [made[name]() for name in names]


def run_system(system: System, data: datasets.Dataset, workdir: Path) -> dict[str, Any]:
    built = system.build(data, workdir / "systems" / data.name / system.name)
    print(f"   built in {built.seconds:.1f} s, {built.bytes / 1e6:,.0f} MB", flush=True)
    queries = system.queries(data.queries)
    points = []
    for setting in system.settings():
        point = {"setting": setting, **measure(system.search(setting), queries, data, system.warm)}
        print(f"   {json.dumps(point)}", flush=True)
        points.append(point)
    return {"build": asdict(built), "points": points}


def qps(search: Search, queries: list[Any], threads: int, seconds: float) -> dict[str, Any]:
    """Queries per second with `threads` clients each searching back to back."""
    took: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.perf_counter() + seconds

    def client(mine: list[float], offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            search(queries[i % len(queries)])
            mine.append(time.perf_counter() - began)
            i += 1

    workers = [threading.Thread(target=client, args=(took[t], t * 7)) for t in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    flat = [t for mine in took for t in mine]
    return {
        "threads": threads,
        "qps": round(len(flat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(flat, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(flat, 99)) * 1000, 3),
    }


def brainy_extras(system: BrainySystem, data: datasets.Dataset, plan: Plan) -> dict[str, Any]:
    """QPS at 1 and 2 threads and the store requests of a warm query, at the default
    setting (recall_target 0.95, default nprobe)."""
    search = system.search({"recall_target": 0.95, "nprobe": None})
    queries = system.queries(data.queries)[:REQUEST_QUERIES]
    assert system.reader is not None
    before = Counter(system.reader.store.requests)
    for query in queries:  # warm: the default setting's points ran last, on this instance
        search(query)
    sent = Counter(system.reader.store.requests) - before
    return {
        "qps": [qps(search, queries, threads, plan.qps_seconds) for threads in (1, 2)],
        "warm_query_store_requests": {k: v / len(queries) for k, v in sent.items()},
    }


def optional(module: str, call: Callable[[Any], dict]) -> dict[str, Any]:
    """Run another helper's bench when it is in this checkout."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return {"skipped": f"{module} not in this checkout"}
    return call(loaded)


def cold(system: BrainySystem, data: datasets.Dataset, work: Path) -> dict[str, Any]:
    """A fresh instance's first query, empty cache, on the local folder and on moto S3."""
    queries = np.asarray(data.queries[:2], dtype=np.float32)
    try:
        out = {"file": coldstart.measure(system.url, work / "file", queries, COLLECTION)}
        with fn_bench.moto_bucket(work / "logs") as (s3_url, _):
            began = time.perf_counter()
            coldstart.copy_store(system.url, s3_url, batches=False)
            out["copy_to_s3_s"] = round(time.perf_counter() - began, 1)
            out["s3_moto"] = coldstart.measure(s3_url, work / "s3", queries, COLLECTION)
    finally:  # the readers' caches: a collection each (16 GB on 1M rows)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: about 2 minutes")
    parser.add_argument("--rows", type=int, help="rows of each generated set (default 1M)")
    parser.add_argument("--queries", type=int, help="at most this many queries per set")
    parser.add_argument("--datasets", nargs="+", default=["real", "gaussian", "mixture"])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--skip", nargs="*", default=[], choices=EXTRA_STAGES)
    parser.add_argument("--data", type=Path, default=datasets.default_source())
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "brainy-bench"
    )
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    if args.rows:
        plan = replace(plan, rows=args.rows)
    if args.queries:
        plan = replace(
            plan,
            real_queries=min(plan.real_queries, args.queries),
            generated_queries=min(plan.generated_queries, args.queries),
        )
    names = list(args.systems)
    if not lancedb_available():
        print("LanceDB is not installed (pip install -e '.[bench]'): its systems are skipped")
    began = time.perf_counter()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git(),
        "plan": asdict(plan),
        "args": {k: str(v) for k, v in vars(args).items()},
        "datasets": {},
        "systems": {},
    }
    stages = Stages(lambda: checkpoint(results, stages.seconds))
    with stages("datasets", results, "datasets"):
        loaded = load_datasets(args.datasets, args.data, plan, args.workdir)
    extra_stages(loaded, plan, args, stages, results)
    for name, data in loaded.items():
        if isinstance(data, str):
            print(f"{name}: {data}")
            results["datasets"][name] = {"skipped": data}
            continue
        results["datasets"][name] = {
            "rows": len(data.base),
            "queries": len(data.queries),
            "dimension": data.dimension,
        }
        per = results["systems"].setdefault(name, {})
        for system in systems_for(names, len(data.base)):
            if system.name.startswith("lancedb") and not lancedb_available():
                per[system.name] = {"skipped": "lancedb not installed (the bench extra)"}
                continue
            with stages(f"{name} / {system.name}", per, system.name):
                try:
                    per[system.name] = run_system(system, data, args.workdir)
                    if isinstance(system, BrainySystem):
                        brainy_stages(system, data, plan, args, stages, results)
                finally:
                    system.close()
    store_requests(results)
    results["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    results["stages"] = stages.seconds
    results["total_s"] = round(time.perf_counter() - began, 1)
    write(results)
    return 1 if stages.failed else 0


def brainy_stages(
    system: BrainySystem,
    data: datasets.Dataset,
    plan: Plan,
    args: argparse.Namespace,
    stages: Stages,
    results: dict[str, Any],
) -> None:
    """What is measured on Brainy's collection of a data set while it is built."""
    if "qps" not in args.skip:
        into = results.setdefault("qps", {})
        with stages(f"{data.name} / brainy qps", into, data.name):
            into[data.name] = brainy_extras(system, data, plan)
    if "cold" not in args.skip:
        into = results.setdefault("coldstart", {})
        with stages(f"{data.name} / brainy cold", into, data.name):
            into[data.name] = cold(system, data, args.workdir / "cold" / data.name)


def extra_stages(
    loaded: dict[str, Any],
    plan: Plan,
    args: argparse.Namespace,
    stages: Stages,
    results: dict[str, Any],
) -> None:
    """The stages through the functions and the other helpers' benches."""
    real = loaded.get("real")
    base = real.base if isinstance(real, datasets.Dataset) else None
    if "functions" not in args.skip and base is not None:
        with stages("functions: ingest -> searchable", results, "functions"):
            results["functions"] = fn_bench.run(
                base[: plan.functions_rows], plan.functions_trials, args.workdir / "functions"
            )
    if "http" not in args.skip:
        with stages("http", results, "http"):
            results["http"] = optional(
                "bench.http", lambda m: m.run(plan.http_rows, [1, 16], plan.http_seconds)
            )
    if "ingest" not in args.skip:
        with stages("ingest", results, "ingest"):
            results["ingest"] = {
                store: optional("bench.ingest", lambda m, s=store: m.run(plan.ingest_rows, s))
                for store in ("file", "s3")
            }


def store_requests(results: dict[str, Any]) -> None:
    """Store requests per operation, gathered from the stages that measured them."""
    out: dict[str, Any] = {}
    for name, extras in results.get("qps", {}).items():
        if "warm_query_store_requests" in extras:
            out[f"warm query ({name})"] = extras["warm_query_store_requests"]
    for name, measured in results.get("coldstart", {}).items():
        for store in ("file", "s3_moto"):
            if store in measured:
                out[f"cold query ({name}, {store})"] = measured[store]["first_query"]["requests"]
    functions = results.get("functions", {})
    for op in ("ingest", "index"):
        if f"store_requests_per_{op}" in functions:
            out[f"{op} (one record, through the function)"] = functions[f"store_requests_per_{op}"]
    results["store_requests"] = out


def checkpoint(results: dict[str, Any], seconds: dict[str, float]) -> None:
    """bench.json as far as the run got, so an interrupted run leaves its figures."""
    RESULTS.mkdir(exist_ok=True)
    partial = {**results, "stages": seconds, "partial": True}
    (RESULTS / "bench.json").write_text(json.dumps(partial, indent=2, default=str) + "\n")


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plotted = report.plot(results, RESULTS / "recall_latency.png")
    text = report.summary(results)
    (RESULTS / "summary.md").write_text(text)
    print(text)
    print(f"figures in {RESULTS / 'bench.json'}, {RESULTS / 'summary.md'}", end="")
    print(f", {RESULTS / 'recall_latency.png'}" if plotted else " (no plot: matplotlib missing)")


if __name__ == "__main__":
    raise SystemExit(main())
