"""The storage contract: every backend behaves the same to the code above it.

Each test runs against memory, a local folder, a real moto S3 server and a real
fake-gcs-server (the `store` fixture), over HTTP where there is HTTP.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from brainy.storage import (
    Blob,
    NotFound,
    NotModified,
    ObjectStore,
    PreconditionFailed,
    ReadOnlyStore,
    open_store,
)
from faults import ClockSkewedStore, FaultyStore

MiB = 1024 * 1024
RACERS = 8


def race(n: int, attempt: Callable[[int], object]) -> list[object]:
    """Run `attempt(i)` in `n` threads released together; each result or the exception raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> object:
        barrier.wait()
        try:
            return attempt(i)
        except Exception as err:
            return err

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def wire_requests(store: ObjectStore) -> Callable[[], int]:
    """A counter of HTTP requests the store's client actually sends (0 for local stores)."""
    sent = [0]

    def count(**_: object) -> None:
        sent[0] += 1

    if store.scheme == "s3":
        store.client.meta.events.register("before-send.s3", count)  # type: ignore[attr-defined]
    elif store.scheme == "gs":
        session = store.client._http  # type: ignore[attr-defined]
        session.hooks["response"].append(lambda response, *a, **k: count())
    return lambda: sent[0]


def test_put_then_get_round_trips_bytes_and_etag(store: ObjectStore) -> None:
    written_at = time.time()
    etag = store.put("docs/a.bin", b"\x00hello\xff")

    blob = store.get("docs/a.bin")
    assert blob.data == b"\x00hello\xff"
    assert blob.etag == etag
    info = store.head("docs/a.bin")
    assert (info.key, info.size, info.etag) == ("docs/a.bin", 7, etag)
    # Garbage collection ages objects by this; servers keep whole seconds.
    assert written_at - 2 <= info.modified <= time.time() + 2
    assert list(store.list("docs/")) == [info]
    assert store.exists("docs/a.bin")


def test_missing_object_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get("nope/missing.json")
    with pytest.raises(NotFound):
        store.head("nope/missing.json")
    assert not store.exists("nope/missing.json")


def test_put_if_absent_wins_once(store: ObjectStore) -> None:
    first = store.put("manifests/1.json", b"first", if_absent=True)

    with pytest.raises(PreconditionFailed):
        store.put("manifests/1.json", b"second", if_absent=True)
    assert store.get("manifests/1.json") == Blob(b"first", first)


def test_put_if_absent_race_has_exactly_one_winner(store: ObjectStore) -> None:
    results = race(RACERS, lambda i: store.put("manifests/7.json", b"w%d" % i, if_absent=True))

    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, PreconditionFailed) for r in results if not isinstance(r, str))
    assert store.get("manifests/7.json").data == b"w%d" % winners[0]


def test_put_if_match_swaps_only_the_current_etag(store: ObjectStore) -> None:
    v1 = store.put("_brainy/config.json", b"v1")
    v2 = store.put("_brainy/config.json", b"v2", if_match=v1)
    assert v2 != v1

    with pytest.raises(PreconditionFailed):
        store.put("_brainy/config.json", b"stale", if_match=v1)
    blob = store.get("_brainy/config.json")
    assert (blob.data, blob.etag) == (b"v2", v2)
    with pytest.raises(PreconditionFailed):
        store.put("_brainy/absent.json", b"x", if_match=v2)
    assert not store.exists("_brainy/absent.json")


def test_compare_and_swap_race_has_exactly_one_winner(store: ObjectStore) -> None:
    base = store.put("_brainy/locks/compact", b"free")

    results = race(
        RACERS, lambda i: store.put("_brainy/locks/compact", b"held-by-%d" % i, if_match=base)
    )

    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    assert len(winners) == 1, results
    assert store.get("_brainy/locks/compact").data == b"held-by-%d" % winners[0]


def test_delete_removes_and_tolerates_missing(store: ObjectStore) -> None:
    store.put("wal/b1.batch", b"x")

    store.delete("wal/b1.batch")
    assert not store.exists("wal/b1.batch")
    store.delete("wal/b1.batch")  # already gone: not an error


