"""`brainy`: the command line. Each subcommand is one small function that adds its
parser and names its handler, listed in `COMMANDS`; handlers call the same
`Brainy` use cases the functions call, so a local run behaves like a deployment.

A user's mistake prints `error: <field>: <reason>` and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainy.core import logs
from brainy.core.config import (
    AUTO,
    EMBEDDERS,
    METRICS,
    STRATEGIES,
    CollectionSchema,
    ConfigError,
    store_url_from_env,
)
from brainy.core.errors import BrainyError
from brainy.entry.bluesky import bluesky_command
from brainy.entry.commands import (
    DEFAULT_STORE,
    Subparsers,
    add_command,
    positive_int,
    store_option,
)
from brainy.entry.config_cli import config_command
from brainy.entry.demo import DEMO_SCHEMAS, DEMO_STORE, reset_store, run_demo
from brainy.entry.dev import dev_command
from brainy.entry.github import github_command
from brainy.entry.progress import terminal_bars, terminal_progress
from brainy.entry.relay import relay_command
from brainy.entry.rows import DEFAULT_BATCH_SIZE, BatchCuts, batch_bounds
from brainy.service.app import Brainy
from brainy.storage import ObjectStore, ReadOnlyStore, StorageError, open_store
from brainy.table.manifest import CommitFailed
from brainy.write.ingest import IngestOutcome, validate, validate_vectors


class CliError(Exception):
    """A mistake in the command line or its input files, naming the field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Session:
    """The environment of one command, and the `Brainy` instance it opens on demand."""

    def __init__(self, store: str | None, env: Mapping[str, str]) -> None:
        self.given_env = env
        self.env = dict(env)
        if store:
            self.env["BRAINY_STORE"] = store
        self.store_url = store_url_from_env(self.env) or DEFAULT_STORE
        self.env.setdefault("BRAINY_STORE", self.store_url)
        self._app: Brainy | None = None

    @property
    def app(self) -> Brainy:
        if self._app is None:
            try:
                self._app = Brainy.from_env("cli", self.env)
            except ConfigError:
                raise
            except ValueError as e:  # open_store's refusal of an unknown URL scheme
                raise CliError("--store", str(e)) from None
        return self._app

    def open_store(self) -> ObjectStore:
        """The store alone, without reading its configuration."""
        try:
            return open_store(
                self.store_url,
                endpoint_url=self.env.get("BRAINY_S3_ENDPOINT_URL") or None,
                region=self.env.get("BRAINY_S3_REGION") or None,
            )
        except ValueError as e:
            raise CliError("--store", str(e)) from None

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _dump(value: Any) -> None:
    _out(json.dumps(value, indent=2, default=str))


# ---------------------------------------------------------------- parser table


def _demo_parser(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "demo",
        "embedded run: ingest, index and search the standard library's docstrings "
        f"(store {DEMO_STORE} unless --store; wiped first)",
        _run_demo,
    )
    p.add_argument("--limit", type=positive_int, help="ingest at most N records")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument(
        "--embedder",
        choices=sorted(DEMO_SCHEMAS),
        default="hash",
        help="hash (default) or minilm: by meaning, needs the minilm extra",
    )


def _collection_parser(sub: Subparsers) -> None:
    p = add_command(sub, "collection", "create or list collections")
    actions = p.add_subparsers(dest="action", metavar="{create,list}", required=True)
    create = add_command(
        actions, "create", "declare a collection in _brainy/config.json", _run_collection_create
    )
    create.add_argument("name")
    create.add_argument("--dimension", type=positive_int, required=True)
    create.add_argument("--metric", choices=METRICS, default="angular")
    create.add_argument(
        "--partitions",
        type=_partitions,
        default=1,
        help='a count, or "auto" (semantic: sized from the collection at its first compaction)',
    )
    create.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="hash",
        help="hash: by id, every search probes every partition; semantic: by nearest "
        "centroid, a search probes --nprobe (default: hash)",
    )
    create.add_argument(
        "--nprobe", type=positive_int, help="partitions a semantic search probes (default: auto)"
    )
    create.add_argument("--seed", type=int, default=0)
    create.add_argument(
        "--embedder",
        choices=EMBEDDERS,
        default="hash",
        help="text embedder (default: hash; minilm makes 384-d vectors and needs the minilm "
        "extra; openai asks openai_base_url for --dimension numbers)",
    )
    listing = add_command(actions, "list", "the declared collections", _run_collection_list)
    listing.add_argument("--json", action="store_true", help="print JSON")


