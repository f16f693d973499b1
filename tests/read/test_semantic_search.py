"""Search of a semantic collection: it probes the `nprobe` partitions nearest the
query plus every level-0 segment, and still reaches recall@10 >= 0.95 against
exact search (recall is asserted; time goes to bench/partitions.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from brainy.core.config import CollectionSchema
from brainy.format.centroids import Centroids, read_centroids
from brainy.format.partitioning import auto_partitions, basis_dimensions
from brainy.maintenance.compaction import compact
from brainy.read.search import REDUCED_MIN_ROWS, _target, probes, scans_reduced
from brainy.service.app import Brainy
from brainy.storage import open_store
from brainy.table.manifest import Manifests, SegmentRef
from faults import FaultyStore
from helpers import declare, make_app, recording_reader

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pypi-minilm.npz"


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    labels = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    return (centres[labels] + noise).astype(np.float32)


def _index(app: Brainy, vectors: np.ndarray, start: int = 0, batch: int = 10_000, meta=None):
    for at in range(0, len(vectors), batch):
        records = [
            {
                "id": str(start + i),
                "vector": vectors[i].tolist(),
                **({"metadata": meta(i)} if meta else {}),
            }
            for i in range(at, min(at + batch, len(vectors)))
        ]
        app.index_key(app.ingest({"collection": "docs", "records": records}).batch)


def _downloads(store: FaultyStore) -> set[str]:
    return {c.key for c in store.calls if c.op == "download" and "/segments/" in c.key}


def _recall(app: Brainy, vectors: np.ndarray, queries: np.ndarray, k: int = 10, **extra) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ unit.T), axis=1)[:, :k]
    found = 0
    for q, best in zip(queries, truth, strict=True):
        payload = {"collection": "docs", "vector": q.tolist(), "k": k, **extra}
        hits = app.search(payload).hits
        assert len(hits) == k
        found += len(set(best.tolist()) & {int(h.id) for h in hits})
    return found / (k * len(queries))


def test_probes_nprobe_partitions_plus_level0_at_recall_095(tmp_path: Path):
    rng = np.random.default_rng(42)
    centres = rng.standard_normal((32, 32)).astype(np.float32) * 3
    vectors = _clustered(rng, centres, 20_000)
    url = f"file://{tmp_path / 'store'}"
    writer = make_app(url, tmp_path)
    # exact_threshold 0: every partition is searched through Annoy, as a large one is.
    declare(writer, dimension=32, partitions=32, strategy="semantic", nprobe=4, exact_threshold=0)
    _index(writer, vectors)
    assert compact(writer.maintenance, "docs", force=True).status == "compacted"
    more = _clustered(rng, centres, 300)
    _index(writer, more, start=len(vectors))  # level 0 again: not routed yet
    everything = np.concatenate([vectors, more])
    manifest = Manifests(open_store(url), "docs").latest()
    level0 = sum(1 for ref in manifest.segments if ref.level == 0)
    assert level0 == 1 and len(manifest.segments) - level0 == 32

    # Background warming off: it would download the other partitions next.
    reader, store = recording_reader(url, tmp_path, BRAINY_BACKGROUND_WARM="false")
    queries = _clustered(rng, centres, 100)
    reader.search({"collection": "docs", "vector": queries[0].tolist(), "k": 10})
    assert len(_downloads(store)) <= 4 + level0
    assert _recall(reader, everything, queries) >= 0.95
    # The centroids are fetched once per process, and a warm search asks nothing.
    assert sum(1 for c in store.calls if c.key == manifest.centroids) == 1
    before = store.count
    reader.search({"collection": "docs", "vector": queries[0].tolist(), "k": 10})
    assert store.count == before
    # Rows written after the compaction are found (level 0 is always searched).
    hits = reader.search({"collection": "docs", "vector": more[7].tolist(), "k": 1}).hits
    assert hits[0].id == str(len(vectors) + 7)


def test_a_filter_matching_only_unprobed_partitions_still_finds_its_rows(tmp_path: Path):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((8, 16)).astype(np.float32) * 5
    vectors = _clustered(rng, centres, 2_000)
    url = "memory://semantic-filter"
    app = make_app(url, tmp_path)
    declare(app, dimension=16, partitions=8, strategy="semantic", nprobe=1)
    far = int(np.argmax(np.linalg.norm(vectors - vectors[0], axis=1)))
    _index(app, vectors, meta=lambda i: {"tag": "rare" if i == far else "common"})
    assert compact(app.maintenance, "docs", force=True).status == "compacted"
    query = {"collection": "docs", "vector": vectors[0].tolist(), "k": 3, "filter": {"tag": "rare"}}
    assert [h.id for h in app.search(query).hits] == [str(far)]


def test_a_collection_never_compacted_is_searched_in_full(tmp_path: Path):
    url = "memory://semantic-fresh"
    app = make_app(url, tmp_path)
    declare(app, dimension=4, partitions=4, strategy="semantic", nprobe=1)
    _index(app, np.eye(4, dtype=np.float32))
    hits = app.search({"collection": "docs", "vector": [0, 0, 1, 0], "k": 4}).hits
    assert hits[0].id == "2" and len(hits) == 4


@pytest.mark.skipif(not DATA.exists(), reason="needs shared/data/pypi-minilm.npz")
def test_recall_on_real_sentence_embeddings_at_the_default_nprobe(tmp_path: Path):
    """The shared PyPI MiniLM embeddings (30,000 x 384), 64 partitions, default nprobe."""
    data = np.load(DATA)
    vectors = data["base"].astype(np.float32)
    queries = data["query"][:100].astype(np.float32)
    url = f"file://{tmp_path / 'store'}"
    writer = make_app(url, tmp_path)
    declare(writer, dimension=384, partitions=64, strategy="semantic")
    _index(writer, vectors, batch=15_000)
    assert compact(writer.maintenance, "docs", force=True).status == "compacted"
    centroids = read_centroids(
        open_store(url), Manifests(open_store(url), "docs").latest().centroids
    )
    probes = centroids.probes_for(0.95)
    assert probes is not None and probes < 64
    # Background warming off: it would download the other partitions next.
    reader, store = recording_reader(url, tmp_path, BRAINY_BACKGROUND_WARM="false")
    reader.search({"collection": "docs", "vector": queries[0].tolist(), "k": 10})
    assert len(_downloads(store)) <= probes
    assert _recall(reader, vectors, queries) >= 0.95


@pytest.mark.skipif(not DATA.exists(), reason="needs shared/data/pypi-minilm.npz")
def test_auto_partitions_and_calibrated_probes_meet_each_recall_target(tmp_path: Path):
    """`partitions: "auto"` on the shared real embeddings: sized from the collection
    at the first compaction, and each recall target probes what the centroids'
    calibration measured for it — fewer partitions for a lower target — and
    reaches it against exact search on the held-out queries."""
    data = np.load(DATA)
    vectors = data["base"].astype(np.float32)
    queries = data["query"][:100].astype(np.float32)
    url = f"file://{tmp_path / 'store'}"
    writer = make_app(url, tmp_path)
    declare(writer, dimension=384, partitions="auto", strategy="semantic")
    _index(writer, vectors, batch=15_000)
    assert compact(writer.maintenance, "docs", force=True).status == "compacted"
    manifest = Manifests(open_store(url), "docs").latest()
    centroids = read_centroids(open_store(url), manifest.centroids)
    assert len(centroids) == auto_partitions(len(vectors))
    assert {ref.partition for ref in manifest.segments} <= set(range(len(centroids)))
    reader = make_app(url, tmp_path, role="search")
    probes = {t: centroids.probes_for(t) for t in (0.9, 0.95, 0.99)}
    assert probes[0.9] <= probes[0.95] <= probes[0.99]
    for target in (0.9, 0.95, 0.99):
        assert _recall(reader, vectors, queries, recall_target=target) >= target


def test_auto_partitions_and_calibrated_probes_on_a_generated_set(tmp_path: Path):
    """The same without the shared data: 64 overlapping clusters in 32 dimensions
    (neighbours straddle partition boundaries), queries drawn from the same
    clusters but never ingested. Each target is reached; a lower target
    searches fewer partitions."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((64, 32)).astype(np.float32) * 1.5
    vectors = _clustered(rng, centres, 20_000)
    queries = _clustered(rng, centres, 100)
    url = f"file://{tmp_path / 'store'}"
    writer = make_app(url, tmp_path)
    declare(writer, dimension=32, partitions="auto", strategy="semantic")
    _index(writer, vectors)
    assert compact(writer.maintenance, "docs", force=True).status == "compacted"
    manifest = Manifests(open_store(url), "docs").latest()
    centroids = read_centroids(open_store(url), manifest.centroids)
    assert len(centroids) == auto_partitions(len(vectors)) == 10
    probes = {t: centroids.probes_for(t) for t in (0.9, 0.95)}
    assert probes[0.9] < probes[0.95] < len(centroids)
    for target in (0.9, 0.95):
        reader, store = recording_reader(url, tmp_path, BRAINY_BACKGROUND_WARM="false")
        payload = {"collection": "docs", "vector": queries[0].tolist(), "recall_target": target}
        reader.search(payload)
        assert len(_downloads(store)) == probes[target]
        assert _recall(reader, vectors, queries, recall_target=target) >= target


