"""Ingest benchmark (issue 7 §4): `brainy ingest X.npy` throughput.

A `--rows` × 384 float32 matrix (standard normal, seeded) is written to a .npy
file, then, on a local folder store and on a moto S3 server (started on a free
loopback port and stopped after; `--no-s3` skips it), each in a fresh
collection (angular, one hash partition, the default 16 trees):

* `ingest`: `brainy ingest X.npy --no-index` through the command line's own
  function (`brainy.entry.cli.main`, in-process): the whole file checked, then
  written as durable batches of the default batch size; vectors/s over the whole
  command (the check pass included);
* `index`: a fresh indexer instance (`Brainy` of role indexer) applying every
  batch the ingest wrote, in order, through `index_key`, as the indexer function
  does for each batch-created event: vectors/s;
* `end_to_end`: `brainy ingest X.npy` (indexing each batch as it is written) into
  another fresh collection: vectors/s.

Also `build_segment` on `--build-rows` vectors (default 100,000): vectors/s with
one thread and with the default (a thread a core), which is what index builds
gain from every core.

`run(rows, store)` measures one store ("file", "s3", or a store URL) and returns
its figures; `bench/run.py` calls it. Run: `python -m bench.ingest [--rows N]
[--quick] [--no-s3]`; figures go to `bench/results/ingest.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from brainy.entry.cli import DEFAULT_BATCH_SIZE
from brainy.entry.cli import main as cli
from brainy.entry.processes import environ
from brainy.format.segment import SegmentRows, build_segment
from brainy.service.app import Brainy

RESULTS = Path(__file__).resolve().parent / "results"
TESTS = Path(__file__).resolve().parents[1] / "tests"
DIM = 384
DEFAULT_ROWS = 200_000
QUICK_ROWS = 20_000


def _matrix(path: Path, rows: int, dim: int = DIM, seed: int = 7) -> Path:
    """A seeded standard-normal float32 .npy file, written in pieces."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for at in range(0, rows, 50_000):
        out[at : at + 50_000] = rng.standard_normal((min(50_000, rows - at), dim), np.float32)
    out.flush()
    del out
    return path


class _Timer:
    """Wall and CPU seconds (every thread of the process) of a block: on a shared
    machine the CPU time says how much of the wall time was this work's."""

    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def rate(self, rows: int) -> dict[str, float]:
        return {
            "seconds": round(self.wall, 3),
            "cpu_seconds": round(self.cpu, 3),
            "vectors_per_s": round(rows / self.wall),
        }


def _brainy(env: dict[str, str], *args: str) -> _Timer:
    """Run a `brainy` command in-process (its per-batch progress silenced), timed."""
    with (
        _Timer() as timer,
        contextlib.redirect_stderr(io.StringIO()) as err,
        contextlib.redirect_stdout(err),
    ):
        status = cli(list(args), env=env)
    if status != 0:
        raise RuntimeError(f"brainy {' '.join(args)} exited {status}: {err.getvalue()[-2000:]}")
    return timer


def _measure(url: str, env: dict[str, str], npy: Path, rows: int, work: Path) -> dict[str, Any]:
    env = {**os.environ, **env, "BRAINY_STORE": url}
    for name in ("ingested", "end2end"):
        _brainy(env, "collection", "create", name, "--dimension", str(DIM))
    out: dict[str, Any] = {}
    ingest = _brainy(env, "ingest", str(npy), "--collection", "ingested", "--no-index")
    out["ingest"] = ingest.rate(rows)

    indexer = Brainy.from_env("indexer", {**env, "BRAINY_CACHE_DIR": str(work / "indexer")})
    keys = sorted(info.key for info in indexer.store.list("ingested/wal/"))
    with _Timer() as timer:
        for key in keys:
            result = indexer.index_key(key)
            if result.status != "applied":
                raise RuntimeError(f"{key}: {result.status} {result.detail}")
    out["index"] = timer.rate(rows)
    out["batches"] = len(keys)
    indexer.close()

    out["end_to_end"] = _brainy(env, "ingest", str(npy), "--collection", "end2end").rate(rows)
    return out


def run(rows: int, store: str) -> dict[str, Any]:
    """Ingest, index and end-to-end throughput of `rows` × 384 vectors on one store.

    Args:
        rows: vectors in the file.
        store: "file" (a local folder), "s3" (a moto server started here on a free
            loopback port, stopped after), or a store URL to use as it is (its
            environment taken from `os.environ`).

    Returns:
        {"store", "rows", "dim", "batch_size", "batches", "ingest", "index",
        "end_to_end"}, each stage as {"seconds", "vectors_per_s"}.
    """
    work = Path(tempfile.mkdtemp(prefix="brainy-bench-ingest-"))
    try:
        npy = _matrix(work / "vectors.npy", rows)
        env = {**os.environ, "TMPDIR": str(work), "BRAINY_CACHE_DIR": str(work / "cache")}
        if store == "file":
            figures = _measure((work / "store").as_uri(), env, npy, rows, work)
        elif store == "s3":
            sys.path.insert(0, str(TESTS))
            from servers import emulator_env, new_store_url, start_moto

            moto = start_moto()
            try:
                # boto3 reads its endpoint and credentials from the process environment.
                with environ(emulator_env(s3=moto)):
                    figures = _measure(new_store_url("s3", work), env, npy, rows, work)
            finally:
                moto.stop()
        else:
            figures = _measure(store, env, npy, rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kind = store if store in ("file", "s3") else store.partition("://")[0]
    return {"store": kind, "rows": rows, "dim": DIM, "batch_size": DEFAULT_BATCH_SIZE, **figures}


def build_threads(rows: int, n_trees: int = 16) -> dict[str, Any]:
    """`build_segment` vectors/s on `rows` × 384 vectors, one thread against the
    default (a thread a core)."""
    work = Path(tempfile.mkdtemp(prefix="brainy-bench-build-"))
    try:
        vectors = np.random.default_rng(3).standard_normal((rows, DIM), np.float32)
        segment_rows = SegmentRows(
            ids=[str(i) for i in range(rows)],
            timestamps=np.arange(rows, dtype=np.int64),
            writers=["bench"] * rows,
            metadata=[None] * rows,
            vectors=vectors,
        )
        out: dict[str, Any] = {"rows": rows, "n_trees": n_trees, "cpus": os.cpu_count()}
        for label, threads in (("one_thread", 1), ("every_core", None)):
            with _Timer() as timer:
                built = build_segment(
                    segment_rows, metric="angular", n_trees=n_trees, seed=0, workdir=work,
                    threads=threads,
                )  # fmt: skip
            out[label] = timer.rate(rows)
            built.path.unlink()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="vectors in the file")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} vectors")
    parser.add_argument("--build-rows", type=int, help="build_segment's vectors (default 100,000)")
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 server")
    args = parser.parse_args()
    rows = QUICK_ROWS if args.quick else args.rows
    results: dict[str, Any] = {"rows": rows, "dim": DIM, "cpus": os.cpu_count()}
    for store in ("file", *(() if args.no_s3 else ("s3",))):
        results[store] = run(rows, store)
        print(json.dumps({store: results[store]}, indent=2), flush=True)
    build_rows = args.build_rows or (rows // 2 if args.quick else 100_000)
    results["build_segment"] = build_threads(build_rows)
    print(json.dumps({"build_segment": results["build_segment"]}, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
