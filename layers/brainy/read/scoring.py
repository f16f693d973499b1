"""Scores and the merge of hits: one scale for every metric, higher is better."""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

Scored = tuple[float, str, Any]  # (score, id, metadata)


def scores(metric: str, vectors: np.ndarray, query: np.ndarray, norms: np.ndarray | None = None):
    """Higher is better for every metric: cosine similarity for angular, the inner
    product for dot, and the negated L2 distance for euclidean."""
    if metric == "angular":
        dots = vectors @ query
        if norms is None:
            norms = np.linalg.norm(vectors, axis=1)
        return dots / np.maximum(norms * np.linalg.norm(query), 1e-30)
    if metric == "dot":
        return vectors @ query
    return -np.linalg.norm(vectors - query, axis=1)


def best_of(found: list[Scored], k: int) -> list[Scored]:
    """The best `k` hits, highest score first, ties by id (the same order on
    every instance)."""
    return heapq.nsmallest(k, found, key=lambda t: (-t[0], t[1]))
