"""Ingest → searchable through the functions, with and without index-updated events.

Each mode serves ingest, indexer and search (functions-framework processes on free
loopback ports) on one bucket of a moto server, as `bench/functions.py` does, and
runs the same trials: post one record to `POST /ingest`, deliver its batch's S3
notification to the indexer, poll `POST /search` (no `min_version`: only the search
instance's own view of the manifest) until the record is found.

* `polling`: no events; the search instance refreshes its manifest every
  `refresh_interval` (the default, 1 s).
* `webhook`: the indexer posts each commit's CloudEvent to the search function's
  `POST /events`; the search instance's refresh interval is an hour, so only the
  event makes a version visible.
* `sns`: the same through an SNS topic on the moto server, with the search
  function as its HTTP subscriber.

Usage: `python -m bench.freshness [--trials 30] [--rows 5000] [--out PATH]`; the
figures (p50/p95/max per stage and mode) go to `bench/results/freshness.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.functions import (
    _percentiles,
    _seed_collection,
    _trial,
    moto_bucket,
    serve_function,
)

MODES = ("polling", "webhook", "sns")
HOUR = "3600"
GOAL_P95_S = 2.0


def _mode(
    mode: str, url: str, reach: dict[str, str], work: Path, trials: int, dim: int, first: int
) -> dict[str, Any]:
    """The trials of one mode, on its own three functions."""
    import boto3

    servers = {}
    try:
        search_env = dict(reach)
        if mode != "polling":
            search_env["BRAINY_REFRESH_INTERVAL"] = HOUR
        servers["search"] = serve_function("search", url, search_env, work / mode)
        indexer_env = dict(reach)
        if mode == "webhook":
            sink = {"type": "webhook", "url": f"{servers['search'].url}/events"}
            indexer_env["BRAINY_EVENTS"] = json.dumps({"sinks": [sink]})
        elif mode == "sns":
            endpoint = reach["BRAINY_S3_ENDPOINT_URL"]
            sns = boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1")
            topic = sns.create_topic(Name="brainy-freshness")["TopicArn"]
            sns.subscribe(
                TopicArn=topic, Protocol="http", Endpoint=f"{servers['search'].url}/events"
            )
            indexer_env["BRAINY_SNS_ENDPOINT_URL"] = endpoint
            sink = {"type": "sns", "topic_arn": topic}
            indexer_env["BRAINY_EVENTS"] = json.dumps({"sinks": [sink]})
        servers["indexer"] = serve_function("indexer", url, indexer_env, work / mode)
        servers["ingest"] = serve_function("ingest", url, reach, work / mode)
        rng = np.random.default_rng(first)
        vectors = rng.standard_normal((trials, dim)).astype(np.float32).tolist()
        bucket = url.split("/")[2]
        # The first search loads the manifest: the trials measure a warm instance.
        _trial(servers, bucket, first - 1, vectors[0])
        results = [_trial(servers, bucket, first + i, v) for i, v in enumerate(vectors)]
    finally:
        for server in servers.values():
            server.stop()
    out: dict[str, Any] = {}
    for stage in ("ingest", "index", "visible_after_index", "searchable"):
        out[stage] = _percentiles([r[stage] for r in results])
    out["meets_goal"] = out["searchable"]["p95_ms"] <= GOAL_P95_S * 1000
    return out


def run(trials: int, rows: int, dim: int, work: Path) -> dict[str, Any]:
    base = np.random.default_rng(5).standard_normal((rows, dim)).astype(np.float32)
    figures: dict[str, Any] = {
        "rows": rows,
        "dimension": dim,
        "trials": trials,
        "store": "s3 (moto)",
        "goal_p95_ms": GOAL_P95_S * 1000,
        "polling_refresh_interval_s": 1.0,
    }
    with moto_bucket(work / "logs") as (url, reach):
        _seed_collection(url, base, work)
        for n, mode in enumerate(MODES):
            figures[mode] = _mode(mode, url, reach, work, trials, dim, first=(n + 1) * 100_000)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/freshness.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="brainy-freshness-"))
    try:
        figures = run(args.trials, args.rows, args.dim, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1) + "\n")
    for mode in MODES:
        s = figures[mode]["searchable"]
        print(f"{mode:8s} ingest → searchable p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms")
    print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
