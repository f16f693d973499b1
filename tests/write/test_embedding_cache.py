"""With `cache_embeddings`, a text is paid for once: a retried batch in another
instance, or a README re-crawled into another batch, reaches the embeddings API
(a local fake) with nothing, costs one GET per batch, not one per text, and the
hit ratio shows in /metrics. A cache that fails only costs an embedding again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from brainy.core.config import CollectionSchema
from brainy.format.batch import Batch
from brainy.service.app import Brainy
from brainy.write.embedding_cache import LONG_TEXT, PREFIX
from fake_openai import FakeOpenAI, serve_fake_openai
from helpers import make_app

MODEL_PREFIX = f"{PREFIX}openai-text-embedding-3-small/32/"
POSTS = CollectionSchema("posts", dimension=32, embedder="openai")


@pytest.fixture
def fake():
    with serve_fake_openai() as fake:
        yield fake


def _instance(url: str, tmp_path: Path, fake: FakeOpenAI, cache: bool = True) -> Brainy:
    """A fresh instance: an empty in-process cache, as in a new process."""
    app = make_app(
        url,
        tmp_path,
        "ingest",
        BRAINY_OPENAI_BASE_URL=fake.url,
        BRAINY_CACHE_EMBEDDINGS="true" if cache else "false",
    )
    app.create_collection(POSTS)
    return app


def _payload(texts: list[str], prefix: str = "p") -> dict:
    records = [{"id": f"{prefix}{i}", "text": t} for i, t in enumerate(texts)]
    return {"collection": "posts", "records": records}


def _vectors(app: Brainy, key: str) -> np.ndarray:
    return Batch.decode(app.store.get(key).data, key).vectors


def _metric(app: Brainy, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(app.metrics.render().decode())
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_retried_batch_costs_one_get_and_no_embedding(
    kind: str, store_url: Callable[[str], str], tmp_path: Path, fake: FakeOpenAI
) -> None:
    url = store_url(kind)
    texts = [f"post number {i} about the weather" for i in range(300)]
    first = _instance(url, tmp_path, fake)
    written = first.ingest(_payload(texts))
    assert len(fake.inputs) == 300
    assert [o.key.removeprefix(MODEL_PREFIX)[:8] for o in first.store.list(PREFIX)] == ["batches/"]

    retry = _instance(url, tmp_path, fake)  # another instance, nothing in memory
    gets = _metric(retry, "brainy_object_store_requests_total", kind="get")
    again = retry.ingest(_payload(texts))
    assert len(fake.inputs) == 300  # nothing paid for twice
    assert _metric(retry, "brainy_object_store_requests_total", kind="get") - gets == 1
    np.testing.assert_array_equal(_vectors(retry, again.batch), _vectors(first, written.batch))
    assert _metric(retry, "brainy_embedding_cache_hit_ratio") == 1.0
    # What the bucket gave is remembered: the next retry sends no request at all.
    gets = _metric(retry, "brainy_object_store_requests_total", kind="get")
    retry.ingest(_payload(texts))
    assert _metric(retry, "brainy_object_store_requests_total", kind="get") == gets
    assert _metric(first, "brainy_embedding_cache_hit_ratio") == 0.0
    assert _metric(first, "brainy_embeddings_computed_total") == 300
    first.close()
    retry.close()


def test_a_recrawled_readme_in_another_batch_is_not_embedded_again(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    url = f"file://{tmp_path}/data"
    readme = "octo/cat: a command-line tool. " + "It does many useful things. " * 60
    assert len(readme) >= LONG_TEXT
    _instance(url, tmp_path, fake).ingest(_payload([readme, "first short post"]))
    assert fake.inputs == [readme, "first short post"]

    later = _instance(url, tmp_path, fake)
    later.ingest(_payload(["another short post", readme], prefix="q"))
    assert fake.inputs[2:] == ["another short post"]
    assert _metric(later, "brainy_embedding_cache_hit_ratio") == 0.5
    keys = [o.key.removeprefix(MODEL_PREFIX) for o in later.store.list(PREFIX)]
    assert sum(k.startswith("texts/") for k in keys) == 1  # the README, once
    assert sum(k.startswith("batches/") for k in keys) == 2


def test_one_instance_remembers_without_the_bucket(tmp_path: Path, fake: FakeOpenAI) -> None:
    app = _instance(f"file://{tmp_path}/data", tmp_path, fake, cache=False)
    first = app.ingest(_payload(["tea", "jazz", "tea"]))  # a repeat within one batch, too
    app.ingest(_payload(["jazz", "cats"], prefix="q"))
    assert fake.inputs == ["tea", "jazz", "cats"]
    vectors = _vectors(app, first.batch)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert list(app.store.list(PREFIX)) == []  # cache_embeddings off: nothing written
    assert _metric(app, "brainy_embedding_cache_hit_ratio") == 0.4


def test_a_damaged_cache_object_is_embedded_again(tmp_path: Path, fake: FakeOpenAI) -> None:
    url = f"file://{tmp_path}/data"
    first = _instance(url, tmp_path, fake)
    first.ingest(_payload(["tea", "jazz"]))
    (obj,) = first.store.list(PREFIX)
    first.store.delete(obj.key)
    first.store.put(obj.key, b"not an array")

    retry = _instance(url, tmp_path, fake)
    outcome = retry.ingest(_payload(["tea", "jazz"]))
    assert fake.inputs == ["tea", "jazz", "tea", "jazz"]
    assert _vectors(retry, outcome.batch).shape == (2, 32)
