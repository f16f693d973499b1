"""The ingest function on a machine whose clock runs two minutes fast, against a moto
S3 server keeping true time: it starts, refuses every ingest with a 503 naming the
clock, writes nothing, and says why in `GET /health` and `GET /metrics`.

The function's process gets a `sitecustomize` that moves its clock (`time.time`,
`time.time_ns`) forward, as a badly set machine would; Brainy itself is untouched.
"""

from __future__ import annotations

import json

import pytest
from harness import COLLECTION, CONFIG, DIMENSION, FunctionServer, Launcher
from prometheus_client.parser import text_string_to_metric_families

from brainy.storage import open_store
from servers import Emulator, emulator_env, new_store_url

AHEAD = 120.0
FAST_CLOCK = """\
import os
import time

_ahead = float(os.environ["FAST_CLOCK_SECONDS"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _ahead
time.time_ns = lambda: _time_ns() + int(_ahead * 1e9)
"""


@pytest.fixture(scope="module")
def fast_ingest(
    launch: Launcher, moto_server: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FunctionServer, str]:
    shim = tmp_path_factory.mktemp("fast-clock")
    (shim / "sitecustomize.py").write_text(FAST_CLOCK)
    url = new_store_url("s3", shim)
    env = emulator_env(s3=moto_server)
    store = open_store(url, endpoint_url=env["BRAINY_S3_ENDPOINT_URL"])
    store.put("_brainy/config.json", json.dumps(CONFIG).encode())
    server = launch("ingest", url, env, PYTHONPATH=str(shim), FAST_CLOCK_SECONDS=str(AHEAD))
    return server, url


def test_a_fast_clock_refuses_ingest_and_writes_nothing(
    fast_ingest: tuple[FunctionServer, str], moto_server: Emulator
) -> None:
    server, url = fast_ingest
    records = {"collection": COLLECTION, "records": [{"id": "a", "vector": [1.0] * DIMENSION}]}

    reply = server.post("/ingest", records, headers={"Idempotency-Key": "fast-clock"})

    assert reply.status == 503, str(reply)
    assert (reply.error["code"], reply.error["field"]) == ("clock_skew", "clock")
    assert "ahead of the object store's" in reply.error["reason"]
    assert "max_clock_skew (30s)" in reply.error["reason"]
    store = open_store(url, endpoint_url=emulator_env(s3=moto_server)["BRAINY_S3_ENDPOINT_URL"])
    assert list(store.list(f"{COLLECTION}/wal/")) == []


def test_a_fast_clock_shows_in_health_and_metrics(fast_ingest: tuple[FunctionServer, str]) -> None:
    server, _ = fast_ingest

    health = server.get("/health")

    assert health.status == 503, str(health)
    body = health.json()
    assert body["status"] == "degraded"
    clock = body["checks"]["clock"]
    assert clock["ok"] is False
    assert AHEAD - 2 <= clock["skew_s"] <= AHEAD
    [skew] = [
        sample.value
        for family in text_string_to_metric_families(server.get("/metrics").body.decode())
        for sample in family.samples
        if sample.name == "brainy_clock_skew_seconds"
    ]
    assert skew == pytest.approx(clock["skew_s"], abs=0.001)
