"""Index-updated events end to end, through real servers: the indexer publishes after
each commit to a webhook, an SNS topic (moto, delivering to an HTTP subscription)
or a Pub/Sub topic (the Google Cloud SDK's emulator, with a push subscription),
and the search function, whose refresh interval is an hour, serves the new
version as soon as the event arrives on `POST /events`.

moto's SNS delivers notifications to HTTP subscribers itself (a POST of the SNS
JSON body, `Type: Notification`), but confirms HTTP subscriptions without sending
a SubscriptionConfirmation: that request is posted here as SNS would send it, and
the search function confirms it by a GET of its SubscribeURL (on a stand-in for
SNS's endpoint: moto answers an unsigned GET on its own address as S3).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from harness import COLLECTION, DIMENSION, FunctionServer, Launcher, Reply, event_request
from prometheus_client.parser import text_string_to_metric_families

from brainy.core.config import CollectionSchema, create_collection
from brainy.storage import open_store
from pubsub_emulator import PROJECT, pubsub_missing, start_pubsub
from servers import Emulator, free_port

# Long enough that only an event can make a new version visible within a test.
LONG_REFRESH = "3600"
# How long a test waits for an event to make a record visible (a bound, not a timing).
VISIBLE_WITHIN = 30.0


@pytest.fixture(scope="module")
def aws(moto_server: Emulator) -> dict[str, str]:
    """What reaches SNS on the moto server (also moto's S3, unused: stores are folders)."""
    return {
        "BRAINY_SNS_ENDPOINT_URL": moto_server.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def sns(moto_server: Emulator) -> Any:
    return boto3.client(
        "sns",
        endpoint_url=moto_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def search(launch: Launcher, file_store_url: str, aws: dict[str, str]) -> FunctionServer:
    return launch("search", file_store_url, aws, BRAINY_REFRESH_INTERVAL=LONG_REFRESH)


@pytest.fixture(scope="module")
def ingest(launch: Launcher, file_store_url: str) -> FunctionServer:
    return launch("ingest", file_store_url)


@contextlib.contextmanager
def indexer_with(
    launch: Launcher,
    store_url: str,
    sinks: list[dict[str, Any]],
    env: dict[str, str],
    flush_timeout: float = 2.0,
) -> Iterator[FunctionServer]:
    events = {"sinks": sinks, "flush_timeout": flush_timeout}
    server = launch("indexer", store_url, env, BRAINY_EVENTS=json.dumps(events))
    try:
        yield server
    finally:
        server.stop()


def add_record(
    ingest: FunctionServer, indexer: FunctionServer, rid: str, collection: str = COLLECTION
) -> tuple[list, int]:
    """Ingest one record and deliver its batch to `indexer`; its vector and the
    version it was committed in."""
    vector = [float((hash(rid) >> i) % 7 + 1) * (-1) ** i for i in range(DIMENSION)]
    reply = ingest.post(
        "/ingest", {"collection": collection, "records": [{"id": rid, "vector": vector}]}
    )
    assert reply.status == 202, str(reply)
    headers, body = event_request("gcs-binary", "local", [reply.json()["batch"]])
    reply = indexer.post("/", data=body, headers=headers)
    assert reply.status == 200, str(reply)
    (result,) = reply.json()["results"]
    assert result["status"] == "applied", result
    return vector, int(result["version"])


def served_version(search: FunctionServer) -> int:
    """The version the search function answers from (without waiting for any)."""
    reply = search.post("/search", {"collection": COLLECTION, "vector": [1.0] * DIMENSION, "k": 1})
    assert reply.status == 200, str(reply)
    return int(reply.json()["version"])


def wait_visible(search: FunctionServer, rid: str, vector: list, version: int) -> dict:
    """Search (no min_version: only the instance's own view) until `rid` is found."""
    deadline = time.monotonic() + VISIBLE_WITHIN
    while True:
        reply = search.post("/search", {"collection": COLLECTION, "vector": vector, "k": 3})
        assert reply.status == 200, str(reply)
        body = reply.json()
        if any(hit["id"] == rid for hit in body["results"]):
            assert body["version"] >= version
            return body
        assert time.monotonic() < deadline, (
            f"{rid} (version {version}) not served within {VISIBLE_WITHIN:g}s: "
            f"still at version {body['version']}"
        )
        time.sleep(0.05)


def metric(server: FunctionServer, name: str, **labels: str) -> float:
    reply = server.get("/metrics")
    assert reply.status == 200, str(reply)
    total = 0.0
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def index_updated(version: int, collection: str = COLLECTION) -> dict[str, Any]:
    return {"collection": collection, "version": version, "segments_added": [],
            "segments_removed": [], "committed_by": "test"}  # fmt: skip


def binary_event(version: int, collection: str = COLLECTION) -> tuple[dict[str, str], bytes]:
    headers = {"ce-specversion": "1.0", "ce-type": "dev.brainy.index.updated",
               "ce-source": "/brainy/indexer/test", "ce-id": f"late-{version}",
               "Content-Type": "application/json"}  # fmt: skip
    return headers, json.dumps(index_updated(version, collection)).encode()


def structured_event(version: int) -> dict[str, Any]:
    return {"specversion": "1.0", "type": "dev.brainy.index.updated", "id": f"s-{version}",
            "source": "/brainy/indexer/test", "data": index_updated(version)}  # fmt: skip


def post_event(search: FunctionServer, form: str, version: int) -> Reply:
    """An index-updated event for `version` in one delivery form."""
    if form == "binary":
        headers, body = binary_event(version)
        return search.post("/events", data=body, headers=headers)
    if form == "pubsub":
        data = base64.b64encode(json.dumps(structured_event(version)).encode()).decode()
        return search.post("/events", {"message": {"data": data, "messageId": "1"},
                                       "subscription": "projects/p/subscriptions/s"})  # fmt: skip
    assert form == "sns"
    return search.post("/events", {"Type": "Notification", "MessageId": "m",
                                   "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                                   "Message": json.dumps(structured_event(version))})  # fmt: skip


# ----------------------------------------------------------------- webhook


def test_a_webhook_event_makes_the_new_version_searchable_at_once(
    launch: Launcher, file_store_url: str, ingest: FunctionServer, search: FunctionServer
) -> None:
    before = served_version(search)  # the view is now held for an hour
    refreshed = metric(search, "brainy_events_received_total", outcome="refreshed")
    sinks = [{"type": "webhook", "url": f"{search.url}/events"}]
    # The indexer answers once its events are sent (bounded by flush_timeout: a
    # serverless platform may freeze it right after): the very next search sees it.
    with indexer_with(launch, file_store_url, sinks, {}, flush_timeout=60) as indexer:
        for n in range(2):
            vector, version = add_record(ingest, indexer, f"webhook-{n}")
            assert version > before
            reply = search.post("/search", {"collection": COLLECTION, "vector": vector, "k": 3})
            assert reply.status == 200, str(reply)
            assert reply.json()["version"] >= version
            assert f"webhook-{n}" in [hit["id"] for hit in reply.json()["results"]]
        assert metric(indexer, "brainy_events_published_total", sink="webhook", outcome="ok") >= 2
    assert metric(search, "brainy_events_received_total", outcome="refreshed") >= refreshed + 2


def test_an_event_for_a_collection_declared_after_the_search_started_is_served(
    launch: Launcher, file_store_url: str, ingest: FunctionServer, search: FunctionServer
) -> None:
    served_version(search)  # the search instance has read the config
    store = open_store(file_store_url)
    create_collection(store, CollectionSchema("newer", dimension=DIMENSION))
    store.close()
    sinks = [{"type": "webhook", "url": f"{search.url}/events"}]
    with indexer_with(launch, file_store_url, sinks, {}, flush_timeout=60) as indexer:
        vector, version = add_record(ingest, indexer, "in-newer", collection="newer")
    reply = search.post("/search", {"collection": "newer", "vector": vector, "k": 1})
    assert reply.status == 200, str(reply)
    assert reply.json()["version"] == version
    assert reply.json()["results"][0]["id"] == "in-newer"


@pytest.mark.parametrize("form", ["binary", "pubsub", "sns"])
def test_a_duplicate_or_late_event_changes_nothing(
    launch: Launcher, file_store_url: str, ingest: FunctionServer, search: FunctionServer,
    form: str,
) -> None:  # fmt: skip
    sinks = [{"type": "webhook", "url": f"{search.url}/events"}]
    with indexer_with(launch, file_store_url, sinks, {}) as indexer:
        vector, version = add_record(ingest, indexer, f"late-{form}")
        wait_visible(search, f"late-{form}", vector, version)
    served = served_version(search)
    for announced in (served, served - 1, 1):  # a duplicate, then late ones
        reply = post_event(search, form, announced)
        assert reply.status == 200, str(reply)
        assert reply.json()["refreshed"] is False
        assert reply.json()["version"] == served
    assert served_version(search) == served


def test_a_failing_sink_never_fails_a_commit(
    launch: Launcher, file_store_url: str, ingest: FunctionServer, aws: dict[str, str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sinks = [
        {"type": "webhook", "url": f"{dead}/events", "timeout": 1},
        {"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:no-such-topic"},
    ]
    with indexer_with(launch, file_store_url, sinks, aws) as indexer:
        _, version = add_record(ingest, indexer, "failing-sinks")
        assert version >= 1
        deadline = time.monotonic() + VISIBLE_WITHIN
        while (
            metric(indexer, "brainy_events_published_total", outcome="error") < 2
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert (
            metric(indexer, "brainy_events_published_total", sink="webhook", outcome="error") == 1
        )
        assert metric(indexer, "brainy_events_published_total", sink="sns", outcome="error") == 1
        # The indexer stays healthy and keeps committing.
        _, later = add_record(ingest, indexer, "failing-sinks-2")
        assert later > version


# --------------------------------------------------------------------- SNS


def test_sns_through_moto_to_the_search_function(
    launch: Launcher, file_store_url: str, ingest: FunctionServer, search: FunctionServer,
    sns: Any, aws: dict[str, str],
) -> None:  # fmt: skip
    topic = sns.create_topic(Name="brainy-index-updated")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{search.url}/events")
    before = served_version(search)
    received = metric(search, "brainy_events_received_total", outcome="refreshed")
    with indexer_with(launch, file_store_url, [{"type": "sns", "topic_arn": topic}], aws) as ix:
        vector, version = add_record(ingest, ix, "via-sns")
        assert version > before
        wait_visible(search, "via-sns", vector, version)
        assert metric(ix, "brainy_events_published_total", sink="sns", outcome="ok") == 1
    assert metric(search, "brainy_events_received_total", outcome="refreshed") == received + 1


CONFIRM_ANSWER = """<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">
  <ConfirmSubscriptionResult><SubscriptionArn>{arn}</SubscriptionArn></ConfirmSubscriptionResult>
  <ResponseMetadata><RequestId>7f9a8f3e-0000-4000-8000-000000000000</RequestId></ResponseMetadata>
</ConfirmSubscriptionResponse>"""


@pytest.fixture
def sns_endpoint() -> Iterator[tuple[str, list[str]]]:
    """Stands in for SNS's ConfirmSubscription endpoint, answering as SNS does, and
    records the paths it was asked for. (moto serves ConfirmSubscription only to a
    signed request or an `sns.<region>` host: it answers an unsigned GET on its own
    address, which is what a SubscribeURL is, as S3.)"""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            query = parse_qs(urlparse(self.path).query)
            body = CONFIRM_ANSWER.format(arn=f"{query['TopicArn'][0]}:sub-1").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_sns_subscription_confirmation_is_confirmed_by_a_get_of_its_subscribe_url(
    launch: Launcher, file_store_url: str, sns_endpoint: tuple[str, list[str]]
) -> None:
    endpoint, asked = sns_endpoint
    search = launch("search", file_store_url, BRAINY_SNS_ENDPOINT_URL=endpoint)
    topic = "arn:aws:sns:us-east-1:123456789012:brainy-index-updated"
    query = f"Action=ConfirmSubscription&TopicArn={topic}&Token=2336412f37fb687f5d51e6e2"
    body = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9",
        "Token": "2336412f37fb687f5d51e6e2",
        "TopicArn": topic,
        "Message": "You have chosen to subscribe to the topic ...",
        "SubscribeURL": f"{endpoint}/?{query}",
        "Timestamp": "2026-01-01T00:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService.pem",
    }
    try:
        reply = search.post("/events", body, headers={"x-amz-sns-message-type": body["Type"]})
        assert reply.status == 200, str(reply)
        assert reply.json() == {"confirmed": topic, "subscription_arn": f"{topic}:sub-1"}
        assert asked == [f"/?{query}"]
        # A SubscribeURL anywhere but SNS (or the configured SNS endpoint) is never fetched.
        reply = search.post("/events", {**body, "SubscribeURL": "http://169.254.169.254/latest"})
        assert reply.status == 400 and reply.error["field"] == "SubscribeURL", str(reply)
        assert len(asked) == 1
    finally:
        search.stop()


# ----------------------------------------------------------------- Pub/Sub


@pytest.fixture(scope="module")
def pubsub() -> Iterator[Any]:
    reason = pubsub_missing()
    if reason:
        pytest.skip(reason)
    emulator = start_pubsub()
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        yield emulator
    finally:
        patch.undo()
        emulator.stop()


def test_pubsub_through_the_emulator_pushes_to_the_search_function(
    launch: Launcher, file_store_url: str, ingest: FunctionServer, search: FunctionServer,
    pubsub: Any,
) -> None:  # fmt: skip
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, "index-updated")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        name=subscriber.subscription_path(PROJECT, "search-push"),
        topic=topic,
        push_config={"push_endpoint": f"{search.url}/events"},
    )
    before = served_version(search)
    env = {"PUBSUB_EMULATOR_HOST": pubsub.host}
    with indexer_with(launch, file_store_url, [{"type": "pubsub", "topic": topic}], env) as ix:
        vector, version = add_record(ingest, ix, "via-pubsub")
        assert version > before
        wait_visible(search, "via-pubsub", vector, version)
        assert metric(ix, "brainy_events_published_total", sink="pubsub", outcome="ok") == 1


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("headers", "body", "status", "field"),
    [
        ({"Content-Type": "application/json"}, b"{", 400, "body"),
        (binary_event(3)[0], b'{"collection": "docs", "version": "3"}', 400, "body.version"),
        ({**binary_event(3)[0], "ce-type": "com.example.other"}, b"{}", 400, "ce-type"),
        (*binary_event(3, "nope"), 404, "collection"),
        (
            {"Content-Type": "application/json"},
            b'{"message": {"attributes": {}}}',
            400,
            "message.data",
        ),
    ],
)
def test_a_malformed_event_is_refused_naming_the_field(
    search: FunctionServer, headers: dict[str, str], body: bytes, status: int, field: str
) -> None:
    reply = search.post("/events", data=body, headers=headers)
    assert reply.status == status, str(reply)
    assert reply.error["field"] == field
