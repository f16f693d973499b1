"""Text embedders. `hash` is dependency-free: signed feature hashing of words, word
bigrams and character trigrams, log-scaled and L2-normalised. It finds texts that
share words and word pieces, not meaning; model-backed embedders come later."""

from __future__ import annotations

import itertools
import re
from typing import Protocol

import numpy as np
import xxhash

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class EmptyText(ValueError):
    """The text has nothing to embed (no word characters)."""


class Embedder(Protocol):
    dimension: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


class HashEmbedder:
    """Signed feature hashing into `dimension` buckets (xxh64, fixed seed)."""

    def __init__(self, dimension: int, seed: int = 0x5EED) -> None:
        self.dimension = dimension
        self.seed = seed

    def _features(self, text: str) -> list[str]:
        words = [w.lower() for w in _WORD.findall(text)]
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
        for w in words:
            padded = f"<{w}>"
            feats += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
        return feats

    def embed_one(self, text: str) -> np.ndarray:
        feats = self._features(text)
        if not feats:
            raise EmptyText("has no words to embed")
        vec = np.zeros(self.dimension, dtype=np.float64)
        for f in feats:
            h = xxhash.xxh64_intdigest(f.encode(), seed=self.seed)
            vec[h % self.dimension] += 1.0 if (h >> 63) & 1 else -1.0
        vec = np.sign(vec) * np.log1p(np.abs(vec))
        norm = np.linalg.norm(vec)
        if norm == 0:
            # Every feature cancelled out: fall back to the unsigned counts.
            for f in feats:
                vec[xxhash.xxh64_intdigest(f.encode(), seed=self.seed) % self.dimension] += 1.0
            norm = np.linalg.norm(vec)
        return (vec / norm).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self.embed_one(t) for t in texts])


def get_embedder(name: str, dimension: int) -> Embedder:
    if name == "hash":
        return HashEmbedder(dimension)
    raise ValueError(f"embedder: unknown embedder {name!r} (known: ['hash'])")