def _correlated(
    url: str, tmp_path: Path, metric: str, seed: int, queries: int
) -> tuple[Brainy, np.ndarray, np.ndarray]:
    """A compacted 128-d semantic collection `docs` of 12,000 correlated rows in 4
    partitions (each past REDUCED_MIN_ROWS: scanned in a 32-d basis), its writer,
    and queries drawn alike."""
    rng = np.random.default_rng(seed)
    # Correlated data, like real embeddings: a few strong directions.
    mixing = rng.standard_normal((128, 128)).astype(np.float32) * np.geomspace(3, 0.1, 128)
    vectors = rng.standard_normal((12_000, 128)).astype(np.float32) @ mixing.T
    asked = rng.standard_normal((queries, 128)).astype(np.float32) @ mixing.T
    writer = make_app(url, tmp_path)
    declare(writer, dimension=128, metric=metric, partitions=4, strategy="semantic")
    _index(writer, vectors)
    assert compact(writer.maintenance, "docs", force=True).status == "compacted"
    return writer, vectors, asked


@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
def test_partitions_are_scanned_in_the_reduced_basis_and_keep_recall(tmp_path: Path, metric):
    """A collection of 128 dimensions trains a 32-d basis with its centroids; a
    partition of more than REDUCED_MIN_ROWS rows is then scanned in it and its
    best candidates re-ranked in full: recall stays at the target for every
    metric (a wrong reduced score, e.g. euclidean without -|x|², would not)."""
    url = f"file://{tmp_path / 'store'}"
    _, vectors, queries = _correlated(url, tmp_path, metric, seed=11, queries=60)
    manifest = Manifests(open_store(url), "docs").latest()
    centroids = read_centroids(open_store(url), manifest.centroids)
    assert centroids.basis is not None and centroids.basis.shape == (128, basis_dimensions(128))
    assert min(ref.count for ref in manifest.segments) > REDUCED_MIN_ROWS
    reader = make_app(url, tmp_path, role="search")
    if metric == "angular":
        truth_scores = queries @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
    elif metric == "dot":
        truth_scores = queries @ vectors.T
    else:
        truth_scores = -((queries[:, None, :] - vectors[None]) ** 2).sum(-1)
    truth = np.argsort(-truth_scores, axis=1)[:, :10]
    found = 0
    for q, best in zip(queries, truth, strict=True):
        payload = {"collection": "docs", "vector": q.tolist(), "k": 10, "recall_target": 0.95}
        found += len(set(best.tolist()) & {int(h.id) for h in reader.search(payload).hits})
    assert found / truth.size >= 0.95
    cached = reader.searcher.cache.get_many([r for r in manifest.segments if r.live])
    assert any(seg._reduced is not None for seg in cached)


