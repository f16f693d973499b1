"""`brainy config get|set|diff|apply`, on a local folder and on S3 (a moto server),
as an operator runs it: validated like a start-up, written by compare-and-swap,
a collection's schema frozen once it holds data."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from brainy.core.config import CONFIG_KEY, ConfigError, load_settings
from brainy.entry import config_cli
from brainy.entry.cli import main
from brainy.storage import NotFound, ObjectStore, open_store
from faults import FaultyStore


@pytest.fixture(params=["file", "s3"])
def url(request: pytest.FixtureRequest, store_url: Callable[[str], str]) -> str:
    return store_url(request.param)


@pytest.fixture
def brainy(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`brainy(*args)` → (exit status, stdout, stderr), on the test's store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAINY_")}
    env["TMPDIR"] = str(tmp_path)
    for name in ("BRAINY_S3_ENDPOINT_URL", "BRAINY_S3_REGION"):
        if name in os.environ:
            env[name] = os.environ[name]

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--store", url, *args], env=env)
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def store(url: str):
    opened = open_store(url)
    yield opened
    opened.close()


def stored(store: ObjectStore, key: str = CONFIG_KEY) -> bytes | None:
    try:
        return store.get(key).data
    except NotFound:
        return None


def with_data(brainy, tmp_path: Path) -> None:
    """Collection `docs` (dimension 4), holding one indexed record."""
    assert brainy("collection", "create", "docs", "--dimension", "4")[0] == 0
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "vector": [1, 0, 0, 0]}) + "\n")
    assert brainy("ingest", str(data), "--collection", "docs")[0] == 0


def test_set_then_get_and_an_instance_starts_with_it(brainy, store: ObjectStore) -> None:
    status, out, _ = brainy("config", "set", "cache_size", "2GB")
    assert status == 0 and '+  "cache_size": "2GB"' in out
    assert brainy("config", "set", "max_k", "50")[0] == 0
    assert brainy("config", "set", "warmup", '["docs"]')[0] == 0

    assert brainy("config", "get", "cache_size")[1] == '"2GB"\n'
    assert json.loads(brainy("config", "get", "max_k")[1]) == 50  # JSON, not "50"
    assert json.loads(brainy("config", "get")[1]) == {
        "cache_size": "2GB",
        "max_k": 50,
        "warmup": ["docs"],
    }
    # Not set: the built-in default, said so on stderr.
    status, out, err = brainy("config", "get", "max_records")
    assert (status, json.loads(out)) == (0, 100_000) and "default" in err

    settings, _ = load_settings({}, role="search", store=store)
    assert (settings.cache_size, settings.max_k, settings.warmup) == (2 * 10**9, 50, ("docs",))


def test_invalid_values_are_refused_naming_the_key_and_nothing_is_written(
    brainy, store: ObjectStore
) -> None:
    assert brainy("config", "set", "max_k", "50")[0] == 0
    before = stored(store)
    for key, value, named in (
        ("cache_size", "lots", "cache_size"),
        ("max_k", "0", "max_k"),
        ("recall_sample", "2", "recall_sample"),
        ("no_such_setting", "1", "no_such_setting"),
        ("collections.docs.dimension", "0", "collections.docs.dimension"),
        ("collections.docs", '{"metric": "dot"}', "collections.docs.dimension"),  # required
        ("collections.docs", '{"dimension": 4, "metric": "cosine"}', "collections.docs.metric"),
    ):
        status, out, err = brainy("config", "set", key, value)
        assert status == 2, (key, out, err)
        assert err.startswith("error: ") and named in err, (key, err)
        assert stored(store) == before, key


def test_an_invalid_file_is_refused_by_diff_and_apply(
    brainy, store: ObjectStore, tmp_path: Path
) -> None:
    assert brainy("config", "set", "max_k", "50")[0] == 0
    before = stored(store)
    wanted = tmp_path / "config.json"
    wanted.write_text(json.dumps({"max_k": 50, "gc_grace": "0s"}))
    for action in ("diff", "apply"):
        status, _, err = brainy("config", action, str(wanted))
        assert status == 2 and "gc_grace" in err, err
    wanted.write_text("{not json")
    status, _, err = brainy("config", "apply", str(wanted))
    assert status == 2 and "not valid JSON" in err
    assert stored(store) == before


def test_schema_change_of_a_collection_holding_data_is_refused(
    brainy, store: ObjectStore, tmp_path: Path
) -> None:
    assert brainy("collection", "create", "empty", "--dimension", "4")[0] == 0
    with_data(brainy, tmp_path)
    before = stored(store)

    status, _, err = brainy("config", "set", "collections.docs.metric", "euclidean")
    assert status == 2
    assert "collections.docs.metric" in err and "holds data" in err
    assert stored(store) == before

    # Through a file: the same refusal; removing the declaration is refused too.
    doc = json.loads(before or b"{}")
    doc["collections"]["docs"]["dimension"] = 8
    (tmp_path / "c.json").write_text(json.dumps(doc))
    status, _, err = brainy("config", "apply", str(tmp_path / "c.json"))
    assert status == 2 and "collections.docs.dimension" in err
    del doc["collections"]["docs"]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    status, _, err = brainy("config", "apply", str(tmp_path / "c.json"))
    assert status == 2 and "collections.docs" in err and "holds data" in err
    assert stored(store) == before

    # Tunables of it may change, and so may the schema of a collection with no data.
    assert brainy("config", "set", "collections.docs.n_trees", "32")[0] == 0
    assert brainy("config", "set", "collections.empty.metric", "dot")[0] == 0
    settings, _ = load_settings({}, store=store)
    assert settings.collections["docs"].n_trees == 32
    assert settings.collections["empty"].metric == "dot"


def test_diff_exits_like_diff_and_apply_makes_the_file_the_document(
    brainy, store: ObjectStore, tmp_path: Path
) -> None:
    assert brainy("config", "set", "max_k", "50")[0] == 0
    status, out, _ = brainy("config", "get")
    current = tmp_path / "current.json"
    current.write_text(out)
    assert brainy("config", "diff", str(current)) == (0, "", "")

    wanted = tmp_path / "wanted.json"
    wanted.write_text(json.dumps({"max_k": 80, "retention": "2h"}))
    status, out, _ = brainy("config", "diff", str(wanted))
    assert status == 1
    assert '-  "max_k": 50' in out and '+  "max_k": 80' in out and '+  "retention": "2h"' in out
    assert json.loads(stored(store) or b"{}") == {"max_k": 50}  # diff writes nothing

    assert brainy("config", "apply", str(wanted))[0] == 0
    assert json.loads(stored(store) or b"{}") == {"max_k": 80, "retention": "2h"}
    assert brainy("config", "diff", str(wanted))[0] == 0
    assert brainy("config", "apply", str(wanted))[1].endswith("unchanged\n")


def test_instance_overrides(brainy, store: ObjectStore) -> None:
    assert brainy("config", "set", "query_threads", "8")[0] == 0
    assert brainy("config", "set", "--instance", "search-1", "query_threads", "2")[0] == 0
    assert json.loads(brainy("config", "get", "--instance", "search-1")[1]) == {"query_threads": 2}
    one, _ = load_settings({"BRAINY_INSTANCE_ID": "search-1"}, role="search", store=store)
    other, _ = load_settings({"BRAINY_INSTANCE_ID": "search-2"}, role="search", store=store)
    assert (one.query_threads, other.query_threads) == (2, 8)

    status, _, err = brainy("config", "set", "--instance", "search-1", "query_threads", "x")
    assert status == 2 and "query_threads" in err
    status, _, err = brainy("config", "set", "--instance", "../x", "max_k", "1")
    assert status == 2 and "--instance" in err


# ------------------------------------------------------------------- races


def racing(store: ObjectStore, other: Callable[[], object]) -> FaultyStore:
    """`store`, where `other` runs once just before the first write to the config
    object lands: another operator's change between our read and our write."""
    fired: list[bool] = []

    def before(n: int, op: str, key: str) -> None:
        if op == "put" and key.endswith(CONFIG_KEY) and not fired:
            fired.append(True)
            other()

    return FaultyStore(store, before=before)