def test_delete_if_match_refuses_a_stale_etag(store: ObjectStore) -> None:
    old = store.put("_brainy/locks/l", b"lease-1")
    new = store.put("_brainy/locks/l", b"lease-2")

    with pytest.raises(PreconditionFailed):
        store.delete("_brainy/locks/l", if_match=old)
    assert store.get("_brainy/locks/l").data == b"lease-2"
    store.delete("_brainy/locks/l", if_match=new)
    assert not store.exists("_brainy/locks/l")
    with pytest.raises(NotFound):
        store.delete("_brainy/locks/l", if_match=new)


def test_get_if_none_match_is_not_modified_until_the_object_changes(store: ObjectStore) -> None:
    etag = store.put("manifests/_latest", b"3")

    with pytest.raises(NotModified):
        store.get("manifests/_latest", if_none_match=etag)
    newer = store.put("manifests/_latest", b"4")
    blob = store.get("manifests/_latest", if_none_match=etag)
    assert (blob.data, blob.etag) == (b"4", newer)


def test_ranged_get_returns_inclusive_byte_ranges(store: ObjectStore) -> None:
    data = bytes(range(256))
    etag = store.put("segments/s1/index.ann", data)

    assert store.get("segments/s1/index.ann", byte_range=(0, 0)).data == b"\x00"
    assert store.get("segments/s1/index.ann", byte_range=(10, 19)).data == data[10:20]
    tail = store.get("segments/s1/index.ann", byte_range=(250, 255))
    assert (tail.data, tail.etag) == (data[250:], etag)


def test_list_by_prefix_is_sorted_and_sized(store: ObjectStore) -> None:
    for key, size in [("c/wal/2", 2), ("c/wal/1", 1), ("c/wal/x/3", 3), ("c/walrus", 4)]:
        store.put(key, b"z" * size)
    store.put("d/wal/1", b"other")

    listed = [(o.key, o.size) for o in store.list("c/wal/")]
    assert listed == [("c/wal/1", 1), ("c/wal/2", 2), ("c/wal/x/3", 3)]
    assert [o.key for o in store.list("c/wal")][-1] == "c/walrus"
    assert len(list(store.list(""))) == 5
    assert list(store.list("zzz/")) == []
    etags = {o.key: o.etag for o in store.list("c/")}
    assert etags["c/wal/1"] == store.head("c/wal/1").etag


