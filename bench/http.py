"""HTTP benchmark (issue 7 §5): what the search function adds over `Brainy.search`.

Data: the real MiniLM vectors of /work/shared/data/pypi-minilm.npz (30,000 `base`
rows; beyond them, each generated row is a random real row plus Gaussian noise of
half the per-dimension spread, normalised; queries are its 500 `query` rows), or a
generated Gaussian set when the file is absent (the results say which). Two
collections on a local folder, default schema, ingested and indexed in-process, then
`compact(force=True)`: `docs` (`--rows`, default 50,000) and `small` (2,000 rows).
The store is kept under `--workdir` and reused by a later run of the same size.

The search function runs as a real functions-framework process (bench/procs.py)
on a loopback port, warmed with `POST /warmup`. Measured, one request at a time over
one persistent connection, interleaved with the in-process calls so load on the
machine hits both alike:

* `single`: p50/p90 of `Brainy.search` in-process (the same payloads, a read-only
  instance in this process) against `POST /search` over HTTP, on `docs` and
  `small`, and whether both answer the same ids;
* `error`: an answer to a bad request (wrong dimension: 400);
* `load`: `--clients` concurrent clients (each one persistent `http.client`
  connection, all on threads of one separate process) for `--seconds`: QPS,
  p50/p99, errors, and the client process's CPU share (a client near a full core
  would be the bottleneck, not the server).

Each `--server "WORKERS=2,THREADS=4"` adds a server configuration (environment of
the function process) to measure; without one the function's defaults run.
`--repo DIR` serves the function and layer of another checkout (e.g. `git archive
main | tar -x -C DIR`) against the same store, for before/after. Each load run also
reports the server's CPU time per request (master and workers, from /proc): on a
shared, loaded machine it measures capacity where QPS cannot.

The load generator is a `spawn`ed process: an orchestrator that imports `run`
must keep its own work under `if __name__ == "__main__":`.

Run: `python -m bench.http [--rows 50000] [--clients 1,16] [--seconds 20] [--quick]`;
figures go to `bench/results/http.json`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.procs import REPO, serve
from brainy.core.config import CollectionSchema
from brainy.maintenance.compaction import compact
from brainy.service.app import Brainy

RESULTS = Path(__file__).resolve().parent / "results"
PYPI = Path("/work/shared/data/pypi-minilm.npz")
DIM = 384
SMALL = 2_000
K = 10
# Requests per single-request measurement, per collection.
SINGLE = 400


def _app(url: str, cache: Path, role: str = "cli") -> Brainy:
    env = {"BRAINY_STORE": url, "BRAINY_ROLE": role, "BRAINY_CACHE_DIR": str(cache)}
    if role == "search":
        env["BRAINY_MODE"] = "read-only"
    return Brainy.from_env(role, env)


def _data(rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(base rows, queries, a description of where they come from)."""
    rng = np.random.default_rng(7)
    if not PYPI.exists():
        base = rng.standard_normal((rows, DIM)).astype(np.float32)
        queries = rng.standard_normal((500, DIM)).astype(np.float32)
        return base, queries, f"generated: {rows} standard-normal rows"
    data = np.load(PYPI)
    real = data["base"].astype(np.float32)[:rows]
    extra = rows - len(real)
    if extra > 0:
        noise = rng.standard_normal((extra, DIM)).astype(np.float32) * real.std(axis=0) * 0.5
        more = real[rng.integers(0, len(real), extra)] + noise
        real = np.vstack([real, more / np.linalg.norm(more, axis=1, keepdims=True)])
    source = f"pypi-minilm: {min(rows, 30_000)} real rows + {max(extra, 0)} real+noise rows"
    return real, data["query"].astype(np.float32), source


def _build(url: str, cache: Path, name: str, base: np.ndarray, batch: int = 10_000) -> None:
    app = _app(url, cache)
    app.create_collection(CollectionSchema(name, dimension=DIM, metric="angular"))
    for at in range(0, len(base), batch):
        records = [
            {"id": str(at + i), "vector": v} for i, v in enumerate(base[at : at + batch].tolist())
        ]
        app.index_key(app.ingest({"collection": name, "records": records}).batch)
    assert compact(app.maintenance, name, force=True).status == "compacted"
    app.close()


def _store(workdir: Path, rows: int) -> tuple[str, np.ndarray, str]:
    """The store URL (built on the first run of this size), the queries, the data source."""
    base, queries, source = _data(rows)
    store = workdir / f"store-{rows}"
    url = store.resolve().as_uri()
    if not (workdir / f"built-{rows}").exists():
        started = time.perf_counter()
        _build(url, workdir / "build-cache", "docs", base)
        _build(url, workdir / "build-cache", "small", base[:SMALL])
        (workdir / f"built-{rows}").write_text(f"{time.perf_counter() - started:.1f}\n")
    return url, queries, source


def _body(collection: str, vector: np.ndarray) -> bytes:
    return json.dumps({"collection": collection, "vector": vector.tolist(), "k": K}).encode()


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/search", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def _ms(seconds: list[float], q: float) -> float:
    return round(float(np.quantile(seconds, q)) * 1000, 3)


