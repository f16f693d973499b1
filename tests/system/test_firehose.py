"""Issue 6 §1, must show: a firehose of small batches (re-upserts, ~30% deletes,
events duplicated, reordered and late, a maintenance pass every 100 commits) leaves
(a) a manifest whose size follows its segments, not the commits applied; (b) each
commit writing at most one manifest version and a few small objects; (c) exactly
the last-writer-wins live set, and a clean `verify`.

The simulation is the benchmark's (`bench/firehose.py`), smaller.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.firehose import Firehose, FirehoseConfig, FirehoseResult

pytestmark = pytest.mark.slow

CONFIG = FirehoseConfig(
    commits=1_000,
    ids=600,
    compact_every=100,
    late_max=60,
    samples=10,
    seed=6,
)


@pytest.fixture(scope="module")
def firehose(tmp_path_factory: pytest.TempPathFactory) -> FirehoseResult:
    sim = Firehose(CONFIG, Path(tmp_path_factory.mktemp("firehose")))
    try:
        return sim.run()
    finally:
        sim.close()


def test_the_newest_manifest_is_within_1kb_per_segment_plus_16kb(
    firehose: FirehoseResult,
) -> None:
    size, segments, bound = firehose.final_bytes, firehose.final_segments, firehose.bound
    over_run = [(batches, size) for batches, _, size, _, _ in firehose.samples]
    assert size < bound, (
        f"newest manifest {size} bytes for {segments} segments (bound {bound}); "
        f"(batches, bytes) over the run: {over_run}"
    )


def test_the_manifest_does_not_grow_with_commits(firehose: FirehoseResult) -> None:
    first, second = firehose.halves()
    assert second <= 1.2 * first, (
        f"largest manifest grew from {first} bytes over the first half of the commits to "
        f"{second} over the second, though compaction ran every {CONFIG.compact_every}"
    )


def test_each_commit_writes_one_manifest_and_a_few_objects(firehose: FirehoseResult) -> None:
    assert len(firehose.commits) >= CONFIG.commits // 2
    for d in firehose.deliveries:
        assert d.cost.manifests <= 1, (d.step, d.status, d.cost)
        if d.status == "applied":
            assert d.cost.manifests == 1, (d.step, d.cost)
            # Its segment, its manifest version, the `_latest` hint, and one deletion
            # file per segment whose rows it masks: at most one per record. The
            # instance's own upkeep under `_brainy/` (a clock probe every few
            # minutes) is not the commit's.
            objects = sum(n for a, n in d.cost.objects.items() if not a.startswith("_brainy/"))
            assert objects <= 3 + d.records, (d.step, d.records, d.cost)
        else:
            assert d.cost.total_objects == 0, (d.step, d.status, d.cost)


def test_the_live_set_is_exactly_last_writer_wins(firehose: FirehoseResult) -> None:
    events = firehose.events
    assert events["batches_delivered"] == CONFIG.commits
    # The run did exercise what it claims to.
    assert events["duplicated"] > 0 and events["held_late"] > 0 and events["out_of_order"] > 0
    assert firehose.live["expected"] > 0
    assert firehose.live["equal"], firehose.live
    assert firehose.verify["ok"], firehose.verify
    assert firehose.repairs == 0, "a maintenance pass found something to repair"