@pytest.fixture(scope="module")
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MiB of seeded random bytes: enough for a multipart upload on S3."""
    path = tmp_path_factory.mktemp("large") / "segment.bin"
    path.write_bytes(random.Random(7).randbytes(12 * MiB))
    return path


def test_upload_and_download_a_large_file_byte_exact(
    store: ObjectStore, large_file: Path, tmp_path: Path
) -> None:
    etag = store.upload("segments/big/data.bin", large_file, if_absent=True)

    info = store.head("segments/big/data.bin")
    assert (info.size, info.etag) == (large_file.stat().st_size, etag)
    out = tmp_path / "cache" / "data.bin"
    store.download("segments/big/data.bin", out)
    assert out.read_bytes() == large_file.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["data.bin"]
    with pytest.raises(PreconditionFailed):
        store.upload("segments/big/data.bin", large_file, if_absent=True)
    with pytest.raises(NotFound):
        store.download("segments/big/missing.bin", tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


def test_upload_small_file_and_overwrite(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "small.json"
    src.write_bytes(b'{"v": 1}')
    first = store.upload("c/small.json", src)
    src.write_bytes(b'{"v": 2}')

    second = store.upload("c/small.json", src)
    assert second != first
    assert store.get("c/small.json").data == b'{"v": 2}'


def test_read_only_store_refuses_writes_without_sending_anything(
    store: ObjectStore, tmp_path: Path
) -> None:
    etag = store.put("c/manifests/1.json", b"committed")
    reader = open_store(store.url, read_only=True)
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    assert reader.get("c/manifests/1.json").data == b"committed"
    before = dict(reader.requests)
    on_wire = wire_requests(reader)

    with pytest.raises(ReadOnlyStore):
        reader.put("c/manifests/2.json", b"x", if_absent=True)
    with pytest.raises(ReadOnlyStore):
        reader.delete("c/manifests/1.json", if_match=etag)
    with pytest.raises(ReadOnlyStore):
        reader.upload("c/f.bin", src)
    assert dict(reader.requests) == before
    assert on_wire() == 0
    assert store.get("c/manifests/1.json").etag == etag
    reader.close()


def test_requests_are_counted_by_kind(store: ObjectStore, tmp_path: Path) -> None:
    store.put("k", b"v")
    store.get("k")
    store.head("k")
    list(store.list(""))
    store.download("k", tmp_path / "k")
    store.delete("k")

    assert dict(store.requests) == {
        "put": 1,
        "get": 1,
        "head": 1,
        "list": 1,
        "download": 1,
        "delete": 1,
    }


def test_conditional_writes_are_honoured(store: ObjectStore) -> None:
    store.check_conditional_writes("_brainy/probe")

    assert list(store.list("_brainy/")) == []


def test_a_cold_start_probing_in_the_middle_of_another_does_not_fail_it(
    store: ObjectStore,
) -> None:
    """Two cold starts of one function share its instance id, so they probe under
    the same name. The second runs its whole probe between the first's put and
    put-if-absent: both must still find the store honest."""
    probe = "_brainy/probes/ingest-1"
    others: list[None] = []

    def the_other_cold_start(n: int, op: str, key: str) -> None:
        if n == 2:  # the first probe's put-if-absent
            others.append(store.check_conditional_writes(probe))

    FaultyStore(store, before=the_other_cold_start).check_conditional_writes(probe)

    assert others == [None]
    assert list(store.list("_brainy/")) == []


def test_a_store_on_this_machine_measures_no_clock_skew(store: ObjectStore) -> None:
    assert store.measure_clock_skew("_brainy/probes/clock") == 0.0
    assert list(store.list("_brainy/")) == []


@pytest.mark.parametrize("offset", [-120.0, 120.0], ids=["store-behind", "store-ahead"])
def test_clock_skew_is_measured_against_the_store_clock(store: ObjectStore, offset: float) -> None:
    skewed = ClockSkewedStore(store, offset)

    skew = skewed.measure_clock_skew("_brainy/probes/clock")

    # Positive when the local clock is ahead, within the store's 1 s resolution and
    # the round trip of the put.
    assert abs(skew + offset) <= 2.0
    assert list(store.list("_brainy/")) == []


@pytest.mark.parametrize(
    "key",
    [
        "with space/a b.json",
        "unicodé/ключ/🔑.bin",
        "plus+sign/a+b",
        "percent%20stays/%2F",
        "query?and#hash&eq=1",
        "tilde~(paren)!'*",
    ],
)
def test_awkward_keys_round_trip(store: ObjectStore, key: str) -> None:
    etag = store.put(key, key.encode())

    assert store.get(key).data == key.encode()
    assert [(o.key, o.etag) for o in store.list(key.split("/")[0])] == [(key, etag)]
    store.delete(key, if_match=etag)
    assert not store.exists(key)


def test_s3_downloads_an_object_past_the_streamed_limit_in_parts(
    store_url: Callable[[str], str], tmp_path: Path
) -> None:
    """Up to `STREAMED_PARTS` parts an object is one streamed GET; past it, the
    GET is dropped after its headers and the object fetched in parallel parts."""
    from brainy.storage.s3 import STREAMED_PARTS, S3Store

    opened = open_store(store_url("s3"))
    assert isinstance(opened, S3Store)
    store = S3Store(opened.bucket, opened.prefix, part_size=5 * MiB)
    size = STREAMED_PARTS * 5 * MiB + 12345
    data = random.Random(11).randbytes(size)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.upload("segments/big/data.bin", src)
    sent: list[dict] = []
    store.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: sent.append(params["headers"])
    )
    out = tmp_path / "out.bin"
    store.download("segments/big/data.bin", out)
    assert out.read_bytes() == data
    ranged = [h["Range"] for h in sent if "Range" in h]
    assert len(ranged) == STREAMED_PARTS + 1  # the parts, after one plain GET
    assert len(sent) == len(ranged) + 1
    opened.close()
    store.close()
