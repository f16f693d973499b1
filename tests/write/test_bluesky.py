"""Jetstream events as records, the dedup filter and the subscription URL."""

from __future__ import annotations

import json

import pytest

from brainy.write.sources.bluesky import (
    POSTS,
    Malformed,
    RecentlySeen,
    parse_event,
    subscribe_url,
)
from jetstream import account_event, delete_event, identity_event, post_event

DID = "did:plc:alice"


def frame(event: dict) -> str:
    return json.dumps(event)


def test_a_created_post_is_a_record_with_its_text_and_metadata() -> None:
    event = post_event(DID, "3l3q", 1_700_000_000_000_001, "hello world",
                       reply={"parent": {"uri": "at://p", "cid": "c"},
                              "root": {"uri": "at://r", "cid": "c"}})  # fmt: skip
    parsed = parse_event(frame(event))
    record = parsed.record
    assert record.id == f"at://{DID}/{POSTS}/3l3q"
    assert record.op == "upsert" and record.text == "hello world"
    assert record.timestamp_us == parsed.time_us == 1_700_000_000_000_001
    assert record.metadata == {
        "did": DID, "rkey": "3l3q", "cid": event["commit"]["cid"],
        "createdAt": "2026-11-27T20:00:00Z", "langs": ["en"], "reply_parent": "at://p",
        "reply_root": "at://r", "time_us": 1_700_000_000_000_001,
    }  # fmt: skip
    assert parsed.seen_key == f"{DID}|3l3q|{event['commit']['cid']}"


def test_update_upserts_and_delete_deletes() -> None:
    update = parse_event(frame(post_event(DID, "k", 5, "edited", op="update"))).record
    assert update.op == "upsert" and update.text == "edited"
    delete = parse_event(frame(delete_event(DID, "k", 6))).record
    assert delete.op == "delete" and delete.id == f"at://{DID}/{POSTS}/k"
    assert delete.timestamp_us == 6


def test_posts_without_text_are_ignored_and_an_update_to_none_deletes() -> None:
    assert parse_event(frame(post_event(DID, "k", 5, " "))).ignored == "no-text"
    assert parse_event(frame(post_event(DID, "k", 6, "", op="update"))).record.op == "delete"


@pytest.mark.parametrize(
    "event, reason",
    [(identity_event(DID, 5), "identity"), (account_event(DID, 5), "account")],
)
def test_identity_and_account_events_are_ignored(event: dict, reason: str) -> None:
    parsed = parse_event(frame(event))
    assert parsed.record is None and parsed.ignored == reason and parsed.time_us == 5


def test_other_collections_are_ignored() -> None:
    event = post_event(DID, "k", 5, "liked")
    event["commit"]["collection"] = "app.bsky.feed.like"
    assert parse_event(frame(event)).ignored == "collection"


def _without(path: list[str]) -> str:
    event = post_event(DID, "k", 5, "text")
    node = event
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return frame(event)


@pytest.mark.parametrize(
    "data, message",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (_without(["time_us"]), "time_us"),
        (_without(["did"]), "did"),
        (_without(["commit"]), "commit"),
        (_without(["commit", "rkey"]), "commit.rkey"),
        (_without(["commit", "cid"]), "commit.cid"),
        (_without(["commit", "record"]), "commit.record"),
        (_without(["commit", "record", "text"]), "commit.record.text"),
        (_without(["commit", "operation"]), "commit.operation"),
        (frame({**post_event(DID, "k", True, "t")}), "time_us"),
    ],
)
def test_malformed_frames_are_refused_naming_what_is_wrong(data: str, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        parse_event(data)


def test_recently_seen_remembers_the_last_n_keys_in_fixed_memory() -> None:
    seen = RecentlySeen(capacity=100, error_rate=1e-6)
    assert not any(seen.seen(f"k{i}") for i in range(100))
    assert all(seen.seen(f"k{i}") for i in range(100))  # still within the last 100
    assert not any(seen.seen(f"n{i}") for i in range(200))  # two rotations later ...
    assert not seen.seen("k0")  # ... the first keys are forgotten


def test_subscribe_url_asks_for_posts_from_a_cursor() -> None:
    assert subscribe_url("wss://h/subscribe", None) == (
        "wss://h/subscribe?wantedCollections=app.bsky.feed.post"
    )
    url = subscribe_url("ws://h/subscribe?cursor=1&compress=false", 42)
    assert url == "ws://h/subscribe?compress=false&wantedCollections=app.bsky.feed.post&cursor=42"
