"""The benchmark's data: the real MiniLM vectors, and two generated sets shaped by them.

* `real`: the 30,000 base vectors of `pypi-minilm.npz` and its 500 held-out queries
  (all-MiniLM-L6-v2 embeddings of PyPI package summaries).
* `gaussian`: draws from one Gaussian with the real vectors' mean and covariance, then
  normalised. No clusters: harder than real data.
* `mixture`: spherical k-means with ~1,000 clusters on the real vectors (the product's
  own `train_centroids`); each draw picks a cluster with the probability of its share
  of the real vectors, adds noise with the pooled within-cluster covariance to the
  cluster's mean, and is normalised. Real coarse structure and spread: a little easier
  than real data.

Queries of a generated set are further draws from the same generator, after the
base rows in the same seeded stream: held out (no query is a base row), from the
same distribution. Every set is unit length and angular; `truth` is the exact top
`K` of each query by cosine, from blocked matrix products.

Generated sets are cached under a work folder (`<workdir>/datasets/<name>-...`) as
`.npy` files, keyed by the source file's content, size, seed and generator version,
so a rerun memory-maps them instead of generating again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainy.format.partitioning import nearest_centroids, train_centroids

K = 10
CHUNK = 65_536
QUERIES = 500
MIXTURE_CLUSTERS = 1_000
# Bumped when a generator changes, so older caches are not reused.
VERSION = 1
_REPO = Path(__file__).resolve().parents[1]
SOURCE_CANDIDATES = (
    _REPO.parent / "shared" / "data" / "pypi-minilm.npz",
    Path("/work/shared/data/pypi-minilm.npz"),
)


@dataclass(frozen=True)
class Dataset:
    """Unit-length float32 base rows and queries, and each query's exact top `K`.

    Attributes:
        name: "real", "gaussian" or "mixture".
        base: rows x dimension.
        queries: queries x dimension, none of them a base row.
        truth: queries x `K` row numbers of `base`, nearest first.
    """

    name: str
    base: np.ndarray
    queries: np.ndarray
    truth: np.ndarray

    @property
    def dimension(self) -> int:
        return int(self.base.shape[1])

    def recall(self, found: np.ndarray) -> float:
        """Mean recall@K of `found` (queries x K row numbers; -1 for none)."""
        hits = (found[:, :, None] == self.truth[: len(found), None, :]).any(axis=2)
        return float(hits.sum()) / (K * len(found))


def default_source() -> Path | None:
    """The real vectors' file, beside the repository or at its usual place."""
    return next((path for path in SOURCE_CANDIDATES if path.exists()), None)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)


