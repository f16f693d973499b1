"""`brainy demo`: an embedded run over a corpus every Python install has, the standard
library's own docstrings. Records go through the same `Brainy.ingest` the HTTP
function calls and are indexed by `Brainy.index_key`, the code an event runs."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TextIO

from brainy.core.config import CollectionSchema
from brainy.service.app import Brainy
from brainy.storage import ObjectStore
from brainy.storage.local import LocalStore

DEMO_STORE = "file://./.brainy/demo"
DEMO_COLLECTION = "stdlib"
DEMO_SCHEMA = CollectionSchema(DEMO_COLLECTION, dimension=256, metric="angular", embedder="hash")
# `brainy demo --embedder minilm` (the `minilm` extra): the same corpus by meaning.
DEMO_SCHEMAS = {
    "hash": DEMO_SCHEMA,
    "minilm": CollectionSchema(DEMO_COLLECTION, dimension=384, metric="angular", embedder="minilm"),
}
_MATCHES = {"hash": "shared words, not meaning", "minilm": "meaning, not only shared words"}
DEMO_QUERIES = (
    "read a file line by line",
    "parse command line arguments",
    "compute a hash of bytes",
    "send an HTTP request",
    "sort a list in place",
)

# Modules whose import has effects beyond defining names (a browser opens, text is
# printed, a GUI or terminal is touched), or that only hold tests and tooling.
_SKIP_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "lib2to3",
        "ensurepip",
        "pydoc_data",
        "readline",
        "rlcompleter",
        "curses",
        "encodings",
    }
)
_SKIP_PARTS = frozenset({"test", "tests", "idle_test"})
# C modules that a public module re-exports under its own name.
_PUBLIC_NAME = {"posix": "os", "nt": "os"}
_MIN_TEXT = 20
_MAX_TEXT = 2000
_PARAGRAPH = re.compile(r"\n\s*\n")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*[\w\[\], .]+)?$")


@dataclass(frozen=True)
class Doc:
    """One documented function, class, method or module of the standard library."""

    id: str
    kind: str
    module: str
    text: str

    def record(self) -> dict[str, Any]:
        """The ingest record: the first paragraph is embedded, its first line shown."""
        first_line = self.text.split(". ")[0][:200]
        return {
            "id": self.id,
            "text": self.text,
            "metadata": {"module": self.module, "kind": self.kind, "text": first_line},
        }


def first_paragraph(doc: Any) -> str | None:
    """The first paragraph of a docstring on one line, or None if it says too little.

    A leading signature line (`name(args) -> result`, as C functions often have)
    is skipped: it names parameters rather than saying what the function does.
    """
    if not isinstance(doc, str):
        return None
    paragraphs = [" ".join(p.split()) for p in _PARAGRAPH.split(inspect.cleandoc(doc))]
    paragraphs = [p for p in paragraphs if p]
    while paragraphs and _SIGNATURE.match(paragraphs[0]):
        paragraphs.pop(0)
    if not paragraphs:
        return None
    text = paragraphs[0]
    if len(text) < _MIN_TEXT or len(re.findall(r"[A-Za-z]{2,}", text)) < 3:
        return None
    return text[:_MAX_TEXT]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def _import(name: str) -> ModuleType | None:
    try:
        with _quiet():
            return importlib.import_module(name)
    except KeyboardInterrupt:
        raise
    except BaseException:  # a module that fails in any way, even SystemExit, is skipped
        return None


def stdlib_modules() -> Iterator[ModuleType]:
    """Public standard-library modules and their public submodules, in name order;
    those that fail to import on this platform are skipped."""
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _SKIP_MODULES:
            continue
        yield from _walk(name)


def _walk(name: str) -> Iterator[ModuleType]:
    module = _import(name)
    if module is None:
        return
    yield module
    path = getattr(module, "__path__", None)
    if not path:
        return
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if not info.name.startswith("_") and info.name not in _SKIP_PARTS:
            yield from _walk(f"{name}.{info.name}")


def _is_private(module_name: str) -> bool:
    return any(part.startswith("_") for part in module_name.split(".")) or (
        module_name in _PUBLIC_NAME
    )


def _home_rank(owner: str, module: str) -> tuple[int, int, str]:
    """How well `module` names an object defined in `owner` (lower is better): its own
    module, then the public package it lives in, then `_io` as `io`, then any."""
    if owner == module and owner not in _PUBLIC_NAME:
        return (0, 0, module)
    if owner.startswith(module + "."):
        return (1, -len(module), module)
    if _PUBLIC_NAME.get(owner) == module or owner.lstrip("_") == module:
        return (2, 0, module)
    return (3, 0, module)


def _public_members(module: ModuleType) -> Iterator[tuple[str, Any]]:
    with _quiet():
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        for name in names:
            with contextlib.suppress(Exception):
                yield name, getattr(module, name)


def _class_members(cls: type) -> Iterator[tuple[str, str, Any]]:
    """(name, kind, docstring) of a class's own public methods and properties;
    inherited ones are documented where they are defined."""
    for name, member in sorted(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            yield name, "method", member.__func__.__doc__
        elif isinstance(member, property):
            yield name, "property", member.__doc__
        elif inspect.isroutine(member):
            yield name, "method", getattr(member, "__doc__", None)


def stdlib_docs(limit: int | None = None) -> tuple[list[Doc], int]:
    """The standard library's documented modules, functions, classes and methods.

    Each object is recorded once, under the public module that best names it
    (`io.StringIO`, not `_io.StringIO` nor every module that imports it).

    Args:
        limit: stop after this many records (modules are read in name order).

    Returns:
        (the records, how many modules were read).
    """
    homes: dict[int, tuple[tuple[int, int, str], str, Any]] = {}
    docs: list[Doc] = []
    modules = 0
    for module in stdlib_modules():
        modules += 1
        text = first_paragraph(module.__doc__)
        if text:
            docs.append(Doc(module.__name__, "module", module.__name__, text))
        for name, obj in _public_members(module):
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            owner = getattr(obj, "__module__", None)
            if not isinstance(owner, str):
                continue
            if owner != module.__name__ and not _is_private(owner):
                continue
            rank = _home_rank(owner, module.__name__)
            held = homes.get(id(obj))
            if held is None or rank < held[0]:
                homes[id(obj)] = (rank, f"{module.__name__}.{name}", obj)
        if limit is not None and len(docs) + len(homes) >= limit:
            break
    for _, qualname, obj in sorted(homes.values(), key=lambda h: h[1]):
        module_name = qualname.rsplit(".", 1)[0]
        kind = "class" if inspect.isclass(obj) else "function"
        text = first_paragraph(obj.__doc__)
        if text:
            docs.append(Doc(qualname, kind, module_name, text))
        if inspect.isclass(obj):
            for name, member_kind, doc in _class_members(obj):
                text = first_paragraph(doc)
                if text:
                    docs.append(Doc(f"{qualname}.{name}", member_kind, module_name, text))
    docs.sort(key=lambda d: d.id)
    unique = list({d.id: d for d in docs}.values())
    return (unique[:limit] if limit is not None else unique), modules


def reset_store(store: ObjectStore, collection: str = DEMO_COLLECTION) -> None:
    """Empty the demo's store: a local folder is removed whole, but only if it holds
    nothing besides Brainy's own files and the demo collection; elsewhere only the
    demo collection's objects are deleted.

    Raises:
        ValueError: the folder holds other data (it is left untouched).
    """
    if isinstance(store, LocalStore):
        allowed = {".brainy-store", "_brainy", collection}
        others = sorted(set(os.listdir(store.root)) - allowed)
        if others:
            raise ValueError(
                f"{store.url} holds {others[0]!r} and more: the demo wipes its store, "
                "so give it an empty folder (or a previous demo's)"
            )
        shutil.rmtree(store.root)
        return
    for info in list(store.list(f"{collection}/")):
        store.delete(info.key)


@dataclass
class DemoReport:
    """What a demo run did, for its summary and for tests."""

    records: int = 0
    modules: int = 0
    batches: int = 0
    collect_s: float = 0.0
    ingest_s: float = 0.0
    index_s: float = 0.0
    searches: dict[str, list[str]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)


def run_demo(
    app: Brainy,
    out: TextIO,
    *,
    limit: int | None = None,
    batch_size: int = 2000,
    k: int = 3,
    embedder: str = "hash",
) -> DemoReport:
    """Collect the corpus, ingest and index it batch by batch, run the demo queries.

    `app` must be a read-write instance on an empty store (see `reset_store`);
    `embedder` is a key of `DEMO_SCHEMAS`.
    """
    schema = DEMO_SCHEMAS[embedder]
    report = DemoReport()
    started = time.perf_counter()
    docs, report.modules = stdlib_docs(limit)
    report.collect_s = time.perf_counter() - started
    report.records = len(docs)
    print(
        f"corpus: {len(docs):,} docstrings from {report.modules} standard-library modules "
        f"({report.collect_s:.1f} s)",
        file=out,
    )
    app.create_collection(schema)
    batches = [docs[i : i + batch_size] for i in range(0, len(docs), batch_size)]
    report.batches = len(batches)
    print(
        f"ingest and index {len(batches)} batches of up to {batch_size:,} records "
        f"(collection {DEMO_COLLECTION!r}: dimension {schema.dimension}, "
        f"{schema.metric}, {schema.embedder} embedder)",
        file=out,
    )
    for n, chunk in enumerate(batches, start=1):
        t0 = time.perf_counter()
        payload = {"collection": DEMO_COLLECTION, "records": [d.record() for d in chunk]}
        outcome = app.ingest(payload)
        t1 = time.perf_counter()
        result = app.index_key(outcome.batch)
        t2 = time.perf_counter()
        if result.status != "applied":
            raise RuntimeError(f"indexing {outcome.batch}: {result.status} {result.detail}")
        report.ingest_s += t1 - t0
        report.index_s += t2 - t1
        print(
            f"  batch {n:>2}/{len(batches)}  {outcome.accepted:>6,} records  "
            f"ingest {t1 - t0:5.2f} s  index {t2 - t1:5.2f} s  -> version {result.version}",
            file=out,
        )

    print(f"\nsearch (k={k}; the {embedder} embedder matches {_MATCHES[embedder]})", file=out)
    for query in DEMO_QUERIES:
        t0 = time.perf_counter()
        result = app.search({"collection": DEMO_COLLECTION, "text": query, "k": k})
        took = (time.perf_counter() - t0) * 1000
        report.searches[query] = [hit.id for hit in result.hits]
        print(f'  "{query}"  {took:.1f} ms', file=out)
        width = max((len(hit.id) for hit in result.hits), default=0)
        for hit in result.hits:
            summary = (hit.metadata or {}).get("text", "")
            print(f"    {hit.score:.3f}  {hit.id:<{width}}  {summary[:72]}", file=out)

    report.status = app.status(DEMO_COLLECTION)
    total = time.perf_counter() - started
    rate = report.records / report.ingest_s if report.ingest_s else 0.0
    print(
        f"\nsummary: {report.records:,} records in {report.batches} batches; "
        f"ingest {report.ingest_s:.1f} s ({rate:,.0f} records/s), "
        f"index {report.index_s:.1f} s; manifest version {report.status['version']}, "
        f"{report.status['segments']} segments, {report.status['live']:,} live, "
        f"{report.status['bytes'] / 1e6:.1f} MB; total {total:.1f} s",
        file=out,
    )
    return report
