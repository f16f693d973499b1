"""The source runner: one long-lived, write-only process per source
(`brainy source <name> --collection C ...`), as deployed on Cloud Run or in a
container.

How a source plugs in (the interface a new source implements):

* A CLI module (`entry/bluesky.py`) defines `<name>_command(sub)`, which calls
  `add_source_command(sub, name, help, run, batch_size=..., flush_interval=...)`
  (it adds `--collection`, `--batch-size`, `--flush-interval`) and adds its own
  options; `entry/cli.py` lists it in `SOURCES`.
* Its handler `run(args, session)` returns
  `run_source(session.app, name, args, read)`, where `read(ctx)` is the reader:
  a blocking function that reads the source from `ctx.start` (the stored
  `CursorState`, or None on a first run) and, for each item, calls
  `ctx.writer.add(SourceRecord(...), position)` (or `ctx.writer.skip(position)`
  for what it does not write), counts what it sees in `ctx.stats`
  (`count("events" | "duplicates" | "malformed" | "reconnects" |
  "rate_limit_waits")`, `ignore(reason)`), and returns when `ctx.stopping` is
  set (or when it is done: a crawl's time budget). `ctx.wait(seconds)` sleeps
  unless the process is stopping; `ctx.on_stop(callback)` is called from the
  signal handler (to wake an event loop).
* The runner does the rest: the `SourceWriter` (durable batch first, then the
  `Cursor` at `_brainy/cursors/<source>-<collection>.json` by compare-and-swap),
  `/health` and `/metrics` on `$PORT`, and SIGINT/SIGTERM: stop reading, flush
  the open batch, checkpoint, exit 0. A batch that cannot be made durable stops
  the process with status 1, its cursor before that batch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from brainy.core.errors import InvalidInput
from brainy.entry.commands import Subparsers, add_command, positive_int
from brainy.entry.web import encode_json
from brainy.service.app import Brainy
from brainy.write.sources.cursor import Cursor, CursorState
from brainy.write.sources.writer import SourceStats, SourceWriter, WriterFailed

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080


def positive_seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not x > 0 or math.isinf(x):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return x


def add_source_command(
    sub: Subparsers,
    name: str,
    help: str,
    run: Callable[[argparse.Namespace, Any], int],
    *,
    batch_size: int,
    flush_interval: float,
) -> argparse.ArgumentParser:
    """`brainy source <name>` with the options every source takes."""
    parser = add_command(sub, name, help, run)
    parser.add_argument("--collection", required=True, help="the collection written to")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="N",
                        help=f"records per batch at most (default {batch_size})")  # fmt: skip
    parser.add_argument("--flush-interval", type=positive_seconds, default=flush_interval,
                        metavar="SECONDS",
                        help=f"flush a batch this long after its first record "
                             f"(default {flush_interval:g})")  # fmt: skip
    parser.set_defaults(log_level=logging.INFO)
    return parser


@dataclass
class SourceContext:
    """What a reader gets: where to start, where to write, what to count."""

    source: str
    collection: str
    app: Brainy
    writer: SourceWriter
    stats: SourceStats
    start: CursorState | None
    stopping: threading.Event = field(default_factory=threading.Event)
    _on_stop: list[Callable[[], None]] = field(default_factory=list)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the signal handler) when the process is told to stop."""
        self._on_stop.append(callback)

    def stop(self) -> None:
        self.stopping.set()
        for callback in list(self._on_stop):
            callback()

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds` unless told to stop first; True when stopping."""
        return self.stopping.wait(seconds)


class SourceCollector(Collector):
    """The source's counters and cursor lag, in the instance's Prometheus registry."""

    def __init__(self, ctx: SourceContext, now: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.now = now

    def collect(self) -> Iterator[Any]:
        labels = {"source": self.ctx.source, "collection": self.ctx.collection}
        names = list(labels)
        values = list(labels.values())
        counts = self.ctx.stats.snapshot()
        for key, metric, doc in (
            ("events", "brainy_source_events", "Events (or requests) the source read"),
            ("records_written", "brainy_source_records_written", "Records made durable"),
            ("batches", "brainy_source_batches", "Batches written"),
            ("duplicates", "brainy_source_duplicates_dropped", "Records dropped as seen"),
            ("malformed", "brainy_source_malformed", "Malformed events or refused records"),
            ("reconnects", "brainy_source_reconnects", "Reconnections to the source"),
            ("rate_limit_waits", "brainy_source_rate_limit_waits", "Waits for a rate limit"),
        ):
            family = CounterMetricFamily(metric, doc, labels=names)
            family.add_metric(values, counts[key])
            yield family
        ignored = CounterMetricFamily("brainy_source_ignored", "Events read and not written",
                                      labels=[*names, "reason"])  # fmt: skip
        for reason, n in sorted(counts["ignored"].items()):
            ignored.add_metric([*values, reason], n)
        yield ignored
        cursor = self.ctx.stats.cursor
        lag = GaugeMetricFamily(
            "brainy_source_cursor_lag_seconds",
            "Now minus the source time of the checkpoint (or of its writing; NaN: none yet)",
            labels=names,
        )
        lag.add_metric(values, _lag(cursor, self.now()))
        yield lag
        position = GaugeMetricFamily("brainy_source_cursor_position",
                                     "The checkpointed position", labels=names)  # fmt: skip
        position.add_metric(values, math.nan if cursor is None else cursor.position)
        yield position


def _lag(cursor: CursorState | None, now: float) -> float:
    if cursor is None:
        return math.nan
    if cursor.timestamp_us is not None:
        return now - cursor.timestamp_us / 1e6
    return now - cursor.updated_at


def health(ctx: SourceContext) -> tuple[bool, dict[str, Any]]:
    """The instance's health plus the source's: the writer must not have failed."""
    ok, body = ctx.app.health()
    failed = ctx.writer.failed
    cursor = ctx.stats.cursor
    body["checks"]["source"] = {
        "ok": failed is None,
        "source": ctx.source,
        "collection": ctx.collection,
        "cursor": None if cursor is None else cursor.position,
        **({"error": str(failed)} if failed is not None else {}),
    }
    ok = ok and failed is None
    body["status"] = "ok" if ok else "degraded"
    return ok, body


def _handler(ctx: SourceContext) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/health":
                ok, body = health(ctx)
                self._send(200 if ok else 503, encode_json(body), "application/json")
            elif path == "/metrics":
                self._send(200, ctx.app.metrics.render(), CONTENT_TYPE_LATEST)
            else:
                body = {"error": {"code": "not_found", "field": "path",
                                  "reason": f"{path}: expected /health or /metrics"}}  # fmt: skip
                self._send(404, encode_json(body), "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler


def listen(port: int) -> ThreadingHTTPServer:
    """A server bound to `port` on all interfaces (as a container needs), not yet
    serving: bound first, so a port in use is refused before anything is read."""
    try:
        server = ThreadingHTTPServer(("", port), BaseHTTPRequestHandler)
    except OSError as e:
        raise InvalidInput("PORT", f"cannot listen on port {port} ({e})") from None
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def serving(ctx: SourceContext, server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """`/health` and `/metrics` on `server` while the source runs."""
    server.RequestHandlerClass = _handler(ctx)
    thread = threading.Thread(target=server.serve_forever, name="brainy-source-http",
                              daemon=True)  # fmt: skip
    thread.start()
    log.info("source %s: /health and /metrics on port %d", ctx.source, server.server_address[1])
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def stop_on_signals(ctx: SourceContext) -> Iterator[None]:
    """SIGINT and SIGTERM stop the reader (the runner then flushes and checkpoints)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        log.info("source %s: %s: flushing and stopping", ctx.source, signal.Signals(signum).name)
        ctx.stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def port_from_env(env: dict[str, str] | Any) -> int:
    raw = env.get("PORT") or str(DEFAULT_PORT)
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise InvalidInput("PORT", f"expected a port number, got {raw!r}")
    return port


def run_source(
    app: Brainy,
    source: str,
    args: argparse.Namespace,
    read: Callable[[SourceContext], None],
    env: Any = None,
) -> int:
    """Run a source until it is told to stop (or its reader returns); 0 when the
    last batch is durable and checkpointed, 1 when a batch could not be.

    Raises:
        BrainyError: an unknown collection, a batch size beyond `max_records`,
            a bad `$PORT` (before anything is read).
    """
    schema = app.require_schema(args.collection)
    collection = schema.name
    if args.batch_size > app.settings.max_records:
        raise InvalidInput("--batch-size", f"{args.batch_size} records; at most "
                           f"{app.settings.max_records} (the max_records setting)")  # fmt: skip
    server = listen(port_from_env(os.environ if env is None else env))
    cursor = Cursor(app.store, source, collection)
    stats = SourceStats()
    try:
        writer = SourceWriter(
            app.ingest, schema, cursor, stats,
            batch_size=args.batch_size, flush_interval=args.flush_interval,
        )  # fmt: skip
    except BaseException:
        server.server_close()
        raise
    ctx = SourceContext(source, collection, app, writer, stats, start=stats.cursor)
    writer.on_failure = lambda _: ctx.stop()
    app.metrics.registry.register(SourceCollector(ctx))
    start = "the beginning" if ctx.start is None else f"position {ctx.start.position}"
    log.info("source %s -> %s: starting from %s", source, collection, start)
    with serving(ctx, server), stop_on_signals(ctx):
        try:
            read(ctx)
        except WriterFailed as e:
            log.error("source %s: %s", source, e)
            return 1
        except BaseException:
            # A reader's bug: what it had read is still made durable first.
            ctx.stopping.set()
            with contextlib.suppress(WriterFailed):
                writer.close()
            raise
        ctx.stopping.set()
        try:
            durable = writer.close()
        except WriterFailed as e:
            log.error("source %s: %s", source, e)
            return 1
    log.info("source %s: stopped at %s; %s", source,
             None if durable is None else durable.position, stats.snapshot())  # fmt: skip
    return 0
