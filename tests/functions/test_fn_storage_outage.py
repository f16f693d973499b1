"""The functions when the object store stops answering (DESIGN §7): ingest never says
202, the indexer answers 5xx so the platform redelivers, health says what is wrong,
and every answer is JSON naming `storage` — warm or at a cold start.

The store is a private moto server, stopped once the functions have served from it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from harness import COLLECTION, CONFIG, DIMENSION, FunctionServer, Launcher, event_request

from servers import emulator_env, start_moto

VECTOR = [0.25 * (i + 1) for i in range(DIMENSION)]


@dataclass
class Outage:
    url: str
    env: dict[str, str]
    ingest: FunctionServer
    indexer: FunctionServer
    search: FunctionServer


@pytest.fixture(scope="module")
def outage(launch: Launcher) -> Iterator[Outage]:
    moto = start_moto()
    try:
        env = emulator_env(s3=moto)
        bucket = f"brainy-outage-{uuid.uuid4().hex[:8]}"
        client = boto3.client(
            "s3",
            endpoint_url=moto.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="_brainy/config.json", Body=json.dumps(CONFIG))
        url = f"s3://{bucket}"
        servers = [
            launch(name, url, env, BRAINY_REFRESH_INTERVAL="0")
            for name in ("ingest", "indexer", "search")
        ]
        ingest, indexer, search = servers
        records = {"collection": COLLECTION, "records": [{"id": "before", "vector": VECTOR}]}
        batch = ingest.post("/ingest", records).json()["batch"]
        headers, body = event_request("s3-notification", bucket, [batch])
        assert indexer.post("/", data=body, headers=headers).status == 200
        found = search.post("/search", {"collection": COLLECTION, "vector": VECTOR})
        assert found.json()["results"][0]["id"] == "before", str(found)
        moto.stop()
        yield Outage(url, env, ingest, indexer, search)
    finally:
        moto.stop()


def assert_storage_error(reply, status: int = 503) -> None:
    assert reply.status == status, str(reply)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.error["field"] == "storage"


def test_ingest_never_answers_202_without_storage(outage: Outage) -> None:
    reply = outage.ingest.post(
        "/ingest", {"collection": COLLECTION, "records": [{"id": "during", "vector": VECTOR}]}
    )

    assert_storage_error(reply)


def test_indexer_answers_5xx_so_the_platform_redelivers(outage: Outage) -> None:
    key = f"{COLLECTION}/wal/2024/01/01/w/{uuid.uuid4().hex}.batch"
    headers, body = event_request("s3-notification", outage.url.removeprefix("s3://"), [key])

    reply = outage.indexer.post("/", data=body, headers=headers)

    assert_storage_error(reply)


def test_search_that_must_refresh_answers_503(outage: Outage) -> None:
    reply = outage.search.post("/search", {"collection": COLLECTION, "vector": VECTOR})

    assert_storage_error(reply)


def test_health_reports_storage_unreachable(outage: Outage) -> None:
    reply = outage.search.get("/health")

    assert reply.status == 503, str(reply)
    body = reply.json()
    assert body["status"] == "degraded"
    assert body["checks"]["storage"]["ok"] is False


def test_cold_start_without_storage_answers_503_naming_storage(
    outage: Outage, launch: Launcher
) -> None:
    search = launch("search", outage.url, outage.env)

    assert_storage_error(search.get("/health"))
    assert_storage_error(search.post("/search", {"collection": COLLECTION, "vector": VECTOR}))
