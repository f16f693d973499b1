"""Recall@10 of the approximate path against exact search (recall is a fine
assertion; time is not — timings live in bench/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import declare, make_app

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pypi-minilm.npz"


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def _recall(app, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for q in queries:
        truth = set(np.argsort(-(unit @ (q / np.linalg.norm(q))))[:k].tolist())
        hits = app.search({"collection": "docs", "vector": q.tolist(), "k": k}).hits
        assert len(hits) == k
        found += len(truth & {int(h.id) for h in hits})
    return found / (k * len(queries))


def _index(app, vectors: np.ndarray, batch: int = 10_000) -> None:
    for start in range(0, len(vectors), batch):
        records = [
            {"id": str(i), "vector": vectors[i].tolist()}
            for i in range(start, min(start + batch, len(vectors)))
        ]
        app.index_key(app.ingest({"collection": "docs", "records": records}).batch)


def test_recall_at_10_on_20k_clustered_vectors(tmp_path: Path):
    rng = np.random.default_rng(42)
    vectors = clustered(rng, 20_000, 32, clusters=50)
    queries = clustered(rng, 100, 32, clusters=50)
    app = make_app(f"file://{tmp_path / 'store'}", tmp_path)
    # exact_threshold 0 forces every segment through Annoy, the path under test.
    declare(app, dimension=32, exact_threshold=0)
    _index(app, vectors)
    assert _recall(app, vectors, queries) >= 0.9


@pytest.mark.skipif(not DATA.exists(), reason="needs shared/data/pypi-minilm.npz")
def test_recall_at_10_on_real_sentence_embeddings(tmp_path: Path):
    """Uses the shared PyPI MiniLM embeddings (30,000 × 384) when present."""
    data = np.load(DATA)
    vectors = data["base"].astype(np.float32)
    queries = data["query"][:100].astype(np.float32)
    app = make_app(f"file://{tmp_path / 'store'}", tmp_path)
    declare(app, dimension=384, exact_threshold=0)
    _index(app, vectors, batch=15_000)
    assert _recall(app, vectors, queries) >= 0.9
