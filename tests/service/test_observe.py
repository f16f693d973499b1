"""The per-collection metrics and the partition-access check, on an in-process
instance: computed from what the instance holds, without a request per scrape."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from brainy.service.app import Brainy
from brainy.service.observe import IndexLag, PartitionAccess
from brainy.storage import open_store
from helpers import declare, make_app, random_vectors


def samples(app: Brainy) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(app.metrics.render().decode())
        for s in family.samples
    }


def fill(app: Brainy, batches: int = 3, rows: int = 20) -> None:
    rng = np.random.default_rng(0)
    for b in range(batches):
        vectors = random_vectors(rng, rows, 8)
        records = [{"id": f"b{b}-{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]
        app.index_key(app.ingest({"collection": "docs", "records": records}).batch)


def test_a_scrape_reports_the_held_collection_without_a_request(tmp_path: Path) -> None:
    app = make_app(f"memory://observe-{time.time_ns()}", tmp_path, role="compactor")
    declare(app, partitions=4)
    fill(app)
    app.maintain("docs", force=True)
    manifest = app.manifests("docs").latest()
    sent = sum(app.store.requests.values())

    found = samples(app)

    assert sum(app.store.requests.values()) == sent
    docs = frozenset({("collection", "docs")})
    sizes: dict[int, int] = {}
    for ref in manifest.segments:
        sizes[ref.partition] = sizes.get(ref.partition, 0) + ref.live
    assert found[("brainy_manifest_version", docs)] == manifest.version
    assert found[("brainy_collection_vectors", docs)] == manifest.live == 60
    assert found[("brainy_partitions", docs)] == len(sizes) == 4
    assert found[("brainy_partition_vectors_gsum", docs)] == 60
    # 60 rows in 4 partitions: each holds at most 100.
    le_100 = frozenset({("collection", "docs"), ("le", "100")})
    assert found[("brainy_partition_vectors_bucket", le_100)] == 4
    assert found[("brainy_index_lag_seconds", docs)] == 0


def test_index_lag_keeps_the_newest_measurement() -> None:
    lag = IndexLag()
    lag.record("docs", 5.0, measured_at=100.0)
    lag.record("docs", 9.0, measured_at=90.0)  # an older pass finishing late
    assert lag.snapshot() == {"docs": (5.0, 100.0)}
    lag.record("docs", 0.0, measured_at=110.0)
    assert lag.snapshot() == {"docs": (0.0, 110.0)}


def test_partition_access_heads_a_bounded_number_of_segments_in_turn(tmp_path: Path) -> None:
    url = f"memory://access-{time.time_ns()}"
    app = make_app(url, tmp_path)
    declare(app)
    fill(app, batches=5, rows=3)
    manifest = app.manifests("docs").latest()
    store = open_store(url)
    access = PartitionAccess(store, cached=lambda ref: False, probes=2)

    heads_before = store.requests["head"]
    rounds = [access.check({"docs": manifest}) for _ in range(3)]

    assert store.requests["head"] - heads_before == 6
    assert all(r["ok"] and r["docs"]["probed"] == 2 for r in rounds)
    lost = sorted(ref.key for ref in manifest.segments)[4]
    store.delete(lost)
    # Five segments, two a check, in turn: three checks reach every one of them.
    found = [access.check({"docs": manifest}) for _ in range(3)]
    assert [r["ok"] for r in found].count(False) >= 1
    failing = next(r for r in found if not r["ok"])
    assert failing["docs"]["unreadable"] == [{"key": lost, "error": "not found"}]

    cached = PartitionAccess(store, cached=lambda ref: True)
    heads_before = store.requests["head"]
    assert cached.check({"docs": manifest})["docs"]["cached"] == len(manifest.segments)
    assert store.requests["head"] == heads_before
