"""The manifest log against garbage collection and lost hints: a commit never lands
on a version number that existed before, a reader never goes back, a reader whose
hint is never written still finds new versions, and the manifest stays small."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainy.maintenance.gc import collect_garbage
from brainy.storage import NotFound
from brainy.table.manifest import Manifest, Manifests, ManifestView, SegmentRef, StaleUpload
from helpers import declare, make_app

GRACE = 100.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _add(tag: str):
    """An update adding one (made-up) segment: enough to tell versions apart."""

    def update(parent: Manifest) -> Manifest:
        ref = SegmentRef(id=tag, key=f"docs/segments/{tag}/segment.bin", count=1, bytes=1,
                         min_ts=0, max_ts=0)  # fmt: skip
        return replace(parent, segments=(*parent.segments, ref))

    return update


def _setup(tmp_path: Path, name: str):
    app = make_app(f"memory://manifest-{name}-{time.time_ns()}", tmp_path)
    schema = declare(app).frozen()
    clock = FakeClock()
    return app, schema, clock


def _commit(manifests: Manifests, schema: dict, tag: str, **kw) -> Manifest:
    manifest, committed = manifests.commit(_add(tag), schema=schema, committed_by=tag, **kw)
    assert committed
    return manifest


def test_a_slow_commit_never_lands_on_a_version_gc_deleted(tmp_path: Path):
    """Commit v1; a slow committer keeps v1 as its base; v2–v5 commit; time passes and
    GC (retention 0) deletes v1–v4. The slow commit must land after v5, not as a
    second v2 that readers would then follow back in time."""
    app, schema, clock = _setup(tmp_path, "fork")
    fast = Manifests(app.store, "docs", gc_grace=GRACE, clock=clock)
    slow = Manifests(app.store, "docs", gc_grace=GRACE, clock=clock)
    _commit(fast, schema, "a")
    base = slow.latest()
    for tag in "bcde":
        _commit(fast, schema, tag)

    clock.now += 10 * GRACE  # the slow committer stalls; GC runs much later
    settings = replace(app.settings, retention=0.0, gc_grace=GRACE)
    report = collect_garbage(app.store, "docs", settings, now=time.time() + 10 * GRACE)
    assert report.versions == [fast.key(v) for v in range(1, 5)]

    landed = _commit(slow, schema, "slow", base=base)
    assert landed.version == 6
    with pytest.raises(NotFound):
        app.store.get(fast.key(2))
    newest = fast.latest()
    assert newest.version == 6
    assert [ref.id for ref in newest.segments] == ["a", "b", "c", "d", "e", "slow"]


def test_gc_keeps_versions_superseded_less_than_the_grace_ago(tmp_path: Path):
    """Even at retention 0, a version whose successor is young stays: a committer
    that saw it newest a moment ago may still put after it."""
    app, schema, clock = _setup(tmp_path, "young")
    fast = Manifests(app.store, "docs", gc_grace=GRACE, clock=clock)
    _commit(fast, schema, "a")
    base = Manifests(app.store, "docs", gc_grace=GRACE, clock=clock).latest()
    for tag in "bcde":
        _commit(fast, schema, tag)
    settings = replace(app.settings, retention=0.0, gc_grace=GRACE)
    assert collect_garbage(app.store, "docs", settings).versions == []
    # The stale base's put finds v2 taken and rebases.
    landed = _commit(fast, schema, "slow", base=base)
    assert landed.version == 6


def test_a_reader_finds_versions_whose_hint_was_never_written(tmp_path: Path):
    """The writer died between its commits and `_latest`: a warm reader answered
    not-modified on the hint still sees the new versions within a few refreshes."""
    app, schema, clock = _setup(tmp_path, "hint")
    writer = Manifests(app.store, "docs")
    _commit(writer, schema, "a")
    view = ManifestView(Manifests(app.store, "docs"), refresh_interval=5.0, clock=clock)
    assert view.current().version == 1

    dead = Manifests(app.store, "docs")
    dead.write_hint = lambda version: None  # type: ignore[method-assign]
    _commit(dead, schema, "b")
    _commit(dead, schema, "c")
    seen = []
    for _ in range(view.probe_every):
        clock.now += view.refresh_interval
        seen.append(view.current().version)
    assert seen[-1] == 3 and seen == sorted(seen)


def test_a_reader_never_goes_back_to_an_older_version(tmp_path: Path):
    app, schema, clock = _setup(tmp_path, "back")
    writer = Manifests(app.store, "docs")
    for tag in "abc":
        _commit(writer, schema, tag)
    view = ManifestView(Manifests(app.store, "docs"), refresh_interval=0.0, clock=clock)
    assert view.current().version == 3
    writer.write_hint(1)  # a slow writer's late hint names an old version
    assert view.current().version == 3


def test_a_commit_refuses_uploads_older_than_half_the_gc_grace(tmp_path: Path):
    app, schema, clock = _setup(tmp_path, "stale")
    manifests = Manifests(app.store, "docs", gc_grace=GRACE, clock=clock)
    with pytest.raises(StaleUpload):
        _commit(manifests, schema, "old", uploaded_at=time.time() - GRACE)
    assert manifests.latest() is None
    assert _commit(manifests, schema, "fresh", uploaded_at=time.time()).version == 1


def test_the_manifest_grows_with_segments_only(tmp_path: Path):
    """Batches applied, ids deleted and masked rows leave the manifest's size alone:
    what grows with them lives in segments and deletion files."""
    app = make_app(f"memory://manifest-size-{time.time_ns()}", tmp_path)
    declare(app, dimension=4)
    rng = np.random.default_rng(1)
    ids = [f"id-{i}" for i in range(40)]
    sizes = []
    for _ in range(30):
        chosen = rng.choice(ids, size=10, replace=False).tolist()
        payload = {
            "collection": "docs",
            "records": [{"id": i, "vector": rng.standard_normal(4).tolist()} for i in chosen[:7]],
            "deletes": chosen[7:],
        }
        assert app.index_key(app.ingest(payload).batch).status == "applied"
        manifest = app.manifests("docs").latest()
        sizes.append(len(manifest.to_json()) / len(manifest.segments))
    # Per segment, the 30th version is no bigger than the 5th.
    assert sizes[-1] <= sizes[4] * 1.05
    assert max(sizes) < 1024


def test_centroids_are_written_only_when_set_and_carried_by_every_commit():
    from brainy.storage import open_store

    plain = Manifest("docs", 1, {"dimension": 4})
    assert b"centroids" not in plain.to_json()
    named = replace(plain, centroids="docs/meta/centroids/x.f32")
    assert Manifest.from_json(named.to_json()).centroids == "docs/meta/centroids/x.f32"
    manifests = Manifests(open_store("memory://manifest-centroids"), "docs")
    manifests.commit(lambda p: replace(p, centroids="c"), schema={}, committed_by="t")
    later, _ = manifests.commit(lambda p: replace(p, swept=5.0), schema={}, committed_by="t")
    assert later.version == 2 and manifests.load(2).centroids == "c"
