"""Sketches at the end of a segment object: written by a build of a small enough
segment, read by one ranged GET and checked against the span the manifest keeps,
close enough to the rows to rank them, and leaving the segment readable whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainy.format.segment import (
    CorruptSegment,
    SegmentRows,
    build_segment,
    load_segment,
    read_sketch,
    read_sketched_header,
    upload_segment,
)
from brainy.format.sketch import CorruptSketch, Sketch, SketchSpan
from brainy.storage import open_store

DIM = 24
METRICS = ["angular", "euclidean", "dot"]


def _rows(vectors: np.ndarray) -> SegmentRows:
    n = len(vectors)
    return SegmentRows(
        ids=[f"id-{i}" for i in range(n)],
        timestamps=np.arange(n, dtype=np.int64),
        writers=["w"] * n,
        metadata=[{"i": i} for i in range(n)],
        vectors=vectors,
    )


def _built(tmp_path: Path, metric: str, n: int = 1500, sketch_up_to: int | None = 10_000):
    rng = np.random.default_rng(3)
    vectors = (rng.standard_normal((n, DIM)) * rng.uniform(0.5, 2, DIM)).astype(np.float32)
    built = build_segment(
        _rows(vectors), metric=metric, n_trees=4, seed=1, workdir=tmp_path,
        sketch_up_to=sketch_up_to,
    )  # fmt: skip
    store = open_store(f"memory://sketch-{metric}-{tmp_path.name}-{n}")
    return vectors, built, store, upload_segment(store, "c", built)


@pytest.mark.parametrize("metric", METRICS)
def test_a_sketch_ranks_rows_as_their_vectors_do(tmp_path: Path, metric: str):
    vectors, built, store, key = _built(tmp_path, metric)
    assert built.sketch is not None
    sketch = read_sketch(store, key, built.sketch)
    assert sketch.count == len(vectors) and sketch.dimension == DIM
    # Each code is the nearest level of its dimension: off by at most half a step.
    restored = sketch.codes * sketch.step + sketch.lo
    assert np.all(np.abs(restored - vectors) <= sketch.step / 2 + 1e-5)
    assert np.allclose(sketch.norms, np.linalg.norm(vectors, axis=1), rtol=1e-5)
    rng = np.random.default_rng(9)
    for q in rng.standard_normal((20, DIM)).astype(np.float32):
        if metric == "angular":
            exact = vectors @ q / np.linalg.norm(vectors, axis=1)
        elif metric == "dot":
            exact = vectors @ q
        else:
            exact = -np.linalg.norm(vectors - q, axis=1)
        assert int(np.argmax(exact)) in np.argsort(-sketch.scores(q))[:5].tolist()


def test_the_sketch_leads_to_the_rows_and_header_it_describes(tmp_path: Path):
    vectors, built, store, key = _built(tmp_path, "angular")
    sketch = read_sketch(store, key, built.sketch)
    start, stride, at = sketch.vectors
    row = 777
    data = store.get(key, byte_range=(start + row * stride, start + (row + 1) * stride - 1)).data
    got = np.frombuffer(data, "<f4", DIM, at)
    assert np.array_equal(got, vectors[row])
    sketch.check_rows(np.array([row]), got[None, :], key)
    bent = got.copy()
    bent[3] *= 4
    with pytest.raises(CorruptSketch, match="do not match"):
        sketch.check_rows(np.array([row]), bent[None, :], key)
    header = read_sketched_header(store, key, sketch)
    assert header.ids[row] == f"id-{row}" and header.metadata[row] == {"i": row}
    # A query keeps its candidates' part only: nothing of the bytes read.
    kept = sketch.only(np.array([row]))
    assert kept.count == 1 and np.array_equal(kept.codes[0], sketch.codes[row])
    for name in ("lo", "step", "norms", "codes"):
        assert not np.shares_memory(getattr(kept, name), getattr(sketch, name)), name
    kept.check_rows(np.array([0]), got[None, :], key)


def test_a_sketch_that_fails_its_checksum_is_refused(tmp_path: Path):
    _, built, store, key = _built(tmp_path, "angular")
    span = built.sketch
    assert SketchSpan.parse(str(span)) == span
    wrong = replace(span, checksum="0" * 16)
    with pytest.raises(CorruptSketch, match="checksum"):
        read_sketch(store, key, wrong)
    data = bytearray(store.get(key, byte_range=(span.offset, span.offset + span.length - 1)).data)
    data[len(data) // 2] ^= 1
    with pytest.raises(CorruptSketch, match="checksum"):
        Sketch.decode(bytes(data), span, key)
    with pytest.raises(CorruptSketch):
        read_sketched_header(store, key, replace(read_sketch(store, key, span), header=(10, "0")))


@pytest.mark.parametrize("in_place", [False, True])
def test_a_sketched_segment_still_loads_whole(tmp_path: Path, in_place: bool):
    """The Annoy file ends where the header says, not at the end of the object."""
    vectors, built, store, key = _built(tmp_path, "euclidean")
    loaded = load_segment(store, key, built.id, tmp_path / "cache", in_place=in_place)
    assert np.array_equal(loaded.vectors, vectors)
    assert loaded.index is not None and loaded.index.get_n_items() == len(vectors)
    assert loaded.index.get_nns_by_vector(vectors[5].tolist(), 1) == [5]
    # The cache holds its header and index, not its sketch (read in place: the
    # object downloaded whole, verified, then cut short).
    assert loaded.size <= built.sketch.offset
    if in_place:
        cached = tmp_path / "cache" / f"{built.id}.seg"
        assert cached.stat().st_size == loaded.size
        sent = dict(store.requests)
        again = load_segment(store, key, built.id, tmp_path / "cache", in_place=True)
        assert dict(store.requests) == sent  # found in the cache: nothing fetched
        assert np.array_equal(again.vectors, vectors)
    data = bytearray(store.get(key).data)
    data[-3] ^= 1  # the sketch is covered by the segment's digest too
    store.put(key, bytes(data))
    with pytest.raises(CorruptSegment, match="checksum"):
        load_segment(store, key, built.id, tmp_path / "other", in_place=in_place)


def test_only_segments_up_to_the_bound_are_sketched(tmp_path: Path):
    _, built, _, _ = _built(tmp_path, "dot", n=300, sketch_up_to=299)
    assert built.sketch is None
    _, built, _, _ = _built(tmp_path, "dot", n=300, sketch_up_to=None)
    assert built.sketch is None
    _, built, _, _ = _built(tmp_path, "dot", n=300, sketch_up_to=300)
    assert built.sketch is not None
