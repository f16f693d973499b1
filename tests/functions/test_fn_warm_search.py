"""What a warm search costs in object-store requests, read from the search function's
own `GET /metrics` (`brainy_object_store_requests_total{kind=...}`).

DESIGN §9: an idle refresh is one conditional GET of `_latest` answered
not-modified, at most once per refresh interval; a cached segment is never
downloaded again.
"""

from __future__ import annotations

import time

from harness import DIMENSION, REFRESH_INTERVAL, Deployment

# Sleeping this long guarantees the next search refreshes its view of the manifest.
PAST_INTERVAL = REFRESH_INTERVAL + 0.25
BURST = 10


def test_warm_searches_cost_one_conditional_get_per_refresh_interval(
    deployment: Deployment,
) -> None:
    vector = [0.2 * (i + 1) * (-1) ** i for i in range(DIMENSION)]
    rid = f"warm-{deployment.kind}"
    version = deployment.index(deployment.put_records([{"id": rid, "vector": vector}]))
    time.sleep(PAST_INTERVAL)
    first = deployment.query(vector, k=5, min_version=version)
    assert first.status == 200, str(first)
    assert first.json()["results"][0]["id"] == rid
    cold = deployment.search.store_requests()

    # A burst inside the interval the first search started: no request at all.
    for _ in range(BURST):
        reply = deployment.query(vector, k=5)
        assert reply.status == 200, str(reply)
        assert reply.json()["results"] == first.json()["results"]
    warm = deployment.search.store_requests()
    assert warm == cold, f"requests during the burst: {warm - cold}"

    # Past the interval: one conditional GET of `_latest`, answered not-modified.
    time.sleep(PAST_INTERVAL)
    reply = deployment.query(vector, k=5)
    assert reply.status == 200, str(reply)
    assert reply.json()["version"] == first.json()["version"]
    spent = deployment.search.store_requests() - warm
    assert sum(spent.values()) <= 1, f"requests after the interval: {spent}"
    assert set(spent) <= {"get"}, f"requests after the interval: {spent}"
