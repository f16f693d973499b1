"""`brainy source github`: the GitHub crawler as a long-lived process (or a
scheduled run with a time budget), through the source runner (`entry/sources.py`).

    brainy source github --collection repos [--api URL] [--batch-size N]
        [--flush-interval SECONDS] [--max-seconds S]

The token comes from `GITHUB_TOKEN`. Without `--max-seconds` it runs until
SIGINT/SIGTERM, polling for new repositories once it has caught up; with it, it
crawls for at most S seconds (or until it has caught up), then flushes,
checkpoints and exits 0: the shape a Cloud Scheduler job wants.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from brainy.entry.sources import (
    SourceContext,
    add_source_command,
    positive_seconds,
    run_source,
)
from brainy.write.sources.github import (
    DEFAULT_API,
    CrawlStats,
    GitHubClient,
    GitHubCrawler,
    GitHubError,
    Repository,
    check_api_url,
    crawl,
)
from brainy.write.sources.ratelimit import Clock, StoppableClock

log = logging.getLogger(__name__)

SOURCE = "github"
BATCH_SIZE = 1_000  # the seed's: batches of 1,000 repositories or 10 s
FLUSH_INTERVAL = 10.0


def _api_url(value: str) -> str:
    try:
        return check_api_url(value)
    except GitHubError as e:
        raise argparse.ArgumentTypeError(e.reason) from None


def github_command(sub: Any) -> None:
    """Adds `brainy source github` (listed in `entry/cli.py`'s `SOURCES`)."""
    p = add_source_command(
        sub,
        SOURCE,
        "crawl GitHub's public repositories (name, description, README) into a "
        "collection; token from $GITHUB_TOKEN",
        _run,
        batch_size=BATCH_SIZE,
        flush_interval=FLUSH_INTERVAL,
    )
    p.add_argument("--api", type=_api_url, default=DEFAULT_API, metavar="URL",
                   help=f"the REST API's base URL (default {DEFAULT_API})")  # fmt: skip
    p.add_argument(
        "--max-seconds",
        type=positive_seconds,
        metavar="S",
        help="crawl for at most S seconds (or until caught up), then flush, checkpoint and "
        "exit 0, as a scheduled job (default: run until SIGINT/SIGTERM)",
    )


def _run(args: argparse.Namespace, session: Any) -> int:
    env: Mapping[str, str] = session.given_env
    token = env.get("GITHUB_TOKEN") or None
    app = session.app

    def read(ctx: SourceContext) -> None:
        read_github(ctx, args.api, token, args.max_seconds)

    return run_source(app, SOURCE, args, read, env)


def read_github(
    ctx: SourceContext,
    api: str,
    token: str | None,
    max_seconds: float | None,
    *,
    clock: Clock | None = None,
    transport: Any = None,
) -> None:
    """The reader `run_source` runs: crawl from the checkpoint into the writer.

    Args:
        clock: the crawler's clock (default: the real one, whose waits end when
            the process is told to stop or its time budget runs out).
        transport: sends the HTTP requests (default: urllib3).
    """
    if clock is None:
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        clock = StoppableClock(ctx.stopping, deadline)
    if not token:
        log.warning("GITHUB_TOKEN is not set: crawling unauthenticated (60 requests an hour)")
    started = clock.monotonic()

    def should_stop() -> bool:
        over = max_seconds is not None and clock.monotonic() - started >= max_seconds
        return over or ctx.stopping.is_set()

    stats = CrawlStats()
    last: list[Repository] = []

    def seen(repo: Repository) -> None:
        ctx.stats.count("events")
        last[:] = [repo]

    client = GitHubClient(
        api,
        token,
        clock=clock,
        transport=transport,
        stats=stats,
        count=ctx.stats.count,
    )
    ctx.app.metrics.registry.register(GitHubCollector(stats, lambda: last[0] if last else None))
    since = ctx.start.position if ctx.start is not None else 0
    log.info("github: crawling %s from since=%d", api, since)
    crawl(
        GitHubCrawler(client),
        ctx.writer,
        since,
        should_stop,
        follow_head=max_seconds is None,
        on_repository=seen,
    )


class GitHubCollector(Collector):
    """The crawler's own counters: requests by how GitHub answered them, waits,
    retries, repositories without README or gone, and how far behind the newest
    repositories the crawl is (now minus the creation time of the last one read)."""

    def __init__(self, stats: CrawlStats, last: Callable[[], Repository | None]) -> None:
        self.stats = stats
        self.last = last

    def collect(self) -> Iterator[Any]:
        s = self.stats
        requests = CounterMetricFamily(
            "brainy_github_requests",
            "GitHub API requests: sent (retries included), budget (counted against the "
            "hourly limit), not_modified (304s answered from the ETag cache, free)",
            labels=["kind"],
        )
        requests.add_metric(["sent"], s.requests)
        requests.add_metric(["budget"], s.budget_requests)
        requests.add_metric(["not_modified"], s.not_modified)
        yield requests
        for name, doc, value in (
            ("brainy_github_rate_limit_wait_seconds", "Seconds waited for rate limits",
             s.rate_limit_wait_seconds),
            ("brainy_github_server_retries", "5xx answers and dropped connections retried",
             s.server_retries),
            ("brainy_github_repositories", "Repositories read", s.repositories),
            ("brainy_github_without_readme", "Repositories read without a README",
             s.without_readme),
            ("brainy_github_unavailable", "Repositories listed, then gone or blocked",
             s.unavailable),
            ("brainy_github_pages", "Listing pages read", s.pages),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        last = self.last()
        lag = GaugeMetricFamily(
            "brainy_github_crawl_lag_seconds",
            "Now minus the creation time of the last repository read (NaN: none yet)",
        )
        created = last.created_us if last is not None else None
        lag.add_metric([], math.nan if created is None else time.time() - created / 1e6)
        yield lag
