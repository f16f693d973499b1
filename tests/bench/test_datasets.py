"""The benchmark's generated data sets have the shape they are documented to have.

Small sizes and a synthetic source shaped like normalised embeddings (a common
offset, an uneven spread, clusters), so the test needs neither the real file nor time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench.datasets import K, Mixture, exact_top_k, generated, unit

DIM = 48


def _source(rows: int = 3_000, clusters: int = 30, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(DIM) * 0.6
    centres = offset + rng.standard_normal((clusters, DIM))
    spread = np.linspace(0.05, 0.5, DIM)  # uneven: a Gaussian with identity covariance fails
    points = centres[rng.integers(0, clusters, rows)] + rng.standard_normal((rows, DIM)) * spread
    return unit(points)


@pytest.fixture
def source_file(tmp_path: Path) -> Path:
    path = tmp_path / "source.npz"
    np.savez(path, base=_source().astype(np.float16), query=_source(50, seed=6))
    return path


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_gaussian_has_the_source_mean_and_covariance(source_file: Path, tmp_path: Path) -> None:
    source = np.load(source_file)["base"].astype(np.float32)
    data = generated("gaussian", source_file, 20_000, tmp_path / "work", queries=100)

    assert data.base.shape == (20_000, DIM) and data.queries.shape == (100, DIM)
    assert np.allclose(np.linalg.norm(data.base, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(data.queries, axis=1), 1, atol=1e-5)
    assert _relative(data.base.mean(axis=0), source.mean(axis=0)) < 0.05
    covariance = np.cov(source, rowvar=False)
    assert _relative(np.cov(data.base, rowvar=False), covariance) < 0.15
    # One Gaussian has no clusters: its nearest neighbours are much farther than the source's.
    assert _nearest_cosine(data.base[:2_000]) < _nearest_cosine(source[:2_000]) - 0.05


def _nearest_cosine(points: np.ndarray) -> float:
    scores = points @ points.T
    np.fill_diagonal(scores, -np.inf)
    return float(scores.max(axis=1).mean())


def test_mixture_points_lie_near_their_cluster() -> None:
    source = _source()
    mixture = Mixture.fit(source, 30, seed=1)
    points, labels = mixture.draw(np.random.default_rng(2), 3_000)

    assert points.shape == (3_000, DIM)
    assert np.allclose(np.linalg.norm(points, axis=1), 1, atol=1e-5)
    nearest = (points @ unit(mixture.means).T).argmax(axis=1)
    assert np.mean(nearest == labels) > 0.9
    # As far from their cluster's mean as the source's rows are from theirs.
    own = np.linalg.norm(points - unit(mixture.means[labels]), axis=1).mean()
    source_labels = (source @ unit(mixture.means).T).argmax(axis=1)
    real = np.linalg.norm(source - unit(mixture.means[source_labels]), axis=1).mean()
    assert 0.7 < own / real < 1.4


def test_generated_sets_are_deterministic_cached_and_hold_out_their_queries(
    source_file: Path, tmp_path: Path
) -> None:
    first = generated("mixture", source_file, 5_000, tmp_path / "a", queries=40)
    again = generated("mixture", source_file, 5_000, tmp_path / "b", queries=40)
    reread = generated("mixture", source_file, 5_000, tmp_path / "a", queries=40)
    other = generated("mixture", source_file, 5_000, tmp_path / "c", queries=40, seed=2)

    assert np.array_equal(first.base, again.base) and np.array_equal(first.queries, again.queries)
    assert np.array_equal(first.base, reread.base) and np.array_equal(first.truth, reread.truth)
    assert len([p for p in (tmp_path / "a" / "datasets").iterdir() if p.is_dir()]) == 1
    assert not np.array_equal(first.base, other.base)
    assert first.truth.shape == (40, K)
    assert (first.queries @ first.base.T).max() < 1 - 1e-6  # no query is a base row
    assert first.recall(first.truth) == 1.0


def test_exact_top_k_is_the_brute_force_answer_across_chunks() -> None:
    rng = np.random.default_rng(3)
    base, queries = rng.standard_normal((1_000, 16)), rng.standard_normal((20, 16))
    expected = np.argsort(-(unit(queries) @ unit(base).T), axis=1)[:, :K]
    assert np.array_equal(exact_top_k(base, queries, chunk=97), expected)
