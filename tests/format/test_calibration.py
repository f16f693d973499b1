"""Build-time calibration: a segment large enough to be searched through Annoy
records, per recall target, the search_k that reaches it (or that a scan is the
way); a small one records nothing, and old headers without it still read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainy.format import calibration
from brainy.format.segment import (
    SegmentHeader,
    SegmentRows,
    build_segment,
    read_segment_header,
    upload_segment,
)
from brainy.storage import open_store


def _rows(n: int, dim: int = 16, seed: int = 3) -> SegmentRows:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return SegmentRows(
        ids=[str(i) for i in range(n)],
        timestamps=np.arange(n, dtype=np.int64),
        writers=["w"] * n,
        metadata=[None] * n,
        vectors=vectors,
    )


def _header(tmp_path, rows: SegmentRows, **kw) -> SegmentHeader:
    store = open_store("memory://")
    built = build_segment(rows, n_trees=8, seed=0, workdir=tmp_path, **kw)
    return read_segment_header(store, upload_segment(store, "c", built))


@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
def test_a_segment_above_the_exact_threshold_records_its_calibration(tmp_path, metric):
    header = _header(tmp_path, _rows(5000), metric=metric, calibrate_above=1000)

    cal = header.calibration
    assert cal is not None
    assert cal["k"] == 10
    assert set(cal["search_k"]) == set(cal["exact"]) == {"0.9", "0.95", "0.99"}
    reached = [cal["search_k"][level] for level in ("0.9", "0.95", "0.99")]
    known = [s for s in reached if s is not None]
    assert known == sorted(known), "search_k must not fall as the target rises"
    # A level Annoy cannot reach (None) is searched exactly.
    assert all(cal["exact"][level] for level, s in cal["search_k"].items() if s is None)
    assert all(s <= 5000 * 8 for s in known)


def test_a_segment_at_or_below_the_threshold_or_not_asked_records_none(tmp_path):
    assert _header(tmp_path, _rows(800), metric="angular", calibrate_above=1000).calibration is None
    assert _header(tmp_path, _rows(5000), metric="angular").calibration is None


def test_calibration_is_seeded_and_left_out_of_slim_headers(tmp_path, monkeypatch):
    # A scan never faster: where the doubling stops then depends on recall alone.
    monkeypatch.setattr(calibration, "exact_seconds", lambda *_: float("inf"))
    rows = _rows(3000)
    store = open_store("memory://")
    keys = []
    for _ in range(2):
        built = build_segment(
            rows, metric="angular", n_trees=8, seed=7, workdir=tmp_path, calibrate_above=100
        )
        keys.append(upload_segment(store, "c", built))
    first, second = (read_segment_header(store, key) for key in keys)

    assert first.calibration is not None
    assert first.calibration["search_k"] == second.calibration["search_k"]
    assert read_segment_header(store, keys[0], metadata=False).calibration is None


def test_a_header_written_before_calibration_still_reads():
    old = {
        "format": 2,
        "dimension": 2,
        "metric": "angular",
        "count": 1,
        "ids": ["a"],
        "timestamps": [1],
        "writers": ["w"],
        "metadata": [None],
    }

    header = SegmentHeader.from_json(json.dumps(old).encode())

    assert header.calibration is None
    assert header.ids == ["a"]
