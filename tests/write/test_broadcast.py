"""Index-updated events in-process: the `events` setting, every delivery form a
search instance accepts, and a broadcaster that never holds up or fails a commit.
The same events through real SNS (moto), Pub/Sub (the emulator) and HTTP are in
tests/functions/test_fn_events.py."""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainy.core.config import ConfigError, parse_events, parse_layer
from brainy.core.errors import InvalidInput
from brainy.storage import open_store
from brainy.table.manifest import Manifests, SegmentRef
from brainy.write.broadcast import (
    INDEX_UPDATED,
    Broadcaster,
    IndexUpdated,
    SnsConfirmation,
    parse_delivery,
    structured,
)
from helpers import declare, make_app
from servers import free_port

ARN = "arn:aws:sns:us-east-1:123456789012:brainy-index"
EVENT = IndexUpdated("docs", 7, ("seg-b",), ("seg-a",), "indexer-1")
ATTRS = EVENT.attributes("/brainy/indexer/indexer-1")


# ----------------------------------------------------------------- config


def test_events_setting_accepts_every_sink_type() -> None:
    events = parse_events(
        {
            "sinks": [
                {"type": "sns", "topic_arn": ARN, "endpoint_url": "http://127.0.0.1:5000"},
                {"type": "pubsub", "topic": "projects/p/topics/t"},
                {"type": "webhook", "url": "https://example.test/events", "timeout": 2},
            ],
            "queue_size": 10,
        },
        "events",
    )
    assert [s.type for s in events.sinks] == ["sns", "pubsub", "webhook"]
    assert events.sinks[0].target == ARN and events.queue_size == 10
    # The environment's form is the same object as JSON.
    assert (
        parse_events(
            json.dumps({"sinks": [{"type": "pubsub", "topic": "projects/p/topics/t"}]}),
            "BRAINY_EVENTS",
        )
        .sinks[0]
        .target
        == "projects/p/topics/t"
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"sinks": {}}, "events.sinks"),
        ({"sinks": [{"type": "kafka"}]}, "events.sinks[0].type"),
        ({"sinks": [{"type": "sns"}]}, "events.sinks[0].topic_arn"),
        ({"sinks": [{"type": "sns", "topic_arn": "my-topic"}]}, "events.sinks[0].topic_arn"),
        ({"sinks": [{"type": "pubsub", "topic": "t"}]}, "events.sinks[0].topic"),
        ({"sinks": [{"type": "webhook", "url": "ftp://x"}]}, "events.sinks[0].url"),
        (
            {"sinks": [{"type": "webhook", "url": "http://x", "topic": "t"}]},
            "events.sinks[0].topic",
        ),
        ({"sinks": [], "size": 3}, "events.size"),
        ({"queue_size": 0}, "events.queue_size"),
        ({"flush_timeout": -1}, "events.flush_timeout"),
    ],
)
def test_a_bad_events_setting_names_its_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        parse_layer({"events": raw}, "_brainy/config.json")


# ------------------------------------------------------------- deliveries


def _binary() -> tuple[dict[str, str], bytes]:
    headers = {f"ce-{k}": v for k, v in ATTRS.items() if k != "datacontenttype"}
    return {**headers, "Content-Type": "application/json"}, json.dumps(EVENT.data()).encode()


def _pubsub(data: bytes, attributes: dict[str, str]) -> bytes:
    message = {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "1"}
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


def _sns(message: str) -> bytes:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "m",
            "TopicArn": ARN,
            "Message": message,
            "Timestamp": "2026-01-01T00:00:00.000Z",
        }
    ).encode()


def test_every_delivery_form_carries_the_same_event() -> None:
    headers, body = _binary()
    binary_attrs = {k.lower(): v for k, v in headers.items() if k.startswith("ce-")}
    forms = {
        "binary": (headers, body),
        "structured": ({"Content-Type": "application/cloudevents+json"}, structured(EVENT, ATTRS)),
        "pubsub binary": ({}, _pubsub(body, {**binary_attrs, "content-type": "application/json"})),
        "pubsub structured": ({}, _pubsub(structured(EVENT, ATTRS), {})),
        "sns": (
            {"x-amz-sns-message-type": "Notification"},
            _sns(structured(EVENT, ATTRS).decode()),
        ),
    }
    for name, (h, b) in forms.items():
        assert parse_delivery(h, b) == EVENT, name