def _ingest_parser(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "ingest",
        "write a JSONL or .npy file as batches (and index them, by default)",
        _run_ingest,
    )
    p.add_argument(
        "file",
        type=Path,
        help='JSONL: {"id", "vector" | "text", "metadata"} or {"delete": id} per line; '
        "or a .npy matrix of vectors",
    )
    p.add_argument("--collection", required=True)
    p.add_argument("--ids", type=Path, help="for .npy: one id per line (default row-0, row-1, ...)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument(
        "--index",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="index each batch at once, with the indexer's code (default: yes); "
        "--no-index leaves them to an event-driven indexer",
    )


def _search_parser(sub: Subparsers) -> None:
    p = add_command(sub, "search", "k nearest neighbours of a text or vector", _run_search)
    p.add_argument("--collection", required=True)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="embedded with the collection's embedder")
    query.add_argument("--vector", help="a JSON list of numbers")
    query.add_argument("--vector-file", type=Path, help="a .npy matrix; the row is --row")
    p.add_argument("--row", type=int, default=0, help="row of --vector-file (default 0)")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="metadata equality; VALUE is JSON if it parses (3, true), else a string",
    )
    p.add_argument("--json", action="store_true", help="print the JSON the search function returns")


def _status_parser(sub: Subparsers) -> None:
    p = add_command(
        sub, "status", "a collection's manifest version, segments and counts", _run_status
    )
    p.add_argument("--collection", required=True)
    p.add_argument("--json", action="store_true", help="print JSON")


def _compact_parser(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "compact",
        "sweep, merge segments under the collection's lease, collect garbage, verify",
        _run_compact,
    )
    p.add_argument("--collection", help="one collection (default: every one)")
    p.add_argument("--force", action="store_true", help="merge below the policy's thresholds")


def _gc_parser(sub: Subparsers) -> None:
    p = add_command(sub, "gc", "delete what no retained manifest version needs", _run_gc)
    p.add_argument("--collection", required=True)
    p.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")


def _sweep_parser(sub: Subparsers) -> None:
    p = add_command(sub, "sweep", "index batches whose events were never delivered", _run_sweep)
    p.add_argument("--collection", required=True)


def _verify_parser(sub: Subparsers) -> None:
    p = add_command(sub, "verify", "check every object the newest manifest references", _run_verify)
    p.add_argument("--collection", required=True)
    p.add_argument("--repair", action="store_true", help="rebuild or quarantine what is broken")
    p.add_argument("--shallow", action="store_true", help="headers only; no checksums")


def _locks_parser(sub: Subparsers) -> None:
    group = add_command(sub, "locks", "list or break lock leases")
    inner = group.add_subparsers(dest="locks_command", required=True, metavar="COMMAND")
    add_command(inner, "list", "every lease and its holder", _run_locks_list)
    p = add_command(inner, "break", "free a lease now (its holder's commits are refused)",
                    _run_locks_break)  # fmt: skip
    p.add_argument("resource")


# `brainy source <name>`: one entry per source (its module's `<name>_command`).
SOURCES: tuple[Callable[[Subparsers], None], ...] = (bluesky_command, github_command)


def _source_parser(sub: Subparsers) -> None:
    p = add_command(sub, "source", "run a long-lived source that writes into a collection")
    inner = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for add in SOURCES:
        add(inner)