@pytest.mark.parametrize("metric", ["angular", "euclidean"])
def test_a_batch_pools_its_reduced_scans_as_each_query_alone_does(tmp_path: Path, metric):
    """A query's scans in the reduced basis share one candidate pool, whether it is
    searched alone or in a batch (`search_batch`, which concurrent requests share):
    the same answers either way, deleted rows never among them, and recall at the
    target though far fewer rows are re-ranked than a pool per partition would."""
    url = f"file://{tmp_path / 'store'}"
    writer, vectors, queries = _correlated(url, tmp_path, metric, seed=5, queries=40)
    deleted = {str(i) for i in range(0, 12_000, 7)}
    writer.index_key(writer.ingest({"collection": "docs", "deletes": sorted(deleted)}).batch)
    reader = make_app(url, tmp_path, role="search")
    searcher, schema = reader.searcher, reader.require_schema("docs")
    searcher.warm("docs")  # the projections, as the background warm-up makes them
    alone = [searcher.search(schema, q, 10) for q in queries]
    together = searcher.search_batch(schema, queries, 10)
    assert [[h.id for h in r.hits] for r in together] == [[h.id for h in r.hits] for r in alone]
    assert not deleted & {h.id for r in alone for h in r.hits}
    assert all(len(r.hits) == 10 for r in alone)
    live = np.array([i for i in range(12_000) if str(i) not in deleted])
    if metric == "angular":
        unit = vectors[live] / np.linalg.norm(vectors[live], axis=1, keepdims=True)
        truth_scores = queries @ unit.T
    else:
        truth_scores = -((queries[:, None, :] - vectors[live][None]) ** 2).sum(-1)
    truth = live[np.argsort(-truth_scores, axis=1)[:, :10]]
    found = sum(
        len({str(i) for i in best} & {h.id for h in r.hits})
        for best, r in zip(truth, alone, strict=True)
    )
    assert found / truth.size >= 0.95
    reader.close()