def test_a_concurrent_change_racing_a_set_is_not_lost(store: ObjectStore) -> None:
    config_cli.set_value(store, CONFIG_KEY, "max_k", 50)
    ours = racing(store, lambda: config_cli.set_value(store, CONFIG_KEY, "retention", "2h"))

    config_cli.set_value(ours, CONFIG_KEY, "cache_size", "1GB")

    # Our first put lost to the other change; the second, made on top of it, won.
    assert [c.op for c in ours.calls].count("put") == 2
    assert json.loads(stored(store) or b"{}") == {
        "max_k": 50,
        "retention": "2h",
        "cache_size": "1GB",
    }


def test_a_set_is_validated_again_against_the_document_it_lost_to(store: ObjectStore) -> None:
    config_cli.set_value(store, CONFIG_KEY, "collections", {"docs": {"dimension": 4,
                         "strategy": "semantic", "partitions": 8}})  # fmt: skip
    shrink = {"dimension": 4, "strategy": "semantic", "partitions": 2}
    ours = racing(
        store, lambda: config_cli.set_value(store, CONFIG_KEY, "collections.docs", shrink)
    )

    # nprobe 4 fits the 8 partitions read first, not the 2 the racing change left.
    with pytest.raises(ConfigError, match=r"collections\.docs\.nprobe"):
        config_cli.set_value(ours, CONFIG_KEY, "collections.docs.nprobe", 4)
    assert json.loads(stored(store) or b"{}")["collections"]["docs"] == shrink


def test_apply_keeps_a_concurrent_change_and_refuses_a_conflicting_one(
    store: ObjectStore,
) -> None:
    config_cli.set_value(store, CONFIG_KEY, "max_k", 50)
    base = config_cli.read_document(store, CONFIG_KEY)

    ours = racing(store, lambda: config_cli.set_value(store, CONFIG_KEY, "retention", "2h"))
    config_cli.apply_document(ours, CONFIG_KEY, {"max_k": 80}, base)
    assert json.loads(stored(store) or b"{}") == {"max_k": 80, "retention": "2h"}

    # Someone sets max_k after we compared: our apply of another max_k is refused.
    base = config_cli.read_document(store, CONFIG_KEY)
    before = stored(store)
    ours = racing(store, lambda: config_cli.set_value(store, CONFIG_KEY, "max_k", 90))
    with pytest.raises(ConfigError, match=r"max_k: changed by someone else"):
        config_cli.apply_document(ours, CONFIG_KEY, {**base, "max_k": 70}, base)
    assert json.loads(stored(store) or b"{}") == {**json.loads(before or b"{}"), "max_k": 90}
