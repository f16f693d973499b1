"""Ingest → searchable through the real functions, and the processes the benches start.

`run` serves the ingest, indexer and search functions (functions-framework, each its
own process on a free loopback port) on one bucket of a moto S3 server (also a
process on loopback) holding a compacted collection of `rows` vectors. Each trial
posts one new record to `POST /ingest`, delivers the batch's S3 notification to the
indexer as the platform would (the raw notification body, key URL-encoded), then
polls `POST /search` with the record's vector until the record is found; the time
from the ingest request to that answer is the trial's ingest → searchable latency.
Store requests per ingest and per index come from each function's `/metrics`.
Every process is stopped however the run ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import numpy as np

from bench.procs import LOOPBACK, REPO
from brainy.entry.processes import Child, environ, function_argv, start_server

COLLECTION = "fresh"


@dataclass
class Served(Child):
    """A server process on a loopback port, in its own process group, logging to a file."""

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        """(status, parsed JSON body or text) of one request; never raises on a status."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if body is not None and not isinstance(body, bytes):
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            with e:
                status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def store_requests(self) -> Counter[str]:
        """`brainy_object_store_requests_total` by kind, from `GET /metrics`."""
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.request("GET", "/metrics")
        counts: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "brainy_object_store_requests_total":
                    counts[sample.labels["kind"]] = int(sample.value)
        return counts


def serve(
    name: str,
    argv_for: Callable[[int], list[str]],
    env: Mapping[str, str],
    logs: Path,
    probe: str,
) -> Served:
    """Start `argv_for(port)` (which binds `port` on loopback) and wait until `probe`
    (a path) answers."""
    return start_server(
        name, argv_for, env, lambda _: logs / f"{name}.log", probe, cwd=REPO, make=Served
    )


def s3_env(endpoint: str) -> dict[str, str]:
    """What points Brainy and boto3 at a moto server."""
    return {
        "BRAINY_S3_ENDPOINT_URL": endpoint,
        "BRAINY_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def moto_bucket(logs: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto S3 server on a free loopback port with one fresh bucket: yields the
    store URL (`s3://<bucket>/data`) and the environment that reaches it."""
    import boto3

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BRAINY_"))}
    server = serve(
        "moto",
        lambda port: [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
        env,
        logs,
        "/moto-api/",
    )
    try:
        reach = s3_env(server.url)
        bucket = f"brainy-bench-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket)
        with environ(reach):
            yield f"s3://{bucket}/data", reach
    finally:
        server.stop()


def serve_function(name: str, store_url: str, reach: Mapping[str, str], work: Path) -> Served:
    """`functions/<name>/main.py` under functions-framework on a free loopback port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINY_", "AWS_"))}
    env.update(reach)
    env.update(
        BRAINY_STORE=store_url,
        BRAINY_CACHE_DIR=str(work / f"cache-{name}"),
        BRAINY_INSTANCE_ID=f"bench-{name}",
        PYTHONUNBUFFERED="1",
    )
    argv_for = functools.partial(function_argv, name, repo=REPO)
    return serve(name, argv_for, env, work / "logs", "/health")


def s3_notification(bucket: str, name: str) -> dict[str, Any]:
    """A raw S3 event notification of one created object (key URL-encoded, as S3 sends)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(name), "size": 1},
                },
            }
        ]
    }


def _seed_collection(url: str, base: np.ndarray, work: Path) -> None:
    """The collection the trials add to: `base` ingested, indexed and compacted."""
    from bench.systems import brainy_app, ingest_rows
    from brainy.core.config import CollectionSchema
    from brainy.maintenance.compaction import compact

    writer = brainy_app(url, work / "seed-cache")
    writer.create_collection(
        CollectionSchema(
            COLLECTION, dimension=base.shape[1], partitions=16, strategy="semantic", seed=1
        )
    )
    ingest_rows(writer, COLLECTION, base, writer.settings.max_records)
    compact(writer.maintenance, COLLECTION, force=True)
    writer.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p95_ms": round(float(np.percentile(values, 95)) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _per(before: Counter[str], after: Counter[str], n: int) -> dict[str, float]:
    return {
        kind: round((after[kind] - before[kind]) / n, 2)
        for kind in after
        if after[kind] > before[kind]
    }


def _trial(servers: dict[str, Served], bucket: str, i: int, vector: list[float]) -> dict:
    rid = f"fresh-{i}"
    began = time.perf_counter()
    status, body = servers["ingest"].request(
        "POST", "/ingest", {"collection": COLLECTION, "records": [{"id": rid, "vector": vector}]}
    )
    if status != 202:
        raise RuntimeError(f"ingest answered {status}: {body}")
    ingested = time.perf_counter()
    status, body = servers["indexer"].request(
        "POST", "/", s3_notification(bucket, f"data/{body['batch']}")
    )
    if status != 200 or body["results"][0]["status"] != "applied":
        raise RuntimeError(f"indexer answered {status}: {body}")
    indexed = time.perf_counter()
    polls = 0
    while time.perf_counter() - began < 30:
        polls += 1
        status, body = servers["search"].request(
            "POST", "/search", {"collection": COLLECTION, "vector": vector, "k": 10}
        )
        if status == 200 and any(hit["id"] == rid for hit in body["results"]):
            found = time.perf_counter()
            return {
                "ingest": ingested - began,
                "index": indexed - ingested,
                "visible_after_index": found - indexed,
                "searchable": found - began,
                "polls": polls,
            }
        time.sleep(0.01)
    raise RuntimeError(f"{rid} not searchable 30 s after its ingest")


def run(base: np.ndarray, trials: int, work: Path) -> dict[str, Any]:
    """Ingest → searchable latency over `trials` records added to a collection of `base`."""
    rng = np.random.default_rng(11)
    with moto_bucket(work / "logs") as (url, reach):
        _seed_collection(url, np.asarray(base, dtype=np.float32), work)
        servers: dict[str, Served] = {}
        try:
            for name in ("ingest", "indexer", "search"):
                servers[name] = serve_function(name, url, reach, work)
            before = {name: s.store_requests() for name, s in servers.items()}
            vectors = rng.standard_normal((trials, base.shape[1])).astype(np.float32).tolist()
            results = [_trial(servers, url.split("/")[2], i, v) for i, v in enumerate(vectors)]
            after = {name: s.store_requests() for name, s in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    out: dict[str, Any] = {"rows": len(base), "trials": trials, "store": "s3 (moto)"}
    for stage in ("ingest", "index", "visible_after_index", "searchable"):
        out[stage] = _percentiles([r[stage] for r in results])
    out["polls_mean"] = round(statistics.mean(r["polls"] for r in results), 1)
    out["store_requests_per_ingest"] = _per(before["ingest"], after["ingest"], trials)
    out["store_requests_per_index"] = _per(before["indexer"], after["indexer"], trials)
    out["store_requests_per_search_poll"] = _per(
        before["search"], after["search"], sum(r["polls"] for r in results)
    )
    return out