def test_an_sns_subscription_confirmation_is_recognised() -> None:
    body = {
        "Type": "SubscriptionConfirmation",
        "TopicArn": ARN,
        "Token": "t",
        "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    }
    assert parse_delivery({}, json.dumps(body).encode()) == SnsConfirmation(
        ARN, body["SubscribeURL"]
    )


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        ({}, b"{not json", "body"),
        ({}, b'{"hello": 1}', "body"),
        (
            {"ce-type": "other.type", "ce-id": "1", "ce-source": "s", "ce-specversion": "1.0"},
            b"{}",
            "ce-type",
        ),
        ({"ce-type": INDEX_UPDATED, "ce-source": "s", "ce-specversion": "1.0"}, b"{}", "ce-id"),
        ({**_binary()[0]}, b'{"collection": "docs"}', "body.version"),
        ({**_binary()[0]}, b'{"collection": "a/b", "version": 2}', "body.collection"),
        (
            {},
            json.dumps({**ATTRS, "data": {"collection": "docs", "version": -1}}).encode(),
            "body.data.version",
        ),
        ({}, json.dumps({"message": {"data": "%%%"}}).encode(), "message.data"),
        ({}, json.dumps({"Type": "Notification", "Message": "nope"}).encode(), "Message"),
        (
            {},
            json.dumps({"Type": "SubscriptionConfirmation", "TopicArn": ARN}).encode(),
            "SubscribeURL",
        ),
        ({}, json.dumps({"Type": "Bogus"}).encode(), "Type"),
    ],
)
def test_a_malformed_delivery_names_the_field(headers: dict, body: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_delivery(headers, body)
    assert caught.value.field == field


# ------------------------------------------------------------ broadcaster


class _Recording:
    def __init__(self, name: str, fail: bool = False, gate: threading.Event | None = None):
        self.name = name
        self.fail = fail
        self.gate = gate
        self.entered = threading.Event()
        self.sent: list[IndexUpdated] = []

    def send(self, event: IndexUpdated, attributes: dict[str, str]) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise ConnectionError("sink down")
        self.sent.append(event)


def test_a_full_queue_drops_and_counts_and_a_failing_sink_does_not_stop_the_others() -> None:
    counts: list[tuple[str, str]] = []
    gate = threading.Event()
    good, bad = _Recording("webhook", gate=gate), _Recording("sns", fail=True)
    broadcaster = Broadcaster([good, bad], "/brainy/test/1", 2, lambda *c: counts.append(c))
    broadcaster.publish(IndexUpdated("docs", 1))
    assert good.entered.wait(10)  # the first is in flight, held at the gate
    for version in range(2, 6):  # two fit in the queue, two are dropped
        broadcaster.publish(IndexUpdated("docs", version))
    gate.set()
    assert broadcaster.flush(10)
    broadcaster.close()
    assert [e.version for e in good.sent] == [1, 2, 3]
    assert counts.count(("webhook", "ok")) == counts.count(("sns", "error")) == 3
    assert counts.count(("webhook", "dropped")) == counts.count(("sns", "dropped")) == 2


def test_the_event_names_the_segments_a_commit_added_and_removed(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/bucket")
    seen: list[IndexUpdated] = []
    broadcaster = Broadcaster([], "/x", 10, lambda *c: None)
    broadcaster.publish = seen.append  # type: ignore[method-assign]
    manifests = Manifests(store, "docs", on_commit=broadcaster.committed)
    a, b = (
        SegmentRef(id=i, key=f"docs/segments/{i}", count=1, bytes=1, min_ts=0, max_ts=0)
        for i in ("a", "b")
    )
    schema = {"dimension": 8}
    manifests.commit(lambda p: replace(p, segments=(a,)), schema=schema, committed_by="w1")
    manifests.commit(lambda p: replace(p, segments=(b,)), schema=schema, committed_by="w2")
    assert seen == [
        IndexUpdated("docs", 1, ("a",), (), "w1"),
        IndexUpdated("docs", 2, ("b",), ("a",), "w2"),
    ]


def test_a_failing_hook_never_fails_the_commit(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/bucket")

    def hook(parent, new):
        raise RuntimeError("broken sink")

    manifests = Manifests(store, "docs", on_commit=hook)
    manifest, committed = manifests.commit(lambda p: p, schema={}, committed_by="w")
    assert committed and manifests.latest().version == manifest.version == 1


def test_an_unreachable_webhook_never_fails_indexing(tmp_path: Path) -> None:
    """A real app with a webhook sink nobody listens on: the batch is committed and
    the failure counted in /metrics."""
    url = f"file://{tmp_path}/bucket"
    dead = f"http://127.0.0.1:{free_port()}/events"
    app = make_app(
        url, tmp_path, BRAINY_EVENTS=json.dumps({"sinks": [{"type": "webhook", "url": dead}]})
    )
    declare(app)
    outcome = app.ingest(
        {"collection": "docs", "records": [{"id": "a", "vector": np.ones(8).tolist()}]}
    )
    result = app.index_key(outcome.batch)
    assert result.status == "applied" and result.version == 1
    assert app.broadcaster is not None and app.broadcaster.flush(10)
    text = app.metrics.render().decode()
    assert 'brainy_events_published_total{outcome="error",sink="webhook"} 1.0' in text
    app.close()


def test_indexer_and_compactor_commits_are_announced(tmp_path: Path) -> None:
    """Every commit of an instance with sinks queues its event: the indexer's (one
    segment added) and the compactor's (the merged segments removed)."""
    from brainy.maintenance.compaction import compact

    sinks = {"sinks": [{"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/"}]}
    app = make_app(f"file://{tmp_path}/bucket", tmp_path, BRAINY_EVENTS=json.dumps(sinks))
    declare(app)
    seen: list[IndexUpdated] = []
    assert app.broadcaster is not None
    app.broadcaster.publish = seen.append  # type: ignore[method-assign]
    rng = np.random.default_rng(3)
    for n in range(2):
        records = [{"id": f"r{n}-{i}", "vector": rng.standard_normal(8).tolist()} for i in range(5)]
        app.index_key(app.ingest({"collection": "docs", "records": records}).batch)
    compact(app.maintenance, "docs", force=True)
    indexed, compacted = seen[:2], seen[-1]
    assert [e.version for e in indexed] == [1, 2]
    assert all(len(e.segments_added) == 1 and not e.segments_removed for e in indexed)
    assert compacted.version == app.manifests("docs").latest().version
    assert set(compacted.segments_removed) == {e.segments_added[0] for e in indexed}
    assert compacted.segments_added and compacted.committed_by == app.writer_id
    app.close()