def test_warming_projects_only_the_partitions_a_query_scans():
    """Warm-up prepares the reduced projection of a partition scanned exactly at
    the default target, not of one its calibration searches through Annoy, nor of
    one too small to be scanned in the basis."""
    schema = CollectionSchema.from_dict("docs", {"dimension": 8})

    def segment(count: int, exact_at_095: bool) -> Any:
        calibration = {"k": 10, "search_k": {"0.95": 5000}, "exact": {"0.95": exact_at_095}}
        return SimpleNamespace(count=count, header=SimpleNamespace(calibration=calibration))

    assert scans_reduced(segment(50_000, exact_at_095=True), schema, 0.95)
    assert not scans_reduced(segment(50_000, exact_at_095=False), schema, 0.95)
    assert not scans_reduced(segment(REDUCED_MIN_ROWS, exact_at_095=True), schema, 0.95)
    assert not scans_reduced(segment(50_000, exact_at_095=True), schema, 1.0)


def test_probes_carry_the_target_by_the_share_of_rows_searched_approximately():
    """Partitions scanned exactly lose nothing, so the probes carry the whole
    target; partitions past `exact_threshold` are searched at the target's square
    root, and the probes make up only for their share of the rows: one large
    partition among many no longer sends every query to the square root's probes."""
    levels = {"0.8": 5, "0.9": 10, "0.95": 20, "0.97": 30, "0.98": 40, "0.99": 60}
    centroids = Centroids(np.eye(100, 8, dtype=np.float32), {"nprobe": levels})
    schema = CollectionSchema.from_dict(
        "docs", {"dimension": 8, "strategy": "semantic", "partitions": 100, "exact_threshold": 1000}
    )

    def refs(*counts: int) -> list[SegmentRef]:
        return [
            SegmentRef(f"s{i}", f"k{i}", n, n * 32, 0, 0, level=1, partition=i)
            for i, n in enumerate(counts)
        ]

    small = refs(*[500] * 100)
    assert probes(schema, centroids, small, 0.95) == (20, 0.95)
    large = refs(*[5000] * 100)
    assert probes(schema, centroids, large, 0.95) == (40, pytest.approx(0.95**0.5))
    # One partition of 100 past the threshold (a share of 1/11 of the rows): the
    # probes reach 0.95 / (1 - 1/11 x 0.025) = 0.952 → the 0.97 level.
    mixed = refs(*[500] * 99, 5000)
    assert probes(schema, centroids, mixed, 0.95) == (30, pytest.approx(0.95**0.5))
    # That square root is for the large partition only: the others are scanned at
    # the target itself (a reduced scan re-ranks no more candidates than it needs).
    large_target = probes(schema, centroids, mixed, 0.95)[1]
    assert _target(mixed[0], schema, 0.95, large_target) == 0.95
    assert _target(mixed[-1], schema, 0.95, large_target) == pytest.approx(0.95**0.5)
    # A level-0 segment never counts: every query searches it anyway.
    assert probes(schema, centroids, [*small, replace(large[0], level=0)], 0.95)[0] == 20
    # An explicit nprobe, and a target of 1.0, as before.
    assert probes(schema, centroids, mixed, 1.0) == (100, 1.0)
    explicit = CollectionSchema.from_dict(
        "docs", {"dimension": 8, "strategy": "semantic", "partitions": 100, "nprobe": 7}
    )
    assert probes(explicit, centroids, mixed, 0.95) == (7, 0.95)
