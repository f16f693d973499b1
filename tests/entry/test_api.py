"""`brainy.connect`: the embedded Python API, on a local-folder store, as a user
calls it (and the README's example, run as pasted)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import brainy
from brainy.storage import open_store
from readme import python_blocks

DIM = 8


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'bucket'}"


@pytest.fixture
def db(url: str, tmp_path: Path) -> Iterator[brainy.Database]:
    with brainy.connect(url, cache_dir=str(tmp_path / "cache"), refresh_interval=0) as db:
        yield db


def _vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _objects(url: str, prefix: str) -> list[str]:
    store = open_store(url)
    try:
        return [info.key for info in store.list(prefix)]
    finally:
        store.close()


def test_the_readme_example_runs_as_pasted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # its cache, beside its store
    for var in ("BRAINY_STORE", "BRAINY_S3_BUCKET", "BRAINY_MODE", "BRAINY_ROLE"):
        monkeypatch.delenv(var, raising=False)
    (code,) = python_blocks("Python", "Embedded")
    exec(compile(code, "README.md (Python, Embedded)", "exec"), {})
    out = capsys.readouterr().out
    assert "1000 records in 1 batches; version 1" in out
    assert "records[1].vector: expected 8 numbers (the collection's dimension), got 7" in out
    assert "['doc-1']" in out
    assert (tmp_path / "brainy-data" / "_brainy" / "config.json").exists()


def test_upsert_a_matrix_then_search_sees_it(db: brainy.Database) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    x = _vectors(2500)
    ids = [f"r{i}" for i in range(2500)]
    written = docs.upsert(ids, x, metadata=[{"i": i} for i in range(2500)], batch_size=1000)
    assert (written.accepted, written.deleted, len(written.batches)) == (2500, 0, 3)
    assert written.version == 3
    result = docs.search(vector=x[1234], k=3)
    assert isinstance(result, brainy.SearchResult) and len(result) == 3
    hit = result[0]
    assert isinstance(hit, brainy.Hit)
    assert (hit.id, hit.metadata) == ("r1234", {"i": 1234})
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert result.version == 3 and result.ids[0] == "r1234"


def test_every_input_form_upserts_the_same_records(db: brainy.Database) -> None:
    x = _vectors(3)
    forms = {
        "matrix": lambda c: c.upsert(["a", "b", "c"], x, metadata=[{"n": 0}, None, {"n": 2}]),
        "lists": lambda c: c.upsert(
            ["a", "b", "c"], x.tolist(), metadata=[{"n": 0}, None, {"n": 2}]
        ),
        "records": lambda c: c.upsert(
            [
                {"id": "a", "vector": x[0], "metadata": {"n": 0}},
                {"id": "b", "vector": x[1].tolist()},
                {"id": "c", "vector": x[2].tolist(), "metadata": {"n": 2}},
            ]
        ),
    }
    answers = []
    for name, upsert in forms.items():
        coll = db.create_collection(name, dimension=DIM)
        assert upsert(coll).accepted == 3
        answers.append([(h.id, h.metadata) for h in coll.search(vector=x[2], k=3)])
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == ("c", {"n": 2})


def test_texts_are_embedded_with_the_collections_embedder(db: brainy.Database) -> None:
    notes = db.create_collection("notes", dimension=32)
    notes.upsert(["x", "y"], texts=["object storage buckets", "a cat on a mat"])
    assert notes.search(text="object storage buckets", k=1).ids == ["x"]


def test_a_repeated_id_in_one_call_keeps_the_last_row(db: brainy.Database) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    x = _vectors(3)
    docs.upsert(["a", "b", "a"], x, metadata=[{"v": 1}, {"v": 2}, {"v": 3}])
    (hit,) = docs.search(vector=x[2], k=1)
    assert (hit.id, hit.metadata) == ("a", {"v": 3})
    assert docs.status()["live"] == 2


def test_a_wrong_dimension_names_the_row_of_the_call_and_writes_nothing(
    db: brainy.Database, url: str
) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    rows = [[0.5] * DIM for _ in range(2600)]
    rows[2503] = [0.5] * (DIM - 1)
    with pytest.raises(brainy.InvalidInput) as err:
        docs.upsert([f"r{i}" for i in range(2600)], rows, batch_size=1000)
    assert err.value.field == "records[2503].vector"
    assert f"expected {DIM} numbers" in err.value.reason and "got 7" in err.value.reason
    assert _objects(url, "docs/") == []  # not even the first two batches


def test_a_bad_matrix_row_is_named_and_nothing_is_written(db: brainy.Database, url: str) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    x = _vectors(3000)
    x[2222, 5] = np.inf
    with pytest.raises(brainy.InvalidInput) as err:
        docs.upsert([f"r{i}" for i in range(3000)], x, batch_size=1000)
    assert err.value.field == "records[2222].vector[5]"
    wide = _vectors(4, dim=DIM + 1)
    with pytest.raises(brainy.InvalidInput, match=r"records\[0\]\.vector"):
        docs.upsert(["a", "b", "c", "d"], wide)
    with pytest.raises(brainy.InvalidInput) as err:
        docs.upsert([{"id": "a", "vector": x[0]}, {"id": "b", "vector": x[1], "colour": 1}])
    assert err.value.field == "records[1].colour"
    with pytest.raises(brainy.InvalidInput) as err:
        docs.upsert(["a", "b"], x[:3])
    assert err.value.field == "vectors"
    with pytest.raises(brainy.InvalidInput) as err:
        docs.upsert(["a", ""], x[:2])
    assert err.value.field == "records[1].id"
    assert _objects(url, "docs/") == []


def test_unknown_collection_and_schemas(db: brainy.Database) -> None:
    with pytest.raises(brainy.UnknownCollection):
        db.collection("nope")
    docs = db.create_collection("docs", dimension=DIM, metric="dot", n_trees=4)
    again = db.create_collection("docs", dimension=DIM, metric="dot", n_trees=4)
    assert again.schema == docs.schema
    with pytest.raises(brainy.ConfigError, match=r"collections\.docs\.dimension"):
        db.create_collection("docs", dimension=DIM + 1, metric="dot", n_trees=4)
    with pytest.raises(brainy.ConfigError, match=r"collections\.bad\.metric"):
        db.create_collection("bad", dimension=DIM, metric="cosine")
    assert db.collections() == ["docs"]


def test_settings_are_checked_by_the_configurations_parsers(url: str, tmp_path: Path) -> None:
    with pytest.raises(brainy.ConfigError, match="cache_size"):
        brainy.connect(url, cache_size="lots")
    with pytest.raises(brainy.ConfigError, match="colour: unknown setting"):
        brainy.connect(url, colour="blue")
    with pytest.raises(brainy.ConfigError, match="mode"):
        brainy.connect(url, mode="sideways")
    with pytest.raises(brainy.InvalidInput) as err:
        brainy.connect("ftp://example/x")
    assert err.value.field == "url"
    with brainy.connect(url, cache_dir=str(tmp_path / "c"), max_k=5) as db:
        docs = db.create_collection("docs", dimension=DIM)
        docs.upsert(["a"], _vectors(1))
        with pytest.raises(brainy.InvalidInput, match=r"k: expected an integer in \[1, 5\]"):
            docs.search(vector=_vectors(1)[0], k=6)


def test_modes_as_the_configuration_has_them(url: str, tmp_path: Path) -> None:
    x = _vectors(4)
    with brainy.connect(url, cache_dir=str(tmp_path / "rw")) as db:
        db.create_collection("docs", dimension=DIM).upsert(["a", "b"], x[:2])
    with brainy.connect(url, mode="write-only", cache_dir=str(tmp_path / "wo")) as db:
        docs = db.collection("docs")
        written = docs.upsert(["c"], x[2:3])  # durable, left to an indexer
        assert written.version is None and len(written.batches) == 1
        with pytest.raises(brainy.Forbidden):
            docs.search(vector=x[0])
        with pytest.raises(brainy.Forbidden) as err:
            docs.upsert(["d"], x[3:4], index=True)
        assert err.value.field == "index"
    with brainy.connect(url, mode="read-only", cache_dir=str(tmp_path / "ro")) as db:
        docs = db.collection("docs")
        assert sorted(docs.search(vector=x[0], k=5).ids) == ["a", "b"]  # "c": not indexed
        with pytest.raises(brainy.Forbidden):
            docs.upsert(["e"], x[:1])
        with pytest.raises(brainy.Forbidden):
            db.create_collection("other", dimension=DIM)


def test_delete_and_read_your_writes(db: brainy.Database) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    x = _vectors(10)
    docs.upsert([f"r{i}" for i in range(10)], x)
    assert docs.search(vector=x[3], k=1).ids == ["r3"]
    written = docs.delete(["r3", "never-written"])
    assert written.deleted == 2
    assert "r3" not in docs.search(vector=x[3], k=10).ids
    with pytest.raises(brainy.InvalidInput) as err:
        docs.delete(["ok", 7])
    assert err.value.field == "deletes[1]"


def test_time_travel_searches_a_retained_version(db: brainy.Database) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    x = _vectors(6)
    v1 = docs.upsert(["a", "b", "c"], x[:3], metadata=[{"v": 1}] * 3).version
    docs.upsert(["a"], x[3:4], metadata=[{"v": 2}])
    docs.delete(["b"])
    then = db.collection("docs", version=v1)
    assert then.version == v1 and then.status()["live"] == 3
    assert then.search(vector=x[1], k=1).ids == ["b"]
    assert then.search(vector=x[0], k=1)[0].metadata == {"v": 1}
    assert then.search(vector=x[0], k=1).version == v1
    assert then.search_batch(x[:2], k=1)[1].ids == ["b"]
    now = docs.search(vector=x[3], k=3)
    assert now.ids[0] == "a" and now[0].metadata == {"v": 2} and "b" not in now.ids
    with pytest.raises(brainy.Forbidden) as err:
        then.upsert(["z"], x[:1])
    assert err.value.field == "version"
    with pytest.raises(brainy.VersionNotRetained, match="retained versions: 1 to 3"):
        db.collection("docs", version=99)


def test_a_version_gone_past_retention_is_a_clear_error(url: str, tmp_path: Path) -> None:
    with brainy.connect(
        url, cache_dir=str(tmp_path / "c"), retention=0, gc_grace=0.01, refresh_interval=0
    ) as db:
        docs = db.create_collection("docs", dimension=DIM)
        for i, row in enumerate(_vectors(3)):
            docs.upsert([f"r{i}"], row[None, :])
        time.sleep(0.05)  # versions 1-3 now older than gc_grace: GC may take them
        report = docs.compact(force=True)
        assert report["verify"]["ok"]
        with pytest.raises(brainy.VersionNotRetained) as err:
            db.collection("docs", version=1)
        assert err.value.field == "version" and "not retained" in err.value.reason
        newest = docs.status()["version"]
        kept = db.collection("docs", version=newest).search(vector=[1.0] * DIM, k=5)
        assert kept.version == newest and len(kept) == 3


@pytest.mark.parametrize("metric", ["angular", "euclidean", "dot"])
def test_search_batch_equals_a_loop_of_searches(db: brainy.Database, metric: str) -> None:
    docs = db.create_collection("docs", dimension=DIM, metric=metric, exact_threshold=300)
    x = _vectors(1200, seed=1)
    meta = [{"even": i % 2 == 0} for i in range(1200)]
    docs.upsert([f"r{i}" for i in range(1200)], x, metadata=meta, batch_size=400)
    docs.delete([f"r{i}" for i in range(0, 1200, 7)])  # masked rows in every segment
    queries = _vectors(40, seed=2)
    for kwargs in ({}, {"filter": {"even": True}}, {"recall_target": 1.0}):
        batch = docs.search_batch(queries, k=7, **kwargs)
        loop = [docs.search(vector=q, k=7, **kwargs) for q in queries]
        assert [r.ids for r in batch] == [r.ids for r in loop]
        for b, s in zip(batch, loop, strict=True):
            assert [h.score for h in b] == pytest.approx([h.score for h in s], rel=1e-4)
            assert b.version == s.version


def test_search_batch_of_a_semantic_collection_equals_a_loop(db: brainy.Database) -> None:
    docs = db.create_collection(
        "sem", dimension=DIM, strategy="semantic", partitions=4, exact_threshold=100
    )
    x = _vectors(2000, seed=3)
    docs.upsert([f"r{i}" for i in range(2000)], x, batch_size=500)
    docs.compact(force=True)  # routed into partitions, with centroids
    docs.upsert([f"n{i}" for i in range(50)], _vectors(50, seed=4))  # a level-0 segment
    queries = _vectors(30, seed=5)
    for kwargs in ({}, {"recall_target": 0.9}, {"filter": {"missing": 1}}):
        batch = docs.search_batch(queries, k=5, **kwargs)
        loop = [docs.search(vector=q, k=5, **kwargs) for q in queries]
        assert [r.ids for r in batch] == [r.ids for r in loop]


def test_search_batch_errors_name_the_query_row(db: brainy.Database) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    docs.upsert(["a"], _vectors(1))
    queries = _vectors(5)
    queries[3, 2] = np.nan
    with pytest.raises(brainy.InvalidInput) as err:
        docs.search_batch(queries)
    assert err.value.field == "vectors[3][2]"
    with pytest.raises(brainy.InvalidInput) as err:
        docs.search_batch(queries[0])
    assert err.value.field == "vectors"


def test_drop_collection_keeps_the_data_and_refuses_without_force(
    db: brainy.Database, url: str
) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    db.create_collection("empty", dimension=DIM)
    db.drop_collection("empty")  # no data: no force needed
    docs.upsert(["a"], _vectors(1))
    with pytest.raises(brainy.InvalidInput) as err:
        db.drop_collection("docs")
    assert err.value.field == "force" and "1 live rows" in err.value.reason
    db.drop_collection("docs", force=True)
    assert db.collections() == []
    with pytest.raises(brainy.UnknownCollection):
        db.collection("docs")
    assert _objects(url, "docs/manifests/")  # nothing deleted
    with pytest.raises(brainy.SchemaFrozen):
        db.create_collection("docs", dimension=DIM + 1)
    back = db.create_collection("docs", dimension=DIM)
    assert back.search(vector=_vectors(1)[0], k=1).ids == ["a"]


def test_status_compact_verify(db: brainy.Database) -> None:
    docs = db.create_collection("docs", dimension=DIM)
    for i in range(3):
        docs.upsert([f"r{i}"], _vectors(1, seed=i))
    assert docs.status()["segments"] == 3
    report = docs.compact(force=True)
    assert report["collection"] == "docs" and report["verify"]["ok"]
    assert docs.status()["segments"] == 1 and docs.status()["live"] == 3
    checked = docs.verify()
    assert checked.ok and checked.version == docs.status()["version"]