# One entry per subcommand; a new subcommand adds its function here.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _demo_parser,
    _collection_parser,
    _ingest_parser,
    _search_parser,
    _status_parser,
    _compact_parser,
    _gc_parser,
    _sweep_parser,
    _verify_parser,
    _locks_parser,
    relay_command,
    dev_command,
    _source_parser,
    config_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The `brainy` argument parser, with every subcommand in `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="brainy", description="Serverless vector search on one object-storage bucket."
    )
    store_option(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _partitions(value: str) -> int | str:
    return AUTO if value == AUTO else positive_int(value)


# ---------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 system failure, 2 user error).

    Args:
        argv: the arguments after the program name (default: `sys.argv[1:]`).
        env: the environment (default: `os.environ`).
    """
    args = build_parser().parse_args(argv)
    session = Session(args.store, os.environ if env is None else env)
    try:
        # A terminal gets warnings only, a long-running command (relay, dev, a
        # source: `log_level` INFO) what it does; BRAINY_LOG_FORMAT=json: JSON lines.
        logs.configure(session.env, level=getattr(args, "log_level", logging.WARNING))
        return args.run(args, session)
    except (BrainyError, CliError) as e:
        return _fail(e.field, e.reason, 2)
    except ReadOnlyStore as e:
        return _fail("BRAINY_MODE", str(e), 2)
    except ConfigError as e:
        field, _, reason = str(e).partition(": ")
        return _fail(field, reason, 2)
    except (StorageError, CommitFailed) as e:
        return _fail("storage", f"{type(e).__name__}: {e}", 1)
    finally:
        session.close()


def _fail(field: str, reason: str, status: int) -> int:
    print(f"error: {field}: {reason}", file=sys.stderr)
    return status


# ---------------------------------------------------------------- collection


def _run_collection_create(args: argparse.Namespace, session: Session) -> int:
    schema = CollectionSchema.from_dict(
        args.name,
        {
            "dimension": args.dimension,
            "metric": args.metric,
            "partitions": args.partitions,
            "strategy": args.strategy,
            "nprobe": args.nprobe,
            "seed": args.seed,
            "embedder": args.embedder,
        },
        key="collection",
    )
    created = session.app.create_collection(schema)
    what = "created" if created else "already exists, same schema:"
    _out(f"collection {schema.name!r} {what} {_describe(schema)}")
    return 0


def _probing(schema: CollectionSchema) -> str:
    if schema.nprobe is not None:
        return str(schema.nprobe)
    return "as calibrated for each recall target"


def _describe(schema: CollectionSchema) -> str:
    return (
        f"dimension {schema.dimension}, metric {schema.metric}, partitions {schema.partitions}, "
        f"strategy {schema.strategy}"
        + (f" (probing {_probing(schema)})" if schema.strategy == "semantic" else "")
        + ", "
        f"seed {schema.seed}, embedder {schema.embedder}"
    )


def _run_collection_list(args: argparse.Namespace, session: Session) -> int:
    collections = session.app.collections()
    rows = []
    for name, schema in sorted(collections.items()):
        manifest = session.app.manifests(name).latest()
        stats = manifest.stats() if manifest else {"version": 0, "live": 0}
        rows.append({"name": name, **schema.to_dict(), **stats})
    if args.json:
        _dump(rows)
        return 0
    if not rows:
        _out(f"no collections in {session.app.store.url}")
        return 0
    _out(f"{'name':<24} {'dim':>6} {'metric':<9} {'parts':>5} {'version':>8} {'live':>10}")
    for r in rows:
        _out(
            f"{r['name']:<24} {r['dimension']:>6} {r['metric']:<9} {r['partitions']:>5} "
            f"{r['version']:>8} {r['live']:>10,}"
        )
    return 0


# -------------------------------------------------------------------- ingest


def _relocate(
    error: BrainyError, record_at: Callable[[int], str], delete_at: Callable[[int], str]
) -> CliError:
    """The error with `records[3].vector` replaced by the file and line it came from."""
    m = re.match(r"^(records|deletes)\[(\d+)\](.*)$", error.field)
    if m is None:
        return CliError(error.field, error.reason)
    if m.group(1) == "records":
        return CliError(f"{record_at(int(m.group(2)))}{m.group(3)}", error.reason)
    return CliError(f"{delete_at(int(m.group(2)))}.delete", error.reason)


@dataclass
class Chunk:
    """One batch's worth of JSONL input: an ingest payload, and where each record came
    from (`records[i]` ↔ `record_at[i]`, `deletes[j]` ↔ `delete_at[j]`)."""

    payload: dict[str, Any]
    record_at: list[str]
    delete_at: list[str]

    def __len__(self) -> int:
        return len(self.record_at) + len(self.delete_at)

    def check(self, app: Brainy) -> None:
        validate(self.payload, app.settings, app.schema)

    def ingest(self, app: Brainy) -> IngestOutcome:
        return app.ingest(self.payload)

    def locate(self, error: BrainyError) -> CliError:
        return _relocate(error, self.record_at.__getitem__, self.delete_at.__getitem__)


@dataclass
class MatrixChunk:
    """One batch's worth of a .npy file: rows `first`... of it, and their ids. The
    vectors stay a slice of the (memory-mapped) matrix: never a list per row."""

    collection: str
    name: str
    first: int
    ids: Sequence[str]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def check(self, app: Brainy) -> None:
        validate_vectors(self.collection, self.ids, self.vectors, app.settings, app.schema)

    def ingest(self, app: Brainy) -> IngestOutcome:
        return app.ingest_vectors(self.collection, self.ids, self.vectors)

    def locate(self, error: BrainyError) -> CliError:
        return _relocate(error, lambda i: f"{self.name}[{self.first + i}]", str)


def _read_jsonl(path: Path, collection: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, item) per non-blank line; an item is a record or `{"delete": id}`."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                item = json.loads(line)
            except (ValueError, UnicodeDecodeError) as e:
                raise CliError(where, f"malformed JSON ({e})") from None
            if not isinstance(item, dict):
                raise CliError(where, "expected a JSON object")
            name = item.pop("collection", collection)
            if name != collection:
                raise CliError(f"{where}.collection", f"{name!r} differs from {collection!r}")
            yield where, item


def _jsonl_chunks(path: Path, collection: str, batch_size: int) -> Iterator[Chunk]:
    def empty() -> Chunk:
        return Chunk({"collection": collection, "records": [], "deletes": []}, [], [])

    chunk, cuts = empty(), BatchCuts(batch_size)
    for where, item in _read_jsonl(path, collection):
        is_delete = "delete" in item
        rid = item["delete"] if is_delete else item.get("id")
        if cuts.starts_batch(rid, where):
            yield chunk
            chunk = empty()
        if is_delete:
            if len(item) > 1:
                extra = sorted(set(item) - {"delete"})[0]
                raise CliError(f"{where}.{extra}", "a delete line holds only 'delete'")
            chunk.payload["deletes"].append(rid)
            chunk.delete_at.append(where)
        else:
            chunk.payload["records"].append(item)
            chunk.record_at.append(where)
    if len(chunk):
        yield chunk


def _npy_chunks(
    path: Path, collection: str, batch_size: int, ids_path: Path | None
) -> Iterator[MatrixChunk]:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CliError(path.name, f"not a .npy array ({e})") from None
    if matrix.ndim != 2:
        raise CliError(
            path.name, f"expected a 2-D array (one vector a row), got shape {matrix.shape}"
        )
    n = len(matrix)
    ids = None if ids_path is None else _read_text(ids_path).splitlines()
    if ids is not None and len(ids) != n:
        raise CliError("--ids", f"{len(ids)} ids for {n} rows of {path.name}")
    for lo, hi in batch_bounds(n, batch_size, ids):
        chunk_ids = [f"row-{i}" for i in range(lo, hi)] if ids is None else ids[lo:hi]
        yield MatrixChunk(collection, path.name, lo, chunk_ids, matrix[lo:hi])


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise CliError(str(path), e.strerror or str(e)) from None


def read_chunks(
    path: Path, collection: str, batch_size: int, ids_path: Path | None = None
) -> Iterator[Chunk | MatrixChunk]:
    """The input file as batches of at most `batch_size` records, in file order
    (see `BatchCuts`)."""
    if not path.is_file():
        raise CliError(str(path), "no such file")
    if path.suffix == ".npy":
        return _npy_chunks(path, collection, batch_size, ids_path)
    if ids_path is not None:
        raise CliError("--ids", "only for a .npy file")
    return _jsonl_chunks(path, collection, batch_size)


def _run_ingest(args: argparse.Namespace, session: Session) -> int:
    app = session.app
    app.require_schema(args.collection)

    def chunks() -> Iterator[Chunk | MatrixChunk]:
        return read_chunks(args.file, args.collection, args.batch_size, args.ids)

    # Check the whole file first with the ingest function's own validation, so a
    # bad line anywhere leaves the store untouched rather than half-written.
    checked = 0
    for chunk in chunks():
        try:
            chunk.check(app)
        except BrainyError as e:
            raise chunk.locate(e) from None
        checked += len(chunk)
    if not checked:
        raise CliError(str(args.file), "holds no records")
    _progress(f"checked {checked:,} lines of {args.file.name}")

    records = deletes = batches = 0
    write_s = index_s = 0.0
    version: int | None = None
    bars = terminal_bars()  # a bar on a terminal; the lines below elsewhere
    for chunk in chunks():
        t0 = time.perf_counter()
        try:
            outcome = chunk.ingest(app)
        except BrainyError as e:
            raise chunk.locate(e) from None
        t1 = time.perf_counter()
        write_s += t1 - t0
        records, deletes, batches = (
            records + outcome.accepted,
            deletes + outcome.deleted,
            batches + 1,
        )
        line = f"batch {batches}: {_count(outcome.accepted, 'record')}, "
        line += _count(outcome.deleted, "delete")
        if args.index:
            result = app.index_key(outcome.batch)
            index_s += time.perf_counter() - t1
            if result.status not in ("applied", "already-applied"):
                raise CliError(outcome.batch, f"not indexed: {result.status} {result.detail}")
            version = result.version
            line += f" -> version {version}"
        if bars is None:
            _progress(line)
        else:
            bars("ingest", records + deletes, checked)
    if bars is not None:
        bars.close()

    total = records + deletes
    _out(
        f"ingested {_count(records, 'record')} and {_count(deletes, 'delete')} into "
        f"{args.collection!r} in {_count(batches, 'batch')}: "
        f"write {write_s:.2f} s ({_rate(total, write_s)})"
    )
    if args.index:
        _out(f"indexed: {index_s:.2f} s ({_rate(total, index_s)}); manifest version {version}")
    else:
        _out("not indexed: an indexer applies the batches when their events arrive")
    return 0


def _count(n: int, noun: str) -> str:
    plural = "es" if noun.endswith("ch") else "s"
    return f"{n:,} {noun}{'' if n == 1 else plural}"


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} records/s" if seconds > 0 else "-"


# -------------------------------------------------------------------- search


def _parse_filters(items: list[str]) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise CliError("--filter", f"expected FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        filters[field] = value
    return filters


def _query_vector(args: argparse.Namespace) -> Any:
    if args.vector is not None:
        try:
            return json.loads(args.vector)
        except ValueError as e:
            raise CliError("--vector", f"expected a JSON list of numbers ({e})") from None
    try:
        matrix = np.load(args.vector_file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CliError("--vector-file", f"{args.vector_file}: cannot read ({e})") from None
    if matrix.ndim != 2 or not 0 <= args.row < len(matrix):
        raise CliError("--row", f"{args.row} is not a row of an array of shape {matrix.shape}")
    return matrix[args.row].tolist()


def _run_search(args: argparse.Namespace, session: Session) -> int:
    payload: dict[str, Any] = {"collection": args.collection, "k": args.k}
    if args.text is not None:
        payload["text"] = args.text
    else:
        payload["vector"] = _query_vector(args)
    if args.filter:
        payload["filter"] = _parse_filters(args.filter)
    started = time.perf_counter()
    result = session.app.search(payload)
    took_ms = round((time.perf_counter() - started) * 1000, 3)
    if args.json:
        _dump(
            {
                "results": [hit.to_dict() for hit in result.hits],
                "version": result.version,
                "took_ms": took_ms,
            }
        )
        return 0
    for rank, hit in enumerate(result.hits, start=1):
        meta = json.dumps(hit.metadata, separators=(",", ":")) if hit.metadata else ""
        _out(f"{rank:>3}  {hit.score:9.4f}  {hit.id}  {meta[:120]}")
    found = _count(len(result.hits), "result") if result.hits else "no results"
    _out(f"{found} · manifest version {result.version} · took {took_ms:.1f} ms")
    return 0


# -------------------------------------------------------------------- status


def _run_status(args: argparse.Namespace, session: Session) -> int:
    status = session.app.status(args.collection)
    if args.json:
        _dump(status)
        return 0
    schema = session.app.require_schema(args.collection)
    _out(f"collection        {args.collection}")
    _out(f"schema            {_describe(schema)}")
    for key in ("version", "segments", "live", "masked", "rows", "tombstones"):
        if key in status:
            _out(f"{key.replace('_', ' '):<17} {status[key]:,}")
    _out(f"bytes             {status['bytes']:,} ({_size(status['bytes'])})")
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------- demo


def _run_demo(args: argparse.Namespace, session: Session) -> int:
    # The demo wipes its store, so it never falls back to $BRAINY_STORE.
    url = getattr(args, "store", None) or DEMO_STORE
    demo = Session(url, session.given_env)
    store = demo.open_store()
    try:
        reset_store(store)
    except ValueError as e:
        raise CliError("--store", str(e)) from None
    finally:
        store.close()
    try:
        _out(f"Brainy demo: embedded, on {url}")
        run_demo(
            demo.app,
            sys.stdout,
            limit=args.limit,
            batch_size=args.batch_size,
            embedder=args.embedder,
        )
    finally:
        demo.close()
    return 0


# --------------------------------------------------------------- maintenance


def _run_compact(args: argparse.Namespace, session: Session) -> int:
    with terminal_progress() as bars:
        reports = session.app.maintain(args.collection, force=args.force, progress=bars)
    _dump(reports)
    return 0 if all(r["verify"]["ok"] for r in reports) else 1


def _run_gc(args: argparse.Namespace, session: Session) -> int:
    from brainy.maintenance.gc import collect_garbage

    app = session.app
    app.require_schema(args.collection)
    with terminal_progress() as bars:
        report = collect_garbage(
            app.store, args.collection, app.settings, dry_run=args.dry_run, progress=bars
        )
    _dump(report.to_dict())
    return 0


def _run_sweep(args: argparse.Namespace, session: Session) -> int:
    from brainy.maintenance.sweeper import sweep

    app = session.app
    app.require_schema(args.collection)
    report = sweep(app.maintenance, args.collection)
    _dump(report.to_dict())
    return 0 if not report.failed else 1


def _run_verify(args: argparse.Namespace, session: Session) -> int:
    from brainy.maintenance.repair import repair
    from brainy.maintenance.verify import verify

    app = session.app
    app.require_schema(args.collection)
    deep = not args.shallow
    with terminal_progress() as bars:
        report = verify(app.store, args.collection, deep=deep, progress=bars)
    out: dict[str, Any] = {"verify": report.to_dict()}
    if args.repair and not report.ok:
        out["repair"] = repair(app.maintenance, args.collection, report).to_dict()
        report = verify(app.store, args.collection, deep=deep)
        out["after_repair"] = report.to_dict()
    _dump(out)
    return 0 if report.ok else 1


def _leases(session: Session) -> Any:
    from brainy.maintenance.leases import LeaseManager

    app = session.app
    return LeaseManager(app.store, f"operator-{app.settings.instance_id}")


def _run_locks_list(args: argparse.Namespace, session: Session) -> int:
    from dataclasses import asdict

    _dump([asdict(info) for info in _leases(session).list_leases()])
    return 0


def _run_locks_break(args: argparse.Namespace, session: Session) -> int:
    from dataclasses import asdict

    try:
        broken = _leases(session).break_lease(args.resource)
    except ValueError as e:
        raise CliError("resource", str(e)) from None
    _dump({"broken": asdict(broken) if broken else None})
    return 0
