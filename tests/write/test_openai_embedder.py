"""The `openai` embedder against a local fake of the embeddings API: batches of the
configured size, the `dimensions` parameter and the key from the environment;
429s and 5xx retried (waiting what `Retry-After` asks), any other 4xx a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainy.core.config import CollectionSchema, ConfigError, Settings, parse_layer
from brainy.storage.base import RetryPolicy
from brainy.write.embedders import (
    EmbedderRejected,
    EmbedderUnavailable,
    HashEmbedder,
    OpenAIEmbedder,
    get_embedder,
)
from fake_openai import FakeOpenAI, serve_fake_openai
from helpers import make_app
from servers import free_port


@pytest.fixture
def fake():
    with serve_fake_openai() as fake:
        yield fake


def _embedder(fake: FakeOpenAI, sleeps: list[float], **kw) -> OpenAIEmbedder:
    kw.setdefault("retry", RetryPolicy(attempts=5, base_delay=0.5, max_delay=8.0))
    return OpenAIEmbedder(16, base_url=fake.url, sleep=sleeps.append, **kw)


def test_texts_go_in_batches_with_model_dimensions_and_key(fake, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    texts = [f"text number {i}" for i in range(250)]
    vectors = _embedder(fake, [], batch_size=100).embed(texts)

    assert [len(r["input"]) for r in fake.requests] == [100, 100, 50]
    assert fake.inputs[:250] == texts
    assert {r["model"] for r in fake.requests} == {"text-embedding-3-small"}
    assert {r["dimensions"] for r in fake.requests} == {16}
    # A model that cannot shorten its vectors is not sent `dimensions` (it would refuse it).
    OpenAIEmbedder(1536, model="text-embedding-ada-002", base_url=fake.url).embed(["x"])
    assert "dimensions" not in fake.requests[-1]
    assert {h["Authorization"] for h in fake.headers} == {"Bearer sk-test-123"}
    # Rows come back in the texts' order (the fake answers them reversed).
    np.testing.assert_allclose(vectors, HashEmbedder(16).embed(texts), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_429_and_5xx_are_retried_honouring_retry_after(fake) -> None:
    fake.fail(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "3"})
    fake.fail(503, {"error": {"message": "overloaded"}})
    fake.fail(500, b"<html>oops</html>")
    fake.fail(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.25"})
    sleeps: list[float] = []
    vectors = _embedder(fake, sleeps).embed(["alpha", "beta"])

    assert len(fake.requests) == 5 and fake.inputs == ["alpha", "beta"]
    assert vectors.shape == (2, 16)
    # Retry-After as asked; without it, full jitter under the doubling cap.
    assert sleeps[0] == 3.0 and sleeps[3] == 0.25
    assert 0 <= sleeps[1] <= 1.0 and 0 <= sleeps[2] <= 2.0


def test_retries_run_out_with_an_error_naming_the_last_failure(fake) -> None:
    for _ in range(5):
        fake.fail(502, {"error": {"message": "bad gateway upstream"}})
    sleeps: list[float] = []
    with pytest.raises(EmbedderUnavailable, match="after 5 attempts: HTTP 502: bad gateway") as e:
        _embedder(fake, sleeps).embed(["alpha"])
    assert e.value.status == 503
    assert len(fake.requests) == 5 and len(sleeps) == 4


def test_an_unreachable_api_is_retried_then_named(fake) -> None:
    url = fake.url.replace(fake.url.split(":")[-1].split("/")[0], str(free_port()))
    sleeps: list[float] = []
    embedder = OpenAIEmbedder(16, base_url=url, sleep=sleeps.append, retry=RetryPolicy(3))
    with pytest.raises(EmbedderUnavailable, match=r"after 3 attempts: URLError: .*refused"):
        embedder.embed(["alpha"])
    assert len(sleeps) == 2


def test_a_4xx_is_not_retried_and_names_status_and_message(fake) -> None:
    fake.fail(400, {"error": {"message": "This model's maximum context length is 8192 tokens"}})
    sleeps: list[float] = []
    with pytest.raises(EmbedderRejected) as e:
        _embedder(fake, sleeps).embed(["a very long text"])
    assert "HTTP 400: This model's maximum context length is 8192 tokens" in str(e.value)
    assert "text-embedding-3-small" in str(e.value)
    assert len(fake.requests) == 1 and sleeps == []


def test_vectors_of_another_length_are_refused_naming_both(fake) -> None:
    fake.force_dimension = 1536  # a server that ignores `dimensions`
    with pytest.raises(EmbedderRejected, match=r"1 vectors of 1536 numbers .* dimension 16"):
        _embedder(fake, []).embed(["alpha"])


def test_batch_size_beyond_the_api_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"openai_batch_size: expected an integer in \[1, 2048\]"):
        OpenAIEmbedder(16, batch_size=4096)
    with pytest.raises(ConfigError, match=r"openai_batch_size: expected an integer in \[1, 2048\]"):
        parse_layer({"openai_batch_size": 5000}, "config.json")


def test_configured_dimensions_must_match_the_collection(tmp_path: Path) -> None:
    settings = Settings(openai_dimensions=512)
    with pytest.raises(ConfigError) as e:
        get_embedder("openai", 256, settings)
    assert "512-d" in str(e.value) and "dimension is 256" in str(e.value)

    with pytest.raises(ConfigError, match=r"'text-embedding-3-small' makes at most 1536-d vectors"):
        get_embedder("openai", 2048, Settings())
    ada = Settings(openai_model="text-embedding-ada-002")
    with pytest.raises(ConfigError, match=r"'text-embedding-ada-002' makes 1536-d vectors.* 512"):
        get_embedder("openai", 512, ada)

    config = tmp_path / "config.json"
    config.write_text(
        '{"openai_dimensions": 512, "collections": {"posts": '
        '{"dimension": 1536, "embedder": "openai"}}}'
    )
    with pytest.raises(ConfigError, match=r"collections.posts.embedder: .*512-d.* 1536"):
        make_app(
            f"file://{tmp_path}/data",
            tmp_path,
            BRAINY_CONFIG_SOURCE="file",
            BRAINY_CONFIG_PATH=str(config),
        )


def test_an_instance_embeds_ingested_and_queried_text_through_the_api(fake, tmp_path) -> None:
    app = make_app(
        f"file://{tmp_path}/data",
        tmp_path,
        BRAINY_OPENAI_BASE_URL=fake.url,
        BRAINY_OPENAI_BATCH_SIZE="2",
    )
    app.create_collection(CollectionSchema("posts", dimension=32, embedder="openai"))
    records = [{"id": f"p{i}", "text": t} for i, t in enumerate(["cats", "dogs", "tea", "jazz"])]
    outcome = app.ingest({"collection": "posts", "records": records})
    assert [len(r["input"]) for r in fake.requests] == [2, 2]
    app.index_key(outcome.batch)
    hits = app.search({"collection": "posts", "text": "jazz", "k": 1}).hits
    assert hits[0].id == "p3"
    assert fake.inputs[-1] == "jazz"
    app.close()


def test_a_refused_embedding_fails_the_ingest_and_writes_nothing(fake, tmp_path) -> None:
    app = make_app(f"file://{tmp_path}/data", tmp_path, BRAINY_OPENAI_BASE_URL=fake.url)
    app.create_collection(CollectionSchema("posts", dimension=32, embedder="openai"))
    fake.fail(401, {"error": {"message": "Incorrect API key provided"}})
    with pytest.raises(EmbedderRejected) as e:
        app.ingest({"collection": "posts", "records": [{"id": "a", "text": "hello"}]})
    assert e.value.status == 502
    assert e.value.to_dict()["error"]["code"] == "embedder_rejected"
    assert "HTTP 401: Incorrect API key provided" in e.value.reason
    assert list(app.store.list("posts/wal/")) == []
    app.close()