def load_real(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries) of the real file, float32 and unit length."""
    with np.load(source) as data:
        return unit(data["base"]), unit(data["query"])


def exact_top_k(
    base: np.ndarray, queries: np.ndarray, k: int = K, chunk: int = CHUNK
) -> np.ndarray:
    """Row numbers of the `k` rows of `base` with the highest cosine to each query,
    best first: one matrix product per `chunk` rows, merging running top-k lists."""
    queries = unit(queries)
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(base), chunk):
        scores = queries @ unit(base[start : start + chunk]).T
        top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        best_ids = np.hstack([best_ids, top + start])
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
    return best_ids


def _root(covariance: np.ndarray) -> np.ndarray:
    """A matrix R with R @ R.T == covariance (positive semi-definite: the real
    vectors' covariance is singular, so no Cholesky factor)."""
    values, vectors = np.linalg.eigh(covariance)
    return vectors * np.sqrt(np.clip(values, 0, None))


# A generator writes `n` unit rows into `out` from `rng`, in chunks.
Generator = Callable[[np.random.Generator, np.ndarray], None]


def _chunks(out: np.ndarray) -> Iterator[tuple[int, int]]:
    for start in range(0, len(out), CHUNK):
        yield start, min(start + CHUNK, len(out))


def gaussian(source: np.ndarray) -> Generator:
    """Draws from N(mean, covariance) of `source`, normalised."""
    points = np.asarray(source, dtype=np.float64)
    mean = points.mean(axis=0)
    root = _root(np.cov(points, rowvar=False))

    def draw(rng: np.random.Generator, out: np.ndarray) -> None:
        for start, stop in _chunks(out):
            noise = rng.standard_normal((stop - start, len(mean)))
            out[start:stop] = unit(mean + noise @ root.T)

    return draw


@dataclass(frozen=True)
class Mixture:
    """The clusters of the real vectors: their means, weights and pooled spread."""

    means: np.ndarray
    weights: np.ndarray
    root: np.ndarray

    @classmethod
    def fit(cls, source: np.ndarray, clusters: int, seed: int) -> Mixture:
        """Cluster `source` by spherical k-means; each cluster's mean is the plain mean
        of its rows, the noise the rows' pooled deviation from their cluster's mean."""
        points = np.asarray(source, dtype=np.float32)
        labels = nearest_centroids(
            points, train_centroids(points, clusters, "angular", seed), "angular"
        )
        order = np.argsort(labels, kind="stable")
        present, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        means = np.add.reduceat(points[order].astype(np.float64), starts, axis=0) / counts[:, None]
        slot = np.searchsorted(present, labels)
        residuals = points - means[slot]
        pooled = residuals.T @ residuals / (len(points) - len(present))
        return cls(means, counts / counts.sum(), _root(pooled))

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` unit rows and the cluster each was drawn around."""
        labels = rng.choice(len(self.weights), size=n, p=self.weights)
        noise = rng.standard_normal((n, self.root.shape[0])) @ self.root.T
        return unit(self.means[labels] + noise), labels

    def generator(self) -> Generator:
        def draw(rng: np.random.Generator, out: np.ndarray) -> None:
            for start, stop in _chunks(out):
                out[start:stop] = self.draw(rng, stop - start)[0]

        return draw


def _mixture(source: Path, seed: int, workdir: Path) -> Mixture:
    """The mixture fitted on the real vectors, cached: its k-means is most of the cost
    of a small set, and the same for every size."""
    path = (
        workdir
        / "datasets"
        / f"mixture-fit-{MIXTURE_CLUSTERS}-seed{seed}-{_fingerprint(source)}.npz"
    )
    if path.exists():
        with np.load(path) as saved:
            return Mixture(saved["means"], saved["weights"], saved["root"])
    mixture = Mixture.fit(load_real(source)[0], MIXTURE_CLUSTERS, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, means=mixture.means, weights=mixture.weights, root=mixture.root)
    partial.rename(path)
    return mixture


def _fingerprint(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def _write(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write the arrays, then rename the folder into place: an interrupted run never
    leaves a cache that looks complete."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(partial / f"{name}.npy", array)
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def _read(name: str, folder: Path) -> Dataset:
    arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r") for key in ("base", "queries")}
    return Dataset(name, arrays["base"], arrays["queries"], np.load(folder / "truth.npy"))


def generated(
    name: str, source: Path, rows: int, workdir: Path, queries: int = QUERIES, seed: int = 1
) -> Dataset:
    """The generated set `name` ("gaussian" or "mixture") of `rows` base rows and
    `queries` held-out queries, from the cache under `workdir` or made and cached."""
    key = f"{name}-{rows}-{queries}-seed{seed}-v{VERSION}-{_fingerprint(source)}"
    folder = workdir / "datasets" / key
    if not (folder / "meta.json").exists():
        real, _ = load_real(source)
        draw = gaussian(real) if name == "gaussian" else _mixture(source, seed, workdir).generator()
        out = np.empty((rows + queries, real.shape[1]), dtype=np.float32)
        draw(np.random.default_rng(seed), out)
        base, held_out = out[:rows], out[rows:]
        meta = {"name": name, "source": str(source), "rows": rows, "queries": queries, "seed": seed}
        _write(
            folder, {"base": base, "queries": held_out, "truth": exact_top_k(base, held_out)}, meta
        )
    return _read(name, folder)


def real(source: Path) -> Dataset:
    base, queries = load_real(source)
    return Dataset("real", base, queries, exact_top_k(base, queries))
