"""The one compare-and-swap loop: a lost race recomputes on the winner's object, a
retried put that landed the first time is recognised as ours, and sustained
contention ends in a clear error."""

from __future__ import annotations

import json
import time

import pytest

from brainy.storage import open_store
from brainy.storage.cas import Contention, Current, compare_and_swap
from faults import FaultyStore


def _append(item: str):
    def change(current: Current) -> bytes:
        items = json.loads(current.data) if current.data else []
        return json.dumps([*items, item]).encode()

    return change


def test_a_lost_race_is_recomputed_on_the_winner():
    store = open_store(f"memory://cas-race-{time.time_ns()}")
    compare_and_swap(store, "k", _append("a"))
    calls = []

    def slow(current: Current) -> bytes:
        calls.append(current.data)
        if len(calls) == 1:
            compare_and_swap(store, "k", _append("rival"))  # lands in between
        return _append("b")(current)

    compare_and_swap(store, "k", slow)
    assert json.loads(store.get("k").data) == ["a", "rival", "b"]
    assert len(calls) == 2


def test_a_put_whose_response_was_lost_counts_as_landed():
    inner = open_store(f"memory://cas-lost-{time.time_ns()}")
    store = FaultyStore(inner, {1: "lost-response"})  # the create lands, its answer is lost
    result = compare_and_swap(store, "k", _append("a"))
    assert json.loads(result.data) == ["a"]
    assert json.loads(inner.get("k").data) == ["a"]


def test_no_change_writes_nothing_and_contention_is_an_error():
    store = open_store(f"memory://cas-none-{time.time_ns()}")
    assert compare_and_swap(store, "k", lambda current: None).etag is None
    assert not store.exists("k")

    def always_beaten(current: Current) -> bytes:
        store.put("k", str(time.time_ns()).encode())  # a rival writes every time
        return b"mine"

    with pytest.raises(Contention, match="lost the compare-and-swap race 3 times"):
        compare_and_swap(store, "k", always_beaten, attempts=3)
