"""Embeddings computed once: an in-process LRU, and with `cache_embeddings` the
bucket, so a retried batch or a re-crawled README is not paid for twice.

A text's key is a hash (xxh3-128) of (embedder model, dimension, text). Layout,
every object immutable and written put-if-absent (two writers of one key write the
same vectors, so losing that race loses nothing):

    _brainy/embeddings/<model>/<dimension>/batches/<hash of the texts' keys>
        the vectors of one call's short texts, in order (one GET and one PUT a
        batch, whatever its size: a retried batch of 10,000 posts costs 1 GET)
    _brainy/embeddings/<model>/<dimension>/texts/<2 hex>/<key>
        one long text's vector (at least `LONG_TEXT` characters)

Why two shapes: a request costs about as much as embedding a few hundred tokens.
A short text (a post) is cheaper to embed again than to fetch or store on its own,
so short texts share one object per call, found again when the same batch is
retried. A long text (a README) costs more to embed than a GET, and comes back
inside a different batch when it is re-crawled, so it gets its own object, looked
up by key (in parallel). Texts already in the LRU cost no request at all.

The bucket is only read and written on the write path (`shared=True`); a search
embeds one short query text, for which a GET would be pure latency. Cache objects
are not referenced by any manifest and never needed: expire them with a bucket
lifecycle rule on `_brainy/embeddings/` if they grow.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xxhash

from brainy.core.config import CollectionSchema, Settings
from brainy.storage import NotFound, ObjectStore, PreconditionFailed, StorageError
from brainy.write.embedders import EmptyText, get_embedder

log = logging.getLogger(__name__)

PREFIX = "_brainy/embeddings/"
# Characters from which a text gets an object of its own (about 250 tokens).
LONG_TEXT = 1000
# The LRU's budget for vectors, in bytes (10,000 vectors of 1536 floats; 40,000 of 384).
LRU_BYTES = 64 * 10**6
_THREADS = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class EmbeddingCache:
    """Embeds texts through a collection's embedder, computing only what neither the
    LRU nor (with a store) the bucket holds. Thread-safe.

    Args:
        settings: the embedders' configuration.
        store: where cached vectors are shared between instances; None keeps them
            in this process only.
        computed: told how many texts each call sent to the embedder.
    """

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore | None = None,
        computed: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._computed = computed or (lambda n: None)
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lru_bytes = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.hits = 0
        self.lookups = 0

    @classmethod
    def for_instance(
        cls, settings: Settings, store: ObjectStore, computed: Callable[[int], None] | None = None
    ) -> EmbeddingCache:
        """The cache of one instance: shared through the bucket when `cache_embeddings`
        is on and the instance may write."""
        shared = settings.cache_embeddings and not settings.read_only
        return cls(settings, store if shared else None, computed)

    @property
    def hit_ratio(self) -> float:
        with self._lock:
            return self.hits / self.lookups if self.lookups else 0.0

    def embed(
        self, schema: CollectionSchema, texts: list[str], *, shared: bool = True
    ) -> np.ndarray:
        """The vectors of `texts` (one float32 row each) for `schema`'s embedder.

        Args:
            shared: look in (and write to) the bucket too, when this cache has one.
        """
        embedder = get_embedder(schema.embedder, schema.dimension, self.settings)
        if embedder.cache_id is None or not texts:
            return embedder.embed(texts)
        dim = embedder.dimension
        base = f"{PREFIX}{_UNSAFE.sub('_', embedder.cache_id)}/{dim}/"
        # A text repeated in one call ("gm" in a batch of posts) is looked up and
        # embedded once.
        slots: dict[str, int] = {}
        rows = [slots.setdefault(_text_key(embedder.cache_id, dim, t), len(slots)) for t in texts]
        keys = list(slots)
        unique = [""] * len(keys)
        for text, row in zip(texts, rows, strict=True):
            unique[row] = text
        out = np.empty((len(keys), dim), dtype=np.float32)
        not_in_lru = self._from_lru(keys, out)
        missing = not_in_lru
        store = self.store if shared else None
        short = [i for i, t in enumerate(unique) if len(t) < LONG_TEXT]
        batch_key = ""
        if store is not None and missing:
            batch_key = f"{base}batches/{_digest(keys[i] for i in short)}" if short else ""
            missing = self._from_store(store, base, batch_key, short, unique, keys, missing, out)
        if missing:
            try:
                out[missing] = embedder.embed([unique[i] for i in missing])
            except EmptyText as e:  # name the text by its place in `texts`
                raise EmptyText(str(e), rows.index(missing[e.index])) from None
            self._computed(len(missing))
            if store is not None:
                self._to_store(store, base, batch_key, short, unique, keys, missing, out)
        with self._lock:
            self.lookups += len(texts)
            self.hits += len(texts) - len(missing)
            for i in not_in_lru:
                self._remember(keys[i], out[i])
        return out[rows]

    # ------------------------------------------------------------------ LRU

    def _from_lru(self, keys: list[str], out: np.ndarray) -> list[int]:
        """Fill `out` from the LRU; returns the rows still missing."""
        missing = []
        with self._lock:
            for i, key in enumerate(keys):
                vec = self._lru.get(key)
                if vec is None:
                    missing.append(i)
                else:
                    self._lru.move_to_end(key)
                    out[i] = vec
        return missing

    def _remember(self, key: str, vec: np.ndarray) -> None:
        """Add one vector (the caller holds the lock), evicting the oldest."""
        if key in self._lru:
            return
        self._lru[key] = vec.copy()
        self._lru_bytes += vec.nbytes
        while self._lru_bytes > LRU_BYTES:
            _, old = self._lru.popitem(last=False)
            self._lru_bytes -= old.nbytes

    # --------------------------------------------------------------- bucket

    def _from_store(
        self,
        store: ObjectStore,
        base: str,
        batch_key: str,
        short: list[int],
        texts: list[str],
        keys: list[str],
        missing: list[int],
        out: np.ndarray,
    ) -> list[int]:
        missing_set = set(missing)
        if batch_key and any(len(texts[i]) < LONG_TEXT for i in missing):
            matrix = self._read(store, batch_key, len(short), out.shape[1])
            if matrix is not None:
                out[short] = matrix
                missing_set -= set(short)
        long = [i for i in sorted(missing_set) if len(texts[i]) >= LONG_TEXT]
        found = self._map(
            lambda i: self._read(store, _long_key(base, keys[i]), 1, out.shape[1]), long
        )
        for i, vec in zip(long, found, strict=True):
            if vec is not None:
                out[i] = vec[0]
                missing_set.discard(i)
        return sorted(missing_set)

    def _to_store(
        self,
        store: ObjectStore,
        base: str,
        batch_key: str,
        short: list[int],
        texts: list[str],
        keys: list[str],
        missing: list[int],
        out: np.ndarray,
    ) -> None:
        writes = [
            (_long_key(base, keys[i]), out[i : i + 1])
            for i in missing
            if len(texts[i]) >= LONG_TEXT
        ]
        if batch_key and any(len(texts[i]) < LONG_TEXT for i in missing):
            writes.append((batch_key, out[short]))
        self._map(lambda kv: self._write(store, kv[0], kv[1]), writes)

    def _read(self, store: ObjectStore, key: str, rows: int, dim: int) -> np.ndarray | None:
        """A cached matrix of `rows` x `dim`; None if absent, unreadable or misshapen
        (a cache miss is only a cost: no failure of the cache fails an ingest)."""
        try:
            data = store.get(key).data
            matrix = np.load(io.BytesIO(data), allow_pickle=False)
        except NotFound:
            return None
        except (StorageError, ValueError, OSError) as e:
            log.warning("embedding cache: reading %s failed (%s); embedding again", key, e)
            return None
        if matrix.shape != (rows, dim) or matrix.dtype != np.float32:
            log.warning(
                "embedding cache: %s holds %s, not %s; embedding again",
                key,
                matrix.shape,
                (rows, dim),
            )
            return None
        return matrix

    def _write(self, store: ObjectStore, key: str, matrix: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
        try:
            store.put(key, buf.getvalue(), if_absent=True)
        except PreconditionFailed:
            pass  # another writer stored the same vectors first
        except StorageError as e:
            log.warning("embedding cache: writing %s failed (%s); not cached", key, e)

    def _map(self, fn: Callable, items: list) -> list:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="brainy-embed-cache")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _text_key(cache_id: str, dimension: int, text: str) -> str:
    digest = xxhash.xxh3_128()
    digest.update(f"{cache_id}\0{dimension}\0".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _digest(keys) -> str:
    digest = xxhash.xxh3_128()
    for key in keys:
        digest.update(key.encode())
    return digest.hexdigest()


def _long_key(base: str, key: str) -> str:
    return f"{base}texts/{key[:2]}/{key}"
