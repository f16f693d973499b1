"""The indexer against the particular shapes of each platform's notifications."""

from __future__ import annotations

import json

import numpy as np
import pytest
from harness import DIMENSION, Deployment, pubsub_push, s3_record, s3_test_event

rng = np.random.default_rng(7)


def record(rid: str) -> dict:
    return {"id": rid, "vector": rng.normal(size=DIMENSION).tolist(), "metadata": {"id": rid}}


def post_json(deployment: Deployment, body: object):
    return deployment.indexer.post("/", body)


def test_s3_test_event_is_acknowledged_and_indexes_nothing(s3_deployment: Deployment) -> None:
    before = s3_deployment.version()

    reply = post_json(s3_deployment, s3_test_event(s3_deployment.bucket))

    assert reply.status == 200, str(reply)
    assert reply.json()["results"] == []
    assert s3_deployment.version() == before


def test_every_record_of_one_s3_notification_is_indexed(s3_deployment: Deployment) -> None:
    records = [record(f"multi-{i}") for i in range(3)]
    keys = [s3_deployment.put_records([rec]) for rec in records]

    reply = s3_deployment.deliver(*keys, form="s3-notification")

    assert reply.status == 200, str(reply)
    results = reply.json()["results"]
    assert [r["key"] for r in results] == keys
    assert {r["status"] for r in results} == {"applied"}
    version = max(r["version"] for r in results)
    for rec in records:
        found = s3_deployment.query(rec["vector"], k=1, min_version=version).json()["results"]
        assert found[0]["id"] == rec["id"]


def test_s3_removal_records_in_a_notification_are_ignored(s3_deployment: Deployment) -> None:
    created = s3_deployment.put_records([record("kept")])
    removed = s3_deployment.put_records([record("removed")])
    body = {
        "Records": [
            s3_record(s3_deployment.bucket, s3_deployment.object_name(created)),
            s3_record(
                s3_deployment.bucket,
                s3_deployment.object_name(removed),
                event_name="ObjectRemoved:Delete",
            ),
        ]
    }

    reply = post_json(s3_deployment, body)

    assert reply.status == 200, str(reply)
    assert [(r["key"], r["status"]) for r in reply.json()["results"]] == [(created, "applied")]


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_event_from_another_bucket_is_ignored(request: pytest.FixtureRequest, kind: str) -> None:
    deployment: Deployment = request.getfixturevalue(f"{kind}_deployment")
    key = deployment.put_records([record(f"elsewhere-{kind}")])
    before = deployment.version()

    for form in deployment.forms:
        reply = deployment.deliver(key, form=form, bucket="some-other-bucket")

        assert reply.status == 200, f"{form}: {reply}"
        (result,) = reply.json()["results"]
        assert result["status"] == "ignored", (form, result)
    assert deployment.version() == before


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_event_outside_the_store_prefix_is_ignored(
    request: pytest.FixtureRequest, kind: str
) -> None:
    deployment: Deployment = request.getfixturevalue(f"{kind}_deployment")
    key = deployment.put_records([record(f"unprefixed-{kind}")])
    before = deployment.version()

    for form in deployment.forms:
        # The same key, but at the top of the bucket rather than under the store's prefix.
        reply = deployment.deliver_names([key], form=form)

        assert reply.status == 200, f"{form}: {reply}"
        (result,) = reply.json()["results"]
        assert result["status"] == "ignored", (form, result)
    assert deployment.version() == before


@pytest.mark.parametrize(
    "event_type", ["OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE"]
)
def test_pubsub_notification_of_other_changes_is_ignored(
    gcs_deployment: Deployment, event_type: str
) -> None:
    key = gcs_deployment.put_records([record(f"pubsub-{event_type}")])
    name = gcs_deployment.object_name(key)
    before = gcs_deployment.version()

    reply = post_json(gcs_deployment, pubsub_push(gcs_deployment.bucket, name, "1", event_type))

    assert reply.status == 200, str(reply)
    assert reply.json()["results"] == []
    assert gcs_deployment.version() == before


def test_gcs_finalized_event_without_an_object_name_is_refused(
    gcs_deployment: Deployment,
) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{gcs_deployment.bucket}",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "Content-Type": "application/json",
    }

    reply = gcs_deployment.indexer.post(
        "/", data=json.dumps({"bucket": gcs_deployment.bucket}).encode(), headers=headers
    )

    assert reply.status == 400, str(reply)
    assert reply.error["field"] == "data.name"


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"hello": "world"}', b"[1, 2]"], ids=["malformed", "unknown", "list"]
)
def test_a_body_that_is_no_storage_event_is_refused(
    file_deployment: Deployment, body: bytes
) -> None:
    reply = file_deployment.indexer.post(
        "/", data=body, headers={"Content-Type": "application/json"}
    )

    assert reply.status == 400, str(reply)
    assert reply.error["field"] == "body"
    assert reply.error["reason"]
