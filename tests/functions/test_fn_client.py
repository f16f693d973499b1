"""`brainy.Client` against the real functions (functions-framework servers on a local
folder bucket), and the README's client example run as pasted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import COLLECTION, DIMENSION, Deployment, Launcher, start_deployment

import brainy
from brainy.table.manifest import Manifests
from readme import python_blocks
from servers import new_store_url

# The addresses the README's example uses, replaced by the servers' own.
README_INGEST = "http://127.0.0.1:8081"
README_SEARCH = "http://127.0.0.1:8082"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    url = new_store_url("file", tmp_path_factory.mktemp("bucket-client"))
    deployed = start_deployment("file", url, {}, tmp_path_factory.mktemp("deploy-client"))
    try:
        yield deployed
    finally:
        deployed.stop()


@pytest.fixture
def client(deployment: Deployment) -> brainy.Client:
    return brainy.Client(ingest_url=deployment.ingest.url, search_url=deployment.search.url)


def _index(deployment: Deployment, written: brainy.WriteResult) -> int:
    """Deliver the batches' events to the indexer, as the platform would; wait until
    the search function sees the last version."""
    version = 0
    for key in written.batches:
        version = deployment.index(key)
    reply = deployment.query([1.0] * DIMENSION, min_version=version)
    assert reply.status == 200, str(reply)
    return version


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIMENSION)).astype(np.float32)


def test_the_readme_client_example_runs_as_pasted(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    write, search = (
        code.replace(README_INGEST, deployment.ingest.url).replace(
            README_SEARCH, deployment.search.url
        )
        for code in python_blocks("Python", "Client")
    )
    namespace: dict = {}
    exec(compile(write, "README.md (Python, Client 1)", "exec"), namespace)
    written = namespace["written"]
    assert written.accepted == 2 and len(written.batches) == 1
    _index(deployment, written)
    exec(compile(search, "README.md (Python, Client 2)", "exec"), namespace)
    hits = namespace["hits"]
    assert hits[0].id == "a" and hits[0].score == pytest.approx(1.0)
    assert hits[0].metadata == {"lang": "en"}
    assert (
        "vector expected 8 numbers (the collection's dimension), got 3" in capsys.readouterr().out
    )


def test_upsert_then_search_and_batch_search(deployment: Deployment, client: brainy.Client) -> None:
    docs = client.collection(COLLECTION)
    x = _vectors(30, seed=1)
    ids = [f"c{i}" for i in range(30)]
    written = docs.upsert(ids, x, metadata=[{"i": i} for i in range(30)], batch_size=10)
    assert (written.accepted, len(written.batches), written.version) == (30, 3, None)
    version = _index(deployment, written)
    result = docs.search(vector=x[7], k=1, min_version=version)
    assert isinstance(result, brainy.SearchResult) and result.version >= version
    assert (result[0].id, result[0].metadata) == ("c7", {"i": 7})
    batch = docs.search_batch(x[:5], k=3, min_version=version)
    assert [r.ids for r in batch] == [docs.search(vector=q, k=3).ids for q in x[:5]]
    removed = docs.delete(["c7"])
    assert removed.deleted == 1
    version = _index(deployment, removed)
    assert "c7" not in docs.search(vector=x[7], k=5, min_version=version).ids


def test_errors_are_the_embedded_types_naming_the_row_of_the_call(
    deployment: Deployment, client: brainy.Client, tmp_path: Path
) -> None:
    rows = _vectors(6, seed=2).tolist()
    rows[5] = rows[5][:-1]
    ids = [f"bad{i}" for i in range(6)]
    with pytest.raises(brainy.InvalidInput) as remote:
        client.collection(COLLECTION).upsert(ids, rows, batch_size=2)
    with (
        brainy.connect(
            deployment.store_url, mode="write-only", cache_dir=str(tmp_path / "cache")
        ) as db,
        pytest.raises(brainy.InvalidInput) as embedded,
    ):
        db.collection(COLLECTION).upsert(ids, rows, batch_size=2)
    assert remote.value.field == embedded.value.field == "records[5].vector"
    assert remote.value.reason == embedded.value.reason
    with pytest.raises(brainy.UnknownCollection):
        client.collection("nope").search(vector=[1.0] * DIMENSION)
    with pytest.raises(brainy.InvalidInput) as err:
        client.collection(COLLECTION).search_batch([[1.0] * DIMENSION, [1.0, float("nan")]])
    assert err.value.field.startswith("vectors[1]")


def test_a_retried_call_with_its_key_writes_nothing_twice(
    deployment: Deployment, client: brainy.Client
) -> None:
    docs = client.collection(COLLECTION)
    x = _vectors(4, seed=3)
    first = docs.upsert(["k0", "k1", "k2", "k3"], x, batch_size=2, idempotency_key="job-42")
    before = len(deployment.wal_keys())
    again = docs.upsert(["k0", "k1", "k2", "k3"], x, batch_size=2, idempotency_key="job-42")
    assert again.batches == first.batches and len(deployment.wal_keys()) == before
    with pytest.raises(brainy.IdempotencyConflict):
        docs.upsert(["k0", "k1"], x[:2] + 1, batch_size=2, idempotency_key="job-42")


def test_a_batch_over_the_body_limit_is_split(
    deployment: Deployment, client: brainy.Client
) -> None:
    x = _vectors(1500, seed=4)  # ~190 kB of JSON; the functions take 64 kB a body
    written = client.collection(COLLECTION).upsert([f"big{i}" for i in range(1500)], x)
    assert written.accepted == 1500 and len(written.batches) >= 4


def test_compact_through_the_compactor(deployment: Deployment, launch: Launcher) -> None:
    compactor = launch("compactor", deployment.store_url)
    client = brainy.Client(
        ingest_url=deployment.ingest.url,
        search_url=deployment.search.url,
        compactor_url=compactor.url,
    )
    docs = client.collection(COLLECTION)
    for i in range(3):
        _index(deployment, docs.upsert([f"m{i}"], _vectors(1, seed=10 + i)))
    report = docs.compact(force=True)
    assert report["collection"] == COLLECTION and report["verify"]["ok"]
    merged = Manifests(deployment.store, COLLECTION).latest()
    assert merged is not None and len(merged.segments) == 1  # every level-0 segment merged
