"""Start-up checks of an instance: configuration errors name their key, modes are
enforced before anything is sent, and a store without conditional writes is refused."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from brainy.core.config import ConfigError, load_settings, parse_size
from brainy.core.errors import Forbidden
from brainy.service.app import Brainy
from brainy.storage import ConditionalWritesUnsupported, ReadOnlyStore, open_store
from brainy.storage.memory import MemoryStore
from helpers import declare, make_app


class IgnoresIfNoneMatch(MemoryStore):
    """An S3-compatible store that silently overwrites on put-if-absent."""

    def _put(self, key, data, if_absent, if_match):
        return super()._put(key, data, False, if_match)


def test_store_ignoring_conditional_writes_is_refused():
    store = IgnoresIfNoneMatch("ignores-if-none-match")
    with pytest.raises(ConditionalWritesUnsupported, match="conditional writes are required"):
        store.check_conditional_writes("_brainy/probes/x")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRAINY_MODE": "sometimes"}, "BRAINY_MODE: expected one of"),
        ({"BRAINY_ROLE": "wizard"}, "BRAINY_ROLE: expected one of"),
        ({"BRAINY_CACHE_SIZE": "lots"}, "BRAINY_CACHE_SIZE: expected a size"),
        ({"BRAINY_REFRESH_INTERVAL": "-1"}, "BRAINY_REFRESH_INTERVAL: expected a number"),
        (
            {"BRAINY_RECALL_SAMPLE": "1.5"},
            r"BRAINY_RECALL_SAMPLE: expected a number in \[0.0, 1.0\]",
        ),
        ({"BRAINY_CONFIG_SOURCE": "ether"}, "BRAINY_CONFIG_SOURCE: expected one of"),
        ({"BRAINY_STORE": "ftp://x"}, "unknown scheme 'ftp'"),
    ],
)
def test_invalid_environment_names_the_key(env, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        load_settings({"BRAINY_STORE": "memory://env-errors", **env})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cache_size": "2 parsecs"}, "cache_size: expected a size"),
        ({"recall_sample": "often"}, "recall_sample: expected a number"),
        ({"colections": {}}, "colections: unknown setting"),
        (
            {"collections": {"docs": {"metric": "angular"}}},
            r"collections\.docs\.dimension: required",
        ),
        ({"collections": {"docs": {"dimension": 0}}}, r"collections\.docs\.dimension: expected"),
        ({"collections": {"docs": {"dimension": 4, "metric": "cosine"}}}, r"docs\.metric"),
        ({"collections": {"a/b": {"dimension": 4}}}, "not a valid name"),
    ],
)
def test_invalid_bucket_config_names_the_key(config, message):
    store = open_store("memory://config-errors")
    store.put("_brainy/config.json", json.dumps(config).encode())
    with pytest.raises(ConfigError, match=message):
        load_settings({"BRAINY_STORE": "memory://config-errors"})


def test_layers_later_wins(tmp_path):
    url = "memory://layers"
    store = open_store(url)
    store.put("_brainy/config.json", json.dumps({"cache_size": "1GB", "max_k": 50}).encode())
    store.put("_brainy/instances/box-1.json", json.dumps({"max_k": 70}).encode())
    settings, _ = load_settings(
        {"BRAINY_STORE": url, "BRAINY_INSTANCE_ID": "box-1", "BRAINY_CACHE_SIZE": "2GiB"}
    )
    assert settings.max_k == 70
    assert settings.cache_size == 2 * 2**30
    assert parse_size("2GB", "x") == 2 * 10**9


def test_read_only_instance_refuses_writes_before_sending(tmp_path):
    url = "memory://modes"
    declare(make_app(url, tmp_path))
    reader = make_app(url, tmp_path, role="search")
    assert reader.settings.mode == "read-only"
    before = sum(reader.store.requests.values())
    with pytest.raises(Forbidden, match="read-only"):
        reader.ingest({"collection": "docs", "records": [{"id": "a", "vector": [1.0] * 8}]})
    with pytest.raises(ReadOnlyStore):
        reader.store.put("docs/x", b"1")
    assert sum(reader.store.requests.values()) == before


def test_write_only_instance_refuses_search(tmp_path):
    url = "memory://write-only"
    declare(make_app(url, tmp_path))
    writer = make_app(url, tmp_path, role="ingest")
    assert writer.settings.mode == "write-only"
    with pytest.raises(Forbidden, match="write-only"):
        writer.search({"collection": "docs", "vector": [1.0] * 8})


def test_collections_created_later_are_found_by_running_instances(tmp_path):
    url = "memory://late-collection"
    running = make_app(url, tmp_path)
    declare(make_app(url, tmp_path), name="later")
    assert running.schema("later") is not None


def test_redeclaring_a_collection_that_holds_data_is_refused_and_writes_nothing(tmp_path):
    from brainy.core.config import CollectionSchema, SchemaFrozen

    url = "memory://holds-data"
    app = make_app(url, tmp_path)
    declare(app)
    app.index_key(
        app.ingest({"collection": "docs", "records": [{"id": "a", "vector": [1.0] * 8}]}).batch
    )
    store = open_store(url)
    config = json.loads(store.get("_brainy/config.json").data)
    store.put("_brainy/config.json", json.dumps({"collections": {}}).encode())
    with pytest.raises(SchemaFrozen, match=r"docs\.dimension: cannot change from 8 to 16"):
        app.create_collection(CollectionSchema("docs", dimension=16))
    assert json.loads(store.get("_brainy/config.json").data) == {"collections": {}}
    assert config["collections"]["docs"]["dimension"] == 8


def test_semantic_strategy_is_accepted_with_nprobe_and_an_unknown_one_is_refused():
    store = open_store("memory://semantic")
    docs = {"dimension": 4, "strategy": "semantic", "partitions": 16, "nprobe": 3}
    store.put("_brainy/config.json", json.dumps({"collections": {"docs": docs}}).encode())
    settings, _ = load_settings({"BRAINY_STORE": "memory://semantic"})
    assert settings.collections["docs"].strategy == "semantic"
    assert settings.collections["docs"].probes(16) == 3
    for bad, match in (
        ({**docs, "partitions": "auto", "strategy": "hash"}, r'docs\.partitions: "auto" needs'),
        (
            {**docs, "partitions": "many"},
            r'docs\.partitions: expected an integer in \[1, 4096\] or "auto"',
        ),
        ({**docs, "strategy": "ivf"}, r"docs\.strategy: expected one of \['hash', 'semantic'\]"),
        ({**docs, "nprobe": 17}, r"docs\.nprobe: expected an integer in \[1, 16\]"),
        ({**docs, "nprobe": 0}, r"docs\.nprobe: expected an integer in \[1, 16\]"),
        ({**docs, "nprobe": "4"}, r"docs\.nprobe: expected an integer"),
    ):
        store.put("_brainy/config.json", json.dumps({"collections": {"docs": bad}}).encode())
        with pytest.raises(ConfigError, match=match):
            load_settings({"BRAINY_STORE": "memory://semantic"})


def test_auto_partitions_are_accepted_for_a_semantic_collection():
    store = open_store("memory://auto")
    docs = {"dimension": 4, "strategy": "semantic", "partitions": "auto", "nprobe": 200}
    store.put("_brainy/config.json", json.dumps({"collections": {"docs": docs}}).encode())
    settings, _ = load_settings({"BRAINY_STORE": "memory://auto"})
    schema = settings.collections["docs"]
    assert schema.partitions == "auto" and schema.fixed_partitions is None
    assert schema.probes(64) == 64 and schema.probes(500) == 200


def test_cold_starts_sharing_an_instance_id_all_pass_the_conditional_write_probe(
    store_url, tmp_path
):
    """Every copy of a function runs with the instance id its deployment sets: a
    burst of cold starts on S3 probes at once, and none may fail another."""
    url = store_url("s3")
    starts = 8
    barrier = threading.Barrier(starts)

    def cold_start(i: int) -> Brainy:
        barrier.wait()
        env = {**os.environ, "BRAINY_STORE": url, "BRAINY_INSTANCE_ID": "ingest-shared"}
        return Brainy.from_env("ingest", {**env, "BRAINY_CACHE_DIR": str(tmp_path / f"c{i}")})

    with ThreadPoolExecutor(starts) as pool:
        apps = list(pool.map(cold_start, range(starts)))
    assert {app.settings.instance_id for app in apps} == {"ingest-shared"}
    assert (
        list(open_store(url, endpoint_url=os.environ["BRAINY_S3_ENDPOINT_URL"]).list("_brainy/"))
        == []
    )
