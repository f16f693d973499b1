"""The live index an indexer keeps in step with successive manifests answers what
one built from scratch answers, and both hold each id's winner among the copies
the manifest's segments hold, as segments are added and compacted away."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainy.format.segment import SegmentRows, Tombstones, build_segment, upload_segment
from brainy.storage import open_store
from brainy.table.deletions import Masks
from brainy.table.headers import HeaderCache
from brainy.table.lww import LiveIndex, copies_of, every_copy, winner
from brainy.table.manifest import Manifest, SegmentRef, empty_manifest


def _segment(store, tmp_path: Path, ids, ts, dead=(), writers=None) -> SegmentRef:
    """A segment of `ids` at `ts` (writer "w" unless given), and tombstones `dead`:
    (id, ts) or (id, ts, writer)."""
    n = len(ids)
    dead = [(*d, "w")[:3] for d in dead]
    rows = SegmentRows(
        ids=list(ids),
        timestamps=np.asarray(ts, dtype=np.int64),
        writers=list(writers or ["w"] * n),
        metadata=[None] * n,
        vectors=np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32),
        tombstones=Tombstones(
            [d[0] for d in dead],
            np.array([d[1] for d in dead], dtype=np.int64),
            [d[2] for d in dead],
        ),
    )
    built = build_segment(rows, metric="euclidean", n_trees=2, seed=0, workdir=tmp_path)
    return SegmentRef.uploaded(built, upload_segment(store, "c", built))


def _manifest(version: int, *refs: SegmentRef) -> Manifest:
    return replace(empty_manifest("c", {}), version=version, segments=refs)


def _newest(store, manifest: Manifest, *, masked_too: bool = True, slim: bool = False) -> dict:
    """The definition: per id, the winner among the copies the manifest holds
    (unmasked only, or masked too: the same once losers are masked), read from full
    headers or slim ones."""
    copies: dict = {}
    for ref in manifest.segments:
        headers = HeaderCache(store, keep_metadata=not slim)
        held = every_copy(ref, headers) if masked_too else copies_of(ref, headers, Masks(store))
        for rid, copy in held:
            copies.setdefault(rid, []).append(copy)
    return {rid: winner(cs) for rid, cs in copies.items()}


@pytest.mark.parametrize("slim", [False, True])
def test_an_index_kept_in_step_matches_one_built_from_scratch(tmp_path, slim):
    store = open_store("memory://live-index")
    masks = Masks(store)
    # An indexer's live index reads slim headers; the definition reads full ones.
    index = LiveIndex(HeaderCache(store, keep_metadata=not slim))
    a = _segment(store, tmp_path, [f"id{i}" for i in range(10)], range(10))
    b = _segment(store, tmp_path, ["id2", "id3", "id11"], [20, 21, 22], dead=[("id4", 23)])
    # b's newer copies mask a's rows 2-4.
    a_masked = masks.mask("c", a, np.array([2, 3, 4]))
    # Compacted away: the live rows move to a new segment.
    merged = _segment(
        store,
        tmp_path,
        [f"id{i}" for i in (0, 1, 5, 6, 7, 8, 9)] + ["id2", "id3", "id11"],
        [0, 1, 5, 6, 7, 8, 9, 20, 21, 22],
        dead=[("id4", 23)],
    )
    for manifest in (_manifest(1, a), _manifest(2, a_masked, b), _manifest(3, merged)):
        with index.lock:
            kept = dict(index.at(manifest))
        assert kept == _newest(store, manifest), f"version {manifest.version}"
        assert kept == _newest(store, manifest, masked_too=False)
        assert kept == _newest(store, manifest, masked_too=False, slim=slim)
        assert dict(LiveIndex(HeaderCache(store)).at(manifest)) == kept
    assert kept["id4"].is_tombstone
    assert kept["id2"].order == (20, "w")


@pytest.mark.parametrize("slim", [False, True])
def test_random_histories_keep_every_id_at_its_winner(tmp_path, slim):
    """Segments added (their losers masked, as the indexer does), merged (as
    compaction does, duplicate tombstones included), with timestamp ties broken by
    writer, and enough ids that the index grows and reuses its slots."""
    store = open_store("memory://live-index-random")
    masks = Masks(store)
    # An indexer's live index reads slim headers; the definition reads full ones.
    index = LiveIndex(HeaderCache(store, keep_metadata=not slim))
    rng = np.random.default_rng(11)
    writers = ["b", "a", "B", "zz"]
    used: set[tuple[int, str]] = set()
    segments: list[SegmentRef] = []
    for version in range(1, 60):
        if len(segments) > 3 and rng.random() < 0.3:
            merged = [segments.pop(int(rng.integers(len(segments)))) for _ in range(2)]
            rows, dead = [], []
            for ref in merged:
                header = HeaderCache(store).get(ref)
                masked = set(masks.rows(ref).tolist())
                rows += [
                    (rid, int(ts), w)
                    for r, (rid, ts, w) in enumerate(
                        zip(header.ids, header.timestamps, header.writers, strict=True)
                    )
                    if r not in masked
                ]
                t = header.tombstones
                dead += list(zip(t.ids, t.timestamps.tolist(), t.writers, strict=True))
            ids, ts, ws = zip(*rows, strict=True) if rows else ((), (), ())
            new = _segment(store, tmp_path, ids, ts, dead, writers=ws)
        else:
            w = writers[version % len(writers)]
            ids = sorted({f"id{i}" for i in rng.integers(0, 1500, int(rng.integers(1, 400)))})
            deleted = sorted({f"id{i}" for i in rng.integers(0, 1500, 20)} - set(ids))
            # Orders are unique; timestamps are not: ties are broken by writer.
            when = []
            for _ in range(len(ids) + len(deleted)):
                t = int(rng.integers(0, 2000))
                while (t, w) in used:
                    t += 1
                used.add((t, w))
                when.append(t)
            dead = [(rid, t, w) for rid, t in zip(deleted, when[len(ids) :], strict=True)]
            new = _segment(store, tmp_path, ids, when[: len(ids)], dead, writers=[w] * len(ids))
        segments.append(new)
        # Mask every row that is not its id's winner.
        best = _newest(store, _manifest(version, *segments))
        for i, ref in enumerate(segments):
            header = HeaderCache(store).get(ref)
            losing = [
                r
                for r, rid in enumerate(header.ids)
                if (best[rid].segment, best[rid].row) != (ref.id, r)
            ]
            segments[i] = masks.mask("c", ref, np.array(losing, dtype=np.int64))
        manifest = _manifest(version, *segments)
        with index.lock:
            kept = dict(index.at(manifest))
        assert kept == _newest(store, manifest), f"version {version}"
        assert kept == _newest(store, manifest, masked_too=False)
        assert kept == _newest(store, manifest, masked_too=False, slim=slim)
