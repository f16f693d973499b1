"""The segment cache under pressure: a cache far smaller than what concurrent queries
need keeps evicting segments other queries are still searching, and every query
must still answer, and answer right."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xxhash

from brainy.format.segment import ALIGN, CorruptSegment, load_segment
from helpers import declare, make_app

COLLECTIONS = ("exact-a", "exact-b", "approx")
SEGMENTS = 4  # per collection: one per indexed batch
ROWS = 40
DIM = 16
QUERIES = 240


def test_eviction_never_breaks_a_running_query(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((len(COLLECTIONS), SEGMENTS, ROWS, DIM)).astype(np.float32)
    writer = make_app(url, tmp_path)
    for c, name in enumerate(COLLECTIONS):
        # Both search paths read the mapped index: exact via the vectors, approximate
        # via Annoy and then the vectors of its candidates.
        declare(writer, name=name, dimension=DIM, exact_threshold=0 if name == "approx" else 10**4)
        for s in range(SEGMENTS):
            records = [
                {"id": f"{name}-{s}-{i}", "vector": vectors[c, s, i].tolist()} for i in range(ROWS)
            ]
            writer.index_key(writer.ingest({"collection": name, "records": records}).batch)

    # One byte: every lookup evicts every segment its own query does not need.
    reader = make_app(url, tmp_path, role="search", BRAINY_CACHE_SIZE="1")

    def ask(n: int) -> tuple[str, str]:
        c, s, i = n % len(COLLECTIONS), (n // 3) % SEGMENTS, n % ROWS
        name = COLLECTIONS[c]
        hits = reader.search({"collection": name, "vector": vectors[c, s, i].tolist(), "k": 3}).hits
        return hits[0].id, f"{name}-{s}-{i}"

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(QUERIES)))
    assert [found for found, _ in answers] == [expected for _, expected in answers]

    # Once the burst is over, the cache holds what one query needs, nothing more;
    # read in place from the folder store, nothing was copied into its folder (the
    # indexes approximate searches copied out are unlinked once mapped).
    ask(0)
    cache = reader.searcher.cache
    needed = {ref.id for ref in reader.manifests(COLLECTIONS[0]).latest().segments}
    assert set(cache._entries) == needed
    assert not list(cache.cache_dir.iterdir())


def test_a_segment_evicted_by_another_process_between_check_and_open_is_fetched_again(
    tmp_path: Path,
):
    """Gunicorn workers share a cache folder: one may unlink a segment's files just
    after another found them there. The loader fetches them again."""
    from brainy.format.segment import load_segment

    url = f"file://{tmp_path / 'bucket'}"
    app = make_app(url, tmp_path)
    declare(app)
    rng = np.random.default_rng(2)
    records = [{"id": f"r{i}", "vector": rng.standard_normal(8).tolist()} for i in range(5)]
    app.index_key(app.ingest({"collection": "docs", "records": records}).batch)
    ref = app.manifests("docs").latest().segments[0]
    cache = tmp_path / "shared-cache"
    load_segment(app.store, ref.key, ref.id, cache)
    head = cache / f"{ref.id}.json"
    real_read = Path.read_bytes
    evicted = []

    def evict_once(self: Path) -> bytes:
        if self == head and not evicted:
            evicted.append(self)
            for suffix in (".ann", ".json"):
                (cache / f"{ref.id}{suffix}").unlink()
        return real_read(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_bytes", evict_once)
        loaded = load_segment(app.store, ref.key, ref.id, cache)
    assert evicted and loaded.count == 5 and loaded.header.ids[0] == "r0"


def _one_segment(tmp_path: Path, exact_threshold: int) -> tuple[str, np.ndarray]:
    url = f"file://{tmp_path / 'store'}"
    vectors = np.random.default_rng(2).standard_normal((300, DIM)).astype(np.float32)
    writer = make_app(url, tmp_path)
    declare(writer, dimension=DIM, exact_threshold=exact_threshold)
    records = [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(vectors)]
    writer.index_key(writer.ingest({"collection": "docs", "records": records}).batch)
    return url, vectors


def test_a_folder_stores_segments_are_read_in_place(tmp_path: Path):
    """A folder store's segment is verified and mapped where it lies: no download,
    nothing left in the cache's folder (the Annoy index, copied out on its first
    use, is unlinked once mapped), and it keeps answering once the object is gone
    from the store (GC), the mappings being the search's own."""
    url, vectors = _one_segment(tmp_path, 10_000)
    reader = make_app(url, tmp_path, role="search")

    def ask(i: int) -> str:
        found = reader.search({"collection": "docs", "vector": vectors[i].tolist(), "k": 1})
        return found.hits[0].id

    assert ask(5) == "5"
    cache = reader.searcher.cache
    assert reader.store.requests["open"] == 1 and not reader.store.requests["download"]
    (ref,) = reader.manifests("docs").latest().segments
    (seg,) = cache.get_many([ref])
    assert seg.loaded._index is None  # scanned: the index was never needed
    (tmp_path / "store" / ref.key).unlink()
    assert seg.loaded.index is not None
    assert seg.loaded.index.get_nns_by_vector(vectors[9].tolist(), 1) == [9]
    assert not list(cache.cache_dir.iterdir())
    assert [ask(i) for i in (7, 250)] == ["7", "250"]


def test_a_corrupt_segment_in_a_folder_store_is_refused_in_place(tmp_path: Path):
    """Read in place, a segment is still checked against its digest: a flipped byte,
    or an empty file, is a clear error, not a wrong answer."""
    url, vectors = _one_segment(tmp_path, 10_000)
    reader = make_app(url, tmp_path, role="search")
    (ref,) = reader.manifests("docs").latest().segments
    path = tmp_path / "store" / ref.key
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSegment, match="checksum mismatch"):
        reader.search({"collection": "docs", "vector": vectors[0].tolist(), "k": 1})
    path.write_bytes(b"")
    with pytest.raises(CorruptSegment, match="not a Brainy segment"):
        reader.search({"collection": "docs", "vector": vectors[0].tolist(), "k": 1})


def test_a_segment_written_before_padded_headers_is_read_from_an_aligned_copy(tmp_path: Path):
    """A segment's header is padded so its vectors start aligned in the object; one
    written before (its header unpadded, its vectors misaligned in place) is copied
    into the cache instead, and answers as any other."""
    url, vectors = _one_segment(tmp_path, 10_000)
    reader = make_app(url, tmp_path, role="search")
    (ref,) = reader.manifests("docs").latest().segments
    path = tmp_path / "store" / ref.key
    data = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", data, 24)
    assert (32 + hlen) % ALIGN == 0
    # The same segment as an older build wrote it: no padding, so a new digest (and
    # id) over the shorter header; published under that id in a fresh manifest.
    header = data[32 : 32 + hlen].rstrip(b" ")
    rest = struct.pack("<Q", len(header)) + header + data[32 + hlen :]
    digest = xxhash.xxh3_128(rest)
    old_id = digest.hexdigest()
    old = ref.key.replace(ref.id, old_id)
    (tmp_path / "store" / old).parent.mkdir(parents=True)
    (tmp_path / "store" / old).write_bytes(data[:8] + digest.digest() + rest)
    loaded = load_segment(reader.store, old, old_id, tmp_path / "old-cache", in_place=True)
    assert reader.store.requests["download"] == 1  # copied, not read in place
    assert np.array_equal(loaded.vectors, vectors)
    assert loaded.vectors.ctypes.data % 4 == 0