def _single(app: Brainy, port: int, collection: str, queries: np.ndarray) -> dict[str, Any]:
    """In-process and HTTP, alternating request by request, over the same payloads."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    local: list[float] = []
    remote: list[float] = []
    same = 0
    for i in range(SINGLE):
        vector = queries[i % len(queries)]
        payload = {"collection": collection, "vector": vector.tolist(), "k": K}
        body = _body(collection, vector)
        started = time.perf_counter()
        result = app.search(payload)
        local.append(time.perf_counter() - started)
        started = time.perf_counter()
        status, answer = _post(conn, body)
        remote.append(time.perf_counter() - started)
        assert status == 200, answer[:500]
        same += [h["id"] for h in json.loads(answer)["results"]] == [h.id for h in result.hits]
    conn.close()
    return {
        "in_process_p50_ms": _ms(local, 0.5),
        "in_process_p90_ms": _ms(local, 0.9),
        "http_p50_ms": _ms(remote, 0.5),
        "http_p90_ms": _ms(remote, 0.9),
        "http_minus_in_process_p50_ms": round(_ms(remote, 0.5) - _ms(local, 0.5), 3),
        "same_ids": round(same / SINGLE, 3),
    }


def _error(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"collection": "docs", "vector": [0.5] * (DIM - 1)}).encode()
    took = []
    for _ in range(SINGLE):
        started = time.perf_counter()
        status, answer = _post(conn, body)
        took.append(time.perf_counter() - started)
        assert status == 400, answer[:500]
    conn.close()
    return {"status": 400, "p50_ms": _ms(took, 0.5), "p90_ms": _ms(took, 0.9)}


def _client_load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads, each with one persistent connection, for `seconds` (in a
    process of its own: see `_load`)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = c
        start.wait()
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            try:
                status, _ = _post(conn, bodies[i % len(bodies)])
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            latencies[c].append(time.perf_counter() - began)
            errors[c] += status != 200
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    used = resource.getrusage(resource.RUSAGE_SELF)
    every = [x for part in latencies for x in part]
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(every),
        "qps": round(len(every) / wall, 1),
        "p50_ms": _ms(every, 0.5),
        "p99_ms": _ms(every, 0.99),
        "errors": sum(errors),
        "client_cpu_share": round(
            (used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime) / wall, 3
        ),
    }


def _load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """The load generator in a separate process, so its threads do not share a GIL
    with this harness."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_client_load, (port, bodies, clients, seconds))


def _server_label(env: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in env.items()) or "defaults"


def _measure_server(
    url: str, workdir: Path, env: dict[str, str], queries: np.ndarray, app: Brainy,
    clients: list[int], seconds: float, repo: Path,
) -> dict[str, Any]:  # fmt: skip
    full = {
        "BRAINY_STORE": url,
        "BRAINY_MODE": "read-only",
        "BRAINY_CACHE_DIR": str(workdir / "function-cache"),
        **env,
    }
    out: dict[str, Any] = {"server": _server_label(env)}
    with serve("search", full, workdir / "logs", repo) as fn:
        conn = http.client.HTTPConnection("127.0.0.1", fn.port, timeout=600)
        conn.request("POST", "/warmup", b"{}", {"Content-Type": "application/json"})
        assert conn.getresponse().read() and True
        conn.close()
        # Every worker process warms its own cache: a few rounds reach them all.
        bodies = [_body("docs", q) for q in queries]
        _client_load(fn.port, bodies[:64], 4, 2.0)
        out["docs"] = _single(app, fn.port, "docs", queries)
        out["small"] = _single(app, fn.port, "small", queries)
        out["error"] = _error(fn.port)
        out["load"] = []
        for c in clients:
            cpu = fn.cpu_seconds()
            load = _load(fn.port, bodies, c, seconds)
            spent = fn.cpu_seconds() - cpu
            load["server_cpu_ms_per_request"] = round(spent * 1000 / max(load["requests"], 1), 3)
            out["load"].append(load)
    return out


def run(
    rows: int,
    clients: list[int],
    seconds: float,
    servers: list[dict[str, str]] | None = None,
    workdir: Path | None = None,
    repo: Path = REPO,
) -> dict[str, Any]:
    """Build (or reuse) the collections and measure each server configuration.

    Args:
        rows: vectors in the `docs` collection.
        clients: the concurrent client counts of the load runs.
        seconds: how long each load run lasts.
        servers: environments of the function process (e.g. `{"WORKERS": "2"}`);
            one run with the function's defaults when omitted.
        workdir: where the store is kept (and reused by runs of the same size).
        repo: the checkout whose search function is served (default: this one).
    """
    workdir = workdir or Path(tempfile.gettempdir()) / "brainy-bench-http"
    started = time.perf_counter()
    url, queries, source = _store(workdir, rows)
    results: dict[str, Any] = {
        "rows": rows,
        "small_rows": SMALL,
        "data": source,
        "cpus": os.cpu_count(),
        # BLAS threads spin between calls: in-process and server figures depend on them.
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "setup_seconds": round(time.perf_counter() - started, 1),
        "runs": [],
    }
    app = _app(url, workdir / "in-process-cache", "search")
    app.warmup({})
    try:
        for env in servers or [{}]:
            measured = _measure_server(url, workdir, env, queries, app, clients, seconds, repo)
            print(json.dumps(measured, indent=2), flush=True)
            results["runs"].append(measured)
    finally:
        app.close()
    return results


def _server_env(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="per load run")
    parser.add_argument(
        "--server", action="append", type=_server_env, default=None,
        help="function environment to measure, e.g. WORKERS=2,THREADS=4 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--repo", type=Path, default=REPO,
        help="serve the search function of another checkout (before/after a change)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="10,000 rows, 4 s load runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.seconds = min(args.rows, 10_000), min(args.seconds, 4.0)
    clients = [int(c) for c in args.clients.split(",")]
    results = run(args.rows, clients, args.seconds, args.server, args.workdir, args.repo)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
