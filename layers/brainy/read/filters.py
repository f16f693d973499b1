"""Equality filters on metadata: per segment and field, which rows hold a value."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class FilterIndex:
    """Per segment and metadata field: value → the rows holding it, built on first use."""

    def __init__(self, metadata: list[Any]) -> None:
        self.metadata = metadata
        self._fields: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def rows(self, field: str, value: Any) -> np.ndarray:
        with self._lock:
            index = self._fields.get(field)
            if index is None:
                buckets: dict[str, list[int]] = {}
                for row, meta in enumerate(self.metadata):
                    if isinstance(meta, Mapping) and field in meta:
                        buckets.setdefault(_canonical(meta[field]), []).append(row)
                index = {k: np.asarray(v, dtype=np.int64) for k, v in buckets.items()}
                self._fields[field] = index
        return index.get(_canonical(value), np.zeros(0, dtype=np.int64))

    def matching(self, filters: Mapping[str, Any]) -> np.ndarray:
        result: np.ndarray | None = None
        for field, value in filters.items():
            rows = self.rows(field, value)
            result = rows if result is None else np.intersect1d(result, rows, assume_unique=True)
        return result if result is not None else np.zeros(0, dtype=np.int64)
